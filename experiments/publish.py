"""Publishing a study: its CSV and Markdown tables, results.md and the results.json manifest.

experiments.report copies a results folder's files into docs/results.md from the manifest.
"""

import csv
import json
import os
import shlex
import sys

from benchmarks import hardware
from resnet_jax.metrics import duration
from resnet_jax.train import workdir as workdir_lib


def write_csv(rows: list[dict], path: str) -> None:
  """One row per run; the columns are the union of the rows' keys, in first-seen order."""
  columns = []
  for row in rows:
    columns += [k for k in row if k not in columns]
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: _cell(v, csv_cell=True) for k, v in row.items()})


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


def write_manifest(results_dir: str, *, study: str, budget: str, rows: list[dict],
                   files: list[str], wall_s: float, notes: str = '', headline: str = '') -> dict:
  """results.json: what experiments.report needs to publish a study's results folder.

  headline: the study's main table (Markdown), which the report shows in docs/results.md.
  """
  manifest = {
      'study': study, 'budget': budget, 'command': command(),
      'hardware': sweep_hardware(rows), 'versions': hardware.package_versions(),
      # The runs' own time (all attempts), and this invocation's, which skips finished runs.
      'runs_wall_s': round(sum(row.get('wall_s') or 0 for row in rows), 1),
      'wall_s': round(wall_s, 1),
      'num_runs': len(rows), 'failed_runs': sum(map(failed, rows)),
      'files': files, 'notes': notes, 'headline': headline,
  }
  workdir_lib.write_atomic(os.path.join(results_dir, 'results.json'),
                           json.dumps(manifest, indent=2))
  return manifest


def publish(results_dir: str, *, study: str, title: str, budget: str, rows: list[dict],
            files: list[str], wall_s: float, body: list[str], notes: str,
            headline: str = '') -> int:
  """Writes a study's results.md (the common header, then `body`) and its results.json.

  Returns the study's exit code: 1 if a run failed (its row says why), else 0.
  """
  with open(os.path.join(results_dir, 'results.md'), 'w') as f:
    f.write('\n'.join([header(title, budget, rows, wall_s), *body]))
  files = ['results.md'] + [f for f in files if f != 'results.md']
  write_manifest(results_dir, study=study, budget=budget, rows=rows, files=files, wall_s=wall_s,
                 notes=notes, headline=headline)
  num_failed = sum(map(failed, rows))
  print(f'Wrote {os.path.join(results_dir, "results.md")} ({len(rows)} runs, {num_failed} '
        'failed).', flush=True)
  return 1 if num_failed else 0


def header(study: str, budget: str, rows: list[dict], wall_s: float) -> str:
  """The first lines of a study's results.md: budget, hardware, versions, time, command."""
  v = hardware.package_versions()
  runs_wall = sum(row.get('wall_s') or 0 for row in rows)
  failed_rows = [row for row in rows if failed(row)]
  lines = [
      f'# {study} ({budget} budget)', '',
      f'- Command (from the repository root): `{command()}`',
      f'- Hardware: {sweep_hardware(rows)}',
      '- Versions: ' + ', '.join(f'{k} {val}' for k, val in v.items()),
      f'- Wall time: {duration(runs_wall)} of training over all attempts of the {len(rows)} '
      f'runs; this invocation took {duration(wall_s)}.',
  ]
  if failed_rows:
    lines.append(f'- **{len(failed_rows)} run(s) failed**: ' + '; '.join(
        f'{row["workdir"].rsplit("/", 1)[-1]}: {row["status"]}' for row in failed_rows))
  return '\n'.join(lines) + '\n'


def plot_title(study: str, budget: str, rows: list[dict]) -> str:
  return f'{study}, {budget} budget, {sweep_hardware(rows)}'
