"""Runs a study's training runs through the one trainer, resumably: one row per run.

Every run trains with resnet_jax.train.loop.train_and_evaluate in its own workdir,
DIR/runs/<name>. A rerun of the same sweep skips the runs that finished (summary.json) and
resumes the interrupted ones from their checkpoints, bit for bit, so a sweep killed at any
moment continues where it stopped. With jobs > 1 each run is a child process
(`python -m experiments.runner --run_spec FILE`) and that many run at once; on a GPU each child
gets about 0.9 / jobs of its memory (XLA_PYTHON_CLIENT_MEM_FRACTION), so they share one device.
"""

import argparse
import dataclasses
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time

import ml_collections

from benchmarks import hardware
from resnet_jax import cli, xla_flags
from resnet_jax.errors import RunError, UserError
from resnet_jax.metrics import best_eval_step, duration, read_metrics
from resnet_jax.train import optim
from resnet_jax.train import run as run_lib
from resnet_jax.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Run:
  name: str                            # unique and filesystem-safe, e.g. 'full_preact-d20-s0'
  config: ml_collections.ConfigDict    # the complete config of the run
  meta: dict                           # the study's columns, e.g. {'placement': ..., 'depth': 20}
  # If set, the checkpoint with the best accuracy on the config's eval split (a validation
  # split) is evaluated on this split at the end, and that is the row's test error.
  report_split: str | None = None


def _total_steps(config) -> int:
  try:
    prepared = run_lib.prepare(config, open_data=False)
    return optim.num_train_steps(prepared.config, prepared.num_train)
  except UserError:  # The run reports it itself, in its row; the ETA only counts its steps.
    return int(config.num_train_steps)


def _steps_done(workdir: str) -> int:
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
  workdir_lib.write_atomic(path, json.dumps(value, indent=2))


def _flat(config) -> dict:
  return workdir_lib.flatten(workdir_lib.as_dict(config))


def varying_keys(runs: list[Run]) -> list[str]:
  """The config keys whose values differ between the runs (the CSV has one column for each)."""
  flats = [_flat(run.config) for run in runs]
  keys = sorted(set().union(*flats)) if flats else []
  return [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]


def _row(run: Run, workdir: str, summary: dict | None, status: str, side: dict,
         varying: list[str]) -> dict:
  flat = _flat(run.config)
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
  report = side.get('report') if ok else None
  if report:  # Selected on the eval split, reported on another.
    row.update(selected_step=report['step'],
               val_error=round(100 * (1 - report['val_accuracy']), 4),
               test_error=round(100 * (1 - report['accuracy']), 4),
               eval_examples=report['num_examples'])
  row['wall_s'] = round(side.get('wall_s', 0.0), 1)
  row['hardware'] = side.get('hardware')
  row['workdir'] = workdir
  row['status'] = status
  return row


def run_one(config, workdir: str, report_split: str | None = None
            ) -> tuple[dict | None, str, str]:
  """Trains one run in this process: (summary or None, status, hardware). With report_split,
  the summary's 'report' is the best checkpoint's accuracy there (Run.report_split)."""
  from resnet_jax.train import loop, trained
  hw = hardware.devices_line()
  try:
    summary = loop.train_and_evaluate(config, workdir)
    if report_split and not summary.get('stopped'):
      weights = trained.open_weights(workdir, checkpoint='best')
      result = loop.evaluate_weights(weights, report_split, config.eval_batch_size)
      _, val_accuracy = best_eval_step(read_metrics(workdir), {weights.step})
      summary['report'] = {'split': report_split, 'step': weights.step,
                           'val_accuracy': float(val_accuracy),
                           'accuracy': result['eval/accuracy'],
                           'num_examples': result['eval/num_examples']}
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
  # The console keeps the sweep's own lines: a handler there already (absl's default one, which
  # orbax's import installs) gets the run's warnings, not its INFO lines.
  levels = [(root, root.level)] + [(h, h.level) for h in root.handlers]
  for console, level in levels[1:]:
    console.setLevel(max(level, logging.WARNING))
  root.addHandler(handler)
  root.setLevel(logging.INFO)

  def undo():
    root.removeHandler(handler)
    for thing, level in levels:
      thing.setLevel(level)
    handler.close()
  return undo


class _Progress:
  """One line per run: which run, how far the sweep is (in steps), and the sweep's ETA."""

  def __init__(self, runs, results_dir):
    self.total = {r.name: _total_steps(r.config) for r in runs}
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
      eta = f'ETA {duration(elapsed / trained * (total - done))}'
    else:
      eta = 'ETA unknown'
    print(f'[{self.index[name]}/{self.count}] {name}: {what} | sweep {done}/{total} steps '
          f'({100 * done / max(total, 1):.0f}%), {duration(elapsed)} elapsed, {eta}', flush=True)


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
        workdir_lib.check_same_run(workdir, run_lib.prepare(run.config, open_data=False).config)
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
          'attempts': side.get('attempts', 0) + 1,
          'report': (summary or {}).get('report', side.get('report'))}
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
    summary, status, hw = run_one(run.config, workdir, run.report_split)
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
                       'result': result, 'report_split': run.report_split}, f)
        log = open(os.path.join(results_dir, 'logs', f'{run.name}.log'), 'a')
        proc = subprocess.Popen([sys.executable, '-m', 'experiments.runner', '--run_spec', spec],
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
  """`python -m experiments.runner --run_spec FILE`: one run of a sweep, in its own process."""
  # force: importing orbax (through grain) logs with absl before any handler is set, which gives
  # the root logger a default one; the run's INFO lines must reach this log.
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s',
                      force=True)
  with open(spec_path, 'rb') as f:
    spec = pickle.load(f)
  try:
    xla_flags.apply(spec['config'])  # Before run_one starts JAX's backends.
  except UserError as e:
    _write_json(spec['result'], {'summary': None, 'status': f'failed: {e}', 'hardware': None})
    return 0
  summary, status, hw = run_one(spec['config'], spec['workdir'], spec.get('report_split'))
  _write_json(spec['result'], {'summary': summary, 'status': status, 'hardware': hw})
  return 0


def main(argv=None) -> int:
  cli.quiet_tpu_probe()  # JAX's harmless 'no TPU' line would read as a failure.
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--run_spec', required=True,
                      help='a pickled run spec written by run_sweep (internal).')
  args = parser.parse_args(argv)
  return _child_main(args.run_spec)


if __name__ == '__main__':
  sys.exit(main())
