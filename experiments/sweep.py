"""Runs a study's list of training runs through the one trainer, resumably, and tabulates them.

Every run trains with resnet_jax.train.loop.train_and_evaluate in its own workdir,
DIR/runs/<name>. A rerun of the same sweep skips the runs that finished (summary.json) and
resumes the interrupted ones from their checkpoints, bit for bit, so a sweep killed at any
moment continues where it stopped. With jobs > 1 each run is a child process
(`python -m experiments.sweep --run_spec FILE`) and that many run at once; on a GPU each child
gets about 0.9 / jobs of its memory (XLA_PYTHON_CLIENT_MEM_FRACTION), so they share one device.

The studies (experiments/activation_ablation.py, degradation.py, ...) build a list of `Run`s,
call `run_sweep`, and write their tables, plots and results.json manifest with the helpers here.
"""

import argparse
import csv
import dataclasses
import importlib.metadata
import json
import logging
import os
import pickle
import platform
import shlex
import signal
import subprocess
import sys
import time

import ml_collections

from resnet_jax import cli, host, recipes, xla_flags
from resnet_jax.errors import RunError, UserError
from resnet_jax.train import workdir as workdir_lib

BUDGETS = ('smoke', 'cpu', 'paper')
DATASETS = ('cifar10', 'cifar100')
VERSIONED_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain',
                      'tensorflow-datasets', 'numpy', 'matplotlib')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Run:
  name: str                            # unique and filesystem-safe, e.g. 'full_preact-d20-s0'
  config: ml_collections.ConfigDict    # the complete config of the run
  meta: dict                           # the study's columns, e.g. {'placement': ..., 'depth': 20}


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1 (argparse turns the ValueError into one line, exit 2)."""
  value = int(text)
  if value < 1:
    raise ValueError(text)
  return value


positive_int.__name__ = 'integer >= 1'  # What argparse's message calls it.


def main_guard(main) -> int:
  """Runs a study's main(); a UserError or RunError that escapes it ends in one line and the
  exception's exit code, as the trainer's command line does."""
  try:
    return main()
  except (UserError, RunError) as e:
    print(f'error: {e}', file=sys.stderr)
    return e.exit_code


def add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--budget', required=True, choices=BUDGETS,
                      help='smoke: minutes, checks the machinery; cpu: about 45 min on 2 CPU '
                           "cores; paper: the papers' recipe and number of runs.")
  parser.add_argument('--results_dir', required=True,
                      help='where the runs, tables, plots and results.json go; rerun with the '
                           'same directory to resume.')
  parser.add_argument('--seeds', type=positive_int, default=None,
                      help="seeds per cell (default: the budget's).")
  parser.add_argument('--jobs', type=positive_int, default=1,
                      help='runs at once, each in its own process (default 1: in this process).')
  parser.add_argument('--dataset', choices=DATASETS, default='cifar10')


def hardware() -> str:
  """The devices this process's JAX runs on, and the JAX version (initialises the backend)."""
  import jax
  devices = jax.devices()
  if devices[0].platform == 'cpu':
    name = f'cpu: {host.cpu_model()} x{host.cpu_count()} cores'
  else:
    name = f'{devices[0].platform}: {devices[0].device_kind} x{len(devices)}'
  return f'{name}, jax {jax.__version__}'


