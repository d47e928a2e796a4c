"""Publishing a study: its CSV and Markdown tables, results.md and the results.json manifest.

experiments.report copies a results folder's files into docs/results.md from the manifest.
"""

import csv
import dataclasses
import importlib.util
import io
import json
import os
import shlex
import sys

from benchmarks import hardware
from experiments import hypotheses as hypotheses_lib
from resnet_jax.errors import UserError
from resnet_jax.metrics import duration
from resnet_jax.train import workdir as workdir_lib


def write_csv(rows: list[dict], path: str) -> None:
  """One row per run; the columns are the union of the rows' keys, in first-seen order. Written
  atomically, as every file of a results folder: a kill leaves the old file or the new one."""
  columns = []
  for row in rows:
    columns += [k for k in row if k not in columns]
  text = io.StringIO(newline='')
  writer = csv.DictWriter(text, fieldnames=columns)
  writer.writeheader()
  for row in rows:
    writer.writerow({k: _cell(v, csv_cell=True) for k, v in row.items()})
  workdir_lib.write_atomic(path, text.getvalue())


def scalars(records: list[dict]) -> list[dict]:
  """The records less their per-unit lists: what a CSV of probe records holds."""
  return [{k: v for k, v in r.items() if not isinstance(v, list)} for r in records]


def _cell(value, csv_cell=False) -> str:
  if value is None:
    return '' if csv_cell else '-'
  if isinstance(value, float):
    return repr(value) if csv_cell else f'{value:.2f}'
  if isinstance(value, (list, tuple)):
    return json.dumps(list(value))
  return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(_cell(row.get(c)).replace('|', '\\|') for c in columns) + ' |')
  return '\n'.join(lines)


def command() -> str:
  """The command line that reproduces this process's study, from the repository root."""
  module = sys.modules['__main__'].__spec__
  name = module.name if module else os.path.basename(sys.argv[0])
  return shlex.join(['python', '-m', name, *sys.argv[1:]])


def sweep_hardware(rows: list[dict]) -> str:
  """The hardware the rows ran on (several entries if a resumed sweep moved machines)."""
  found = sorted({row['hardware'] for row in rows if row.get('hardware')})
  return '; '.join(found) if found else 'unknown'


def failed(row: dict) -> bool:
  """Whether a run did not finish ('ok', or 'ok (...)' for a reused run, are the good states)."""
  return not str(row.get('status', '')).startswith('ok')


@dataclasses.dataclass
class Provenance:
  """How a study's results came about: the command that ran, the library versions it ran with,
  and how long that invocation took. A republish from committed files keeps the recorded ones."""
  command: str
  versions: dict
  wall_s: float

  @classmethod
  def now(cls, wall_s: float) -> 'Provenance':
    return cls(command(), hardware.package_versions(), wall_s)

  @classmethod
  def recorded(cls, manifest: dict) -> 'Provenance':
    """The provenance a results.json (`read_manifest`) recorded."""
    return cls(manifest['command'], manifest['versions'], manifest['wall_s'])


def portable(rows: list[dict], results_dir: str) -> list[dict]:
  """The rows with each workdir relative to `results_dir` (runs/<name>), as results.json keeps
  them, so that the folder can move (into docs/results/, or to another machine)."""
  return [{**r, 'workdir': os.path.relpath(r['workdir'], results_dir)} for r in rows]


def read_manifest(results_dir: str) -> tuple[dict, list[dict]]:
  """(results.json, its rows with absolute workdirs) of a study's results folder; the file is
  checked against the shape write_manifest gives it, and a UserError names the file and what
  is wrong (a results folder can come from anywhere)."""
  path = os.path.join(results_dir, 'results.json')
  if not os.path.isdir(results_dir):
    raise UserError(f'{results_dir} is not a directory holding a study\'s results.')
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{path} cannot be read as JSON ({e}); is {results_dir} a study\'s results '
                    'folder?') from None
  obj = isinstance(manifest, dict)
  checks = [(obj, 'is not a JSON object'),
            (obj and isinstance(manifest.get('study'), str)
             and importlib.util.find_spec(f'experiments.{manifest["study"]}') is not None,
             "has no 'study' naming a module of experiments/"),
            (obj and isinstance(manifest.get('budget'), str), "has no 'budget' string"),
            (obj and isinstance(manifest.get('files'), list)
             and all(isinstance(f, str) for f in manifest['files']), "has no 'files' list"),
            (obj and isinstance(manifest.get('rows', []), list)
             and all(isinstance(r, dict) and isinstance(r.get('workdir', ''), str)
                     for r in manifest.get('rows', [])),
             "has a 'rows' that is not a list of run objects")]
  for ok, why in checks:
    if not ok:
      raise UserError(f'{path} {why}, so it is no results.json of a study.')
  rows = [{**r, 'workdir': os.path.join(os.path.abspath(results_dir), r.get('workdir', ''))}
          for r in manifest.get('rows', [])]
  return manifest, rows