def versions() -> dict:
  """Python and the versions of the libraries that a result depends on."""
  found = {'python': platform.python_version()}
  for package in VERSIONED_PACKAGES:
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def _run_total_steps(config) -> int:
  if config.num_epochs > 0:
    return max(1, int(config.num_epochs * recipes.TRAIN_EXAMPLES.get(config.data.dataset, 50_000)
                      // config.batch_size))
  return int(config.num_train_steps)


def _steps_done(workdir: str) -> int:
  from resnet_jax.metrics import read_metrics
  try:
    return max((int(r['step']) for r in read_metrics(workdir)), default=0)
  except Exception:  # A torn or foreign file: progress only, never fatal.
    return 0


def _sidecar_path(results_dir: str, name: str) -> str:
  return os.path.join(results_dir, 'runs', f'{name}.sweep.json')


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, value) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def _flatten(config, prefix='') -> dict:
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return flat


def varying_keys(runs: list[Run]) -> list[str]:
  """The config keys whose values differ between the runs (the CSV has one column for each)."""
  flats = [_flatten(run.config) for run in runs]
  keys = sorted(set().union(*flats)) if flats else []
  return [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]


def _row(run: Run, workdir: str, summary: dict | None, status: str, side: dict,
         varying: list[str]) -> dict:
  flat = _flatten(run.config)
  row = dict(run.meta)
  row.setdefault('seed', run.config.seed)
  for key in varying:
    row[f'config.{key}'] = flat.get(key)
  ok = summary is not None and 'eval/accuracy' in summary
  row['train_error'] = (round(100 * (1 - float(summary['train/accuracy'])), 4)
                        if ok and 'train/accuracy' in summary else None)
  row['test_error'] = round(100 * (1 - float(summary['eval/accuracy'])), 4) if ok else None
  row['eval_examples'] = int(summary['eval/num_examples']) if ok else None
  row['steps'] = int(summary['step']) if summary else None
  row['wall_s'] = round(side.get('wall_s', 0.0), 1)
  row['hardware'] = side.get('hardware')
  row['workdir'] = workdir
  row['status'] = status
  return row


def run_one(config, workdir: str) -> tuple[dict | None, str, str]:
  """Trains one run in this process: (summary or None, status, hardware)."""
  from resnet_jax.train import loop
  hw = hardware()
  try:
    summary = loop.train_and_evaluate(config, workdir)
  except (UserError, RunError) as e:
    return None, f'failed: {e}', hw
  if summary.get('stopped'):
    return summary, f'stopped: signal {summary.get("signal")}', hw
  return summary, 'ok', hw


def _log_to(path: str):
  """Sends the trainer's log lines of one in-process run to `path` (as a child's would go)."""
  handler = logging.FileHandler(path)
  handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
  root = logging.getLogger()
  previous = root.level
  root.addHandler(handler)
  root.setLevel(logging.INFO)

  def undo():
    root.removeHandler(handler)
    root.setLevel(previous)
    handler.close()
  return undo


class _Progress:
  """One line per run: which run, how far the sweep is (in steps), and the sweep's ETA."""

  def __init__(self, runs, results_dir):
    self.total = {r.name: _run_total_steps(r.config) for r in runs}
    self.done = {r.name: min(self.total[r.name], _steps_done(os.path.join(results_dir, 'runs',
                                                                           r.name)))
                 for r in runs}
    self.start_done = sum(self.done.values())
    self.started = time.perf_counter()
    self.count = len(runs)
    self.index = {r.name: i + 1 for i, r in enumerate(runs)}

  def line(self, name: str, what: str) -> None:
    total = sum(self.total.values())
    done = sum(self.done.values())
    trained = done - self.start_done
    elapsed = time.perf_counter() - self.started
    if done >= total:
      eta = 'ETA 0 s'
    elif trained > 0:
      eta = f'ETA {_duration(elapsed / trained * (total - done))}'
    else:
      eta = 'ETA unknown'
    print(f'[{self.index[name]}/{self.count}] {name}: {what} | sweep {done}/{total} steps '
          f'({100 * done / max(total, 1):.0f}%), {_duration(elapsed)} elapsed, {eta}', flush=True)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 120:
    return f'{seconds} s'
  if seconds < 7200:
    return f'{seconds / 60:.0f} min'
  return f'{seconds / 3600:.1f} h'


def _describe(summary, status) -> str:
  if status == 'ok' and summary and 'eval/accuracy' in summary:
    train = summary.get('train/accuracy')
    train = f'train error {100 * (1 - train):.2f}%, ' if train is not None else ''
    return f'done at step {summary["step"]}: {train}test error {100 * (1 - summary["eval/accuracy"]):.2f}%'
  return status


def run_sweep(runs: list[Run], results_dir: str, jobs: int = 1) -> list[dict]:
  """Trains every run that has not finished; returns one row per run, in the order of `runs`.

  A run that raises UserError or RunError gets 'status': 'failed: <message>' and the sweep goes
  on. A sweep stopped by SIGTERM or SIGINT saves the running runs' checkpoints and exits (code
  128 + signal); rerunning it resumes them.
  """
  names = [run.name for run in runs]
  if len(set(names)) != len(names):
    raise UserError(f'run names must be unique; repeated: '
                    f'{sorted({n for n in names if names.count(n) > 1})}')
  if jobs < 1:
    raise UserError(f'--jobs={jobs} must be at least 1.')
  results_dir = os.path.abspath(results_dir)
  for sub in ('runs', 'logs', 'specs'):
    os.makedirs(os.path.join(results_dir, sub), exist_ok=True)
  varying = varying_keys(runs)
  progress = _Progress(runs, results_dir)
  rows = {}
  todo = []
  for run in runs:
    workdir = os.path.join(results_dir, 'runs', run.name)
    summary = _read_json(os.path.join(workdir, 'summary.json'))
    if summary is not None:
      side = _read_json(_sidecar_path(results_dir, run.name)) or {}
      try:  # A finished run of another config is not this run's result.
        workdir_lib.check_same_run(workdir, recipes.finalize(run.config))
      except UserError as e:
        rows[run.name] = _row(run, workdir, None, f'failed: {e}', side, varying)
        progress.line(run.name, f'failed: {e}')
        continue
      rows[run.name] = _row(run, workdir, summary, 'ok', side, varying)
      progress.done[run.name] = progress.total[run.name]
      progress.line(run.name, f'finished before, skipped ({_describe(summary, "ok")})')
    else:
      todo.append(run)
  if jobs == 1:
    # XLA reads config.xla once per process: the runs here get it where they all ask the same
    # (a run process of --jobs > 1 sets its own).
    asks = {tuple(xla_flags.wanted(run.config)) for run in todo}
    if len(asks) == 1:
      xla_flags.apply(todo[0].config)
    for run in todo:
      rows[run.name] = _run_in_process(run, results_dir, varying, progress)
  else:
    rows.update(_run_in_children(todo, results_dir, jobs, varying, progress))
  return [rows[run.name] for run in runs]


def _finish(run, results_dir, varying, progress, summary, status, hw, seconds) -> dict:
  workdir = os.path.join(results_dir, 'runs', run.name)
  side_path = _sidecar_path(results_dir, run.name)
  side = _read_json(side_path) or {}
  side = {'wall_s': side.get('wall_s', 0.0) + seconds, 'hardware': hw or side.get('hardware'),
          'attempts': side.get('attempts', 0) + 1}
  _write_json(side_path, side)
  if status == 'ok':
    progress.done[run.name] = progress.total[run.name]
  else:
    progress.done[run.name] = min(progress.total[run.name], _steps_done(workdir))
  progress.line(run.name, _describe(summary, status))
  return _row(run, workdir, summary if status == 'ok' else None, status, side, varying)


def _stop(signum) -> None:
  print(f'Sweep stopped by {signal.Signals(signum).name}; the runs saved checkpoints. Rerun the '
        'same command to resume.', file=sys.stderr, flush=True)
  raise SystemExit(128 + signum)


def _run_in_process(run, results_dir, varying, progress) -> dict:
  workdir = os.path.join(results_dir, 'runs', run.name)
  progress.line(run.name, f'training ({progress.done[run.name]}/{progress.total[run.name]} '
                          f'steps done before), log in logs/{run.name}.log')
  undo = _log_to(os.path.join(results_dir, 'logs', f'{run.name}.log'))
  started = time.perf_counter()
  try:
    summary, status, hw = run_one(run.config, workdir)
  finally:
    undo()
  row = _finish(run, results_dir, varying, progress, summary, status, hw,
                time.perf_counter() - started)
  if status.startswith('stopped'):
    _stop(summary.get('signal') or signal.SIGTERM)
  return row


def _run_in_children(todo, results_dir, jobs, varying, progress) -> dict:
  env = dict(os.environ)
  # Several processes share one GPU: each takes a slice of its memory instead of 75% of it.
  env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.9 / jobs:.3f}')
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, env.get('PYTHONPATH')]))
  pending = list(todo)
  running = {}  # name -> (Popen, run, started, log file, result path)
  rows = {}
  stop = {'signum': None}

  def forward(signum, frame):
    stop['signum'] = stop['signum'] or signum
    for proc, *_ in running.values():
      if proc.poll() is None:
        proc.send_signal(signum)

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    while pending or running:
      while pending and len(running) < jobs and stop['signum'] is None:
        run = pending.pop(0)
        spec = os.path.join(results_dir, 'specs', f'{run.name}.pkl')
        result = os.path.join(results_dir, 'specs', f'{run.name}.result.json')
        if os.path.exists(result):
          os.remove(result)
        with open(spec, 'wb') as f:
          pickle.dump({'config': run.config,
                       'workdir': os.path.join(results_dir, 'runs', run.name),
                       'result': result}, f)
        log = open(os.path.join(results_dir, 'logs', f'{run.name}.log'), 'a')
        proc = subprocess.Popen([sys.executable, '-m', 'experiments.sweep', '--run_spec', spec],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        running[run.name] = (proc, run, time.perf_counter(), log, result)
        progress.line(run.name, f'started in process {proc.pid} ({progress.done[run.name]}/'
                                f'{progress.total[run.name]} steps done before), log in '
                                f'logs/{run.name}.log')
      if not pending and not running:
        break
      time.sleep(0.5)
      for name in list(running):
        proc, run, started, log, result = running[name]
        if proc.poll() is None:
          continue
        log.close()
        del running[name]
        outcome = _read_json(result)
        if outcome is None:
          outcome = {'summary': None, 'hardware': None,
                     'status': f'failed: exit code {proc.returncode} '
                               f'(see logs/{name}.log)'}
        rows[name] = _finish(run, results_dir, varying, progress, outcome['summary'],
                             outcome['status'], outcome['hardware'],
                             time.perf_counter() - started)
      if stop['signum'] is not None and not running:
        _stop(stop['signum'])
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  return rows


def _child_main(spec_path: str) -> int:
  """`python -m experiments.sweep --run_spec FILE`: one run of a sweep, in its own process."""
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  with open(spec_path, 'rb') as f:
    spec = pickle.load(f)
  try:
    xla_flags.apply(spec['config'])  # Before run_one starts JAX's backends.
  except UserError as e:
    _write_json(spec['result'], {'summary': None, 'status': f'failed: {e}', 'hardware': None})
    return 0
  summary, status, hw = run_one(spec['config'], spec['workdir'])
  _write_json(spec['result'], {'summary': summary, 'status': status, 'hardware': hw})
  return 0


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


# Transcribed from ../shared/reference/papers.md (the papers' own tables); tests check the
# transcription against that file where it exists.
_PAPER_NUMBERS = {
    'identity_mappings_table2': {
        'source': 'He et al. 2016 (Identity Mappings, arXiv 1603.05027), Table 2: CIFAR-10 '
                  'test error (%), median of 5 runs',
        'ResNet-110': {'original': 6.61, 'bn_after_add': 8.17, 'relu_before_add': 7.84,
                       'relu_only_preact': 6.71, 'full_preact': 6.37},
        'ResNet-164': {'original': 5.93, 'bn_after_add': 6.50, 'relu_before_add': 6.14,
                       'relu_only_preact': 5.91, 'full_preact': 5.46},
    },
    'identity_mappings_table3_cifar100': {
        'source': 'He et al. 2016 (Identity Mappings), Table 3: CIFAR-100 test error (%), '
                  'median of 5 runs',
        'ResNet-164': {'original': 25.16, 'full_preact': 24.33},
        'ResNet-1001': {'original': 27.82, 'full_preact': 22.71},
    },
    'resnet2015_table6': {
        'source': 'He et al. 2015 (arXiv 1512.03385), Table 6: CIFAR-10 test error (%), '
                  'option A shortcuts (ResNet-110: best of 5 runs, mean 6.61 +- 0.16)',
        'residual': {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93},
    },
    'resnet2015_fig6': {
        'source': 'He et al. 2015, Fig. 6 (curves only, no table): plain nets train and test '
                  'worse as they get deeper (plain-20 < plain-32 < plain-44 < plain-56); '
                  'plain-110 stays above 60% error; residual nets do better as they get deeper',
    },
}


def paper_numbers() -> dict:
  """The published numbers the studies compare with, each table labelled with its source."""
  return json.loads(json.dumps(_PAPER_NUMBERS), object_hook=lambda d: {
      (int(k) if k.isdigit() else k): v for k, v in d.items()})


# Helpers shared by the studies.

def command() -> str:
  """The command line that reproduces this process's study, from the repository root."""
  module = sys.modules['__main__'].__spec__
  name = module.name if module else os.path.basename(sys.argv[0])
  return shlex.join(['python', '-m', name, *sys.argv[1:]])


def apply_budget(config, *, steps: int, batch_size: int, eval_split: str, evals: int,
                 paper: bool, warmup_steps: int | None = None, unrolled: bool) -> None:
  """Sets the schedule of a shortened run: the paper's shape (lr /10 at 50% and 75% of the
  steps) over `steps`, `evals` evaluations, and checkpoints at each of them.

  paper=True keeps the recipe's own numbers (64k steps, /10 at 32k and 48k) and follows
  fb.resnet.torch where the papers are silent: Nesterov momentum, weight decay on BN and biases.
  """
  config.batch_size = batch_size
  config.data.eval_split = eval_split
  config.num_train_steps = steps
  if paper:
    config.optimizer = 'nesterov'
    config.decay_bn_and_bias = True
  else:
    config.lr_boundaries = (steps // 2, steps * 3 // 4)
    if warmup_steps is not None:
      config.warmup_steps = warmup_steps
  config.eval_every_steps = max(1, steps // evals)
  config.checkpoint_every_steps = config.eval_every_steps
  # Train records that end exactly at each eval, a few per eval interval (for the curves).
  every = config.eval_every_steps
  config.log_every_steps = next((every // k for k in range(2, every + 1)
                                 if every % k == 0 and every // k <= 100), 1)
  config.eval_batch_size = min(config.eval_batch_size, 500)
  if unrolled:
    # One parameter layout on every machine: scan=None resolves by backend (an accelerator
    # scans the nets of 110+ layers, the CPU only 1001 and 1202), so a study resumed or rerun
    # elsewhere meets its own checkpoints' layout. On CPU unrolled is also the faster
    # (docs/benchmarks.md).
    config.model.scan = False


def sweep_hardware(rows: list[dict]) -> str:
  """The hardware the rows ran on (several entries if a resumed sweep moved machines)."""
  found = sorted({row['hardware'] for row in rows if row.get('hardware')})
  return '; '.join(found) if found else 'unknown'


def curves(workdir: str) -> dict:
  """{'train/loss': [(step, value)], 'train/error': ..., 'eval/error': ...} from metrics.jsonl."""
  from resnet_jax.metrics import read_metrics
  out = {'train/loss': [], 'train/error': [], 'eval/error': [], 'eval/loss': []}
  for r in read_metrics(workdir):
    if 'train/loss' in r:
      out['train/loss'].append((r['step'], r['train/loss']))
      out['train/error'].append((r['step'], 100 * (1 - r['train/accuracy'])))
    if 'eval/accuracy' in r:
      out['eval/error'].append((r['step'], 100 * (1 - r['eval/accuracy'])))
      out['eval/loss'].append((r['step'], r['eval/loss']))
  return out


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
      'hardware': sweep_hardware(rows), 'versions': versions(),
      # The runs' own time (all attempts), and this invocation's, which skips finished runs.
      'runs_wall_s': round(sum(row.get('wall_s') or 0 for row in rows), 1),
      'wall_s': round(wall_s, 1),
      'num_runs': len(rows), 'failed_runs': sum(map(failed, rows)),
      'files': files, 'notes': notes, 'headline': headline,
  }
  _write_json(os.path.join(results_dir, 'results.json'), manifest)
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


# Where the papers are silent, every study's `paper` budget follows the authors' code; the
# shortened budgets keep the project's defaults. Each study lists these with its own.
COMMON_DEVIATIONS = (
    "Where the paper is silent, the authors' code (fb.resnet.torch) is followed in the paper "
    'budget: SGD with Nesterov momentum 0.9 and weight decay 1e-4 on every parameter, BN '
    'scales and biases included.',
    'Inputs are normalised per channel (mean and std of the training set), not by the '
    'per-pixel mean subtraction of the 2015 paper.',
)


def header(study: str, budget: str, rows: list[dict], wall_s: float) -> str:
  """The first lines of a study's results.md: budget, hardware, versions, time, command."""
  v = versions()
  runs_wall = sum(row.get('wall_s') or 0 for row in rows)
  failed_rows = [row for row in rows if failed(row)]
  lines = [
      f'# {study} ({budget} budget)', '',
      f'- Command (from the repository root): `{command()}`',
      f'- Hardware: {sweep_hardware(rows)}',
      '- Versions: ' + ', '.join(f'{k} {val}' for k, val in v.items()),
      f'- Wall time: {_duration(runs_wall)} of training over all attempts of the {len(rows)} '
      f'runs; this invocation took {_duration(wall_s)}.',
  ]
  if failed_rows:
    lines.append(f'- **{len(failed_rows)} run(s) failed**: ' + '; '.join(
        f'{row["workdir"].rsplit("/", 1)[-1]}: {row["status"]}' for row in failed_rows))
  return '\n'.join(lines) + '\n'


def plot_title(study: str, budget: str, rows: list[dict]) -> str:
  return f'{study}, {budget} budget, {sweep_hardware(rows)}'


def main(argv=None) -> int:
  cli.quiet_tpu_probe()  # JAX's harmless 'no TPU' line would read as a failure.
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--run_spec', required=True,
                      help='a pickled run spec written by run_sweep (internal).')
  args = parser.parse_args(argv)
  return _child_main(args.run_spec)


if __name__ == '__main__':
  sys.exit(main())