def write_manifest(results_dir: str, *, study: str, budget: str, rows: list[dict],
                   files: list[str], provenance: Provenance, notes: str = '',
                   headline: str = '', hypotheses: list[dict] = ()) -> dict:
  """results.json: what experiments.report needs to publish a study's results folder, and what
  the study's `republish` recomputes its tables, plots and verdicts from.

  headline: the study's main table (Markdown), which the report shows in docs/results.md.
  hypotheses: the verdicts of the claims the study tests (experiments.hypotheses.verdict).
  """
  manifest = {
      'study': study, 'budget': budget, 'command': provenance.command,
      'hardware': sweep_hardware(rows), 'versions': provenance.versions,
      # The runs' own time (all attempts), and this invocation's, which skips finished runs.
      'runs_wall_s': round(sum(row.get('wall_s') or 0 for row in rows), 1),
      'wall_s': round(provenance.wall_s, 1),
      'num_runs': len(rows), 'failed_runs': sum(map(failed, rows)),
      'files': files, 'notes': notes, 'headline': headline, 'hypotheses': list(hypotheses),
      'rows': portable(rows, results_dir),
  }
  workdir_lib.write_atomic(os.path.join(results_dir, 'results.json'),
                           json.dumps(manifest, indent=2))
  return manifest


def publish(results_dir: str, *, study: str, title: str, budget: str, rows: list[dict],
            files: list[str], provenance: Provenance, body: list[str], notes: str,
            headline: str = '', hypotheses: list[dict] = ()) -> int:
  """Writes a study's results.md (the common header, the verdicts of `hypotheses`, then `body`)
  and its results.json.

  Returns the study's exit code: 1 if a run failed (its row says why), else 0.
  """
  claims = (['## Claims tested', '', f'Each verdict is computed from the runs below '
             f'({hypotheses_lib.TEST}; shown at p <= {hypotheses_lib.ALPHA}).', '',
             hypotheses_lib.markdown(list(hypotheses)), ''] if hypotheses else [])
  workdir_lib.write_atomic(os.path.join(results_dir, 'results.md'),
                           '\n'.join([header(title, budget, rows, provenance), *claims, *body]))
  files = ['results.md'] + [f for f in files if f != 'results.md']
  write_manifest(results_dir, study=study, budget=budget, rows=rows, files=files,
                 provenance=provenance, notes=notes, headline=headline, hypotheses=hypotheses)
  num_failed = sum(map(failed, rows))
  print(f'Wrote {os.path.join(results_dir, "results.md")} ({len(rows)} runs, {num_failed} '
        'failed).', flush=True)
  for row in filter(failed, rows):  # Each with its reason (a lost one's log's last line).
    print(f'error: run {row["workdir"].rsplit("/", 1)[-1]} {row["status"]}', file=sys.stderr)
  return 1 if num_failed else 0


def header(study: str, budget: str, rows: list[dict], provenance: Provenance) -> str:
  """The first lines of a study's results.md: budget, hardware, versions, time, command."""
  runs_wall = sum(row.get('wall_s') or 0 for row in rows)
  failed_rows = [row for row in rows if failed(row)]
  lines = [
      f'# {study} ({budget} budget)', '',
      f'- Command (from the repository root): `{provenance.command}`',
      f'- Hardware: {sweep_hardware(rows)}',
      '- Versions: ' + ', '.join(f'{k} {val}' for k, val in provenance.versions.items()),
      f'- Wall time: {duration(runs_wall)} of training over all attempts of the {len(rows)} '
      f'runs; the command took {duration(provenance.wall_s)}.',
  ]
  if failed_rows:
    lines.append(f'- **{len(failed_rows)} run(s) failed**: ' + '; '.join(
        f'{row["workdir"].rsplit("/", 1)[-1]}: {row["status"]}' for row in failed_rows))
  return '\n'.join(lines) + '\n'


def plot_title(study: str, budget: str, rows: list[dict]) -> str:
  return f'{study}, {budget} budget, {sweep_hardware(rows)}'
