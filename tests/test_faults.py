"""Faults a careless user or a flaky cluster causes: each ends safely, and nothing saved is lost.

Each test runs the command line on the offline quickstart, as a user would, against a copy of
one finished run (or a fresh one), then checks the exit code, the one-line message and that every
checkpoint, record and result that was there is still there.
"""

import asyncio
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from resnet_jax.metrics import read_metrics
from tests import helpers

STEPS = 120
ARGS = (f'--config.num_train_steps={STEPS}', '--config.checkpoint_every_steps=20',
        '--config.eval_every_steps=40', '--config.log_every_steps=10', '--config.warmup_steps=10')
SCHEDULE = ('--config.lr_boundaries=(90,)',)


def run(workdir, *overrides, schedule=SCHEDULE, timeout=helpers.HANG_S):
  return helpers.run_main(workdir, *ARGS, *schedule, *overrides, timeout=timeout)


def snapshot(workdir) -> dict:
  """Every file under the workdir (but the lock) with its bytes: what must not change."""
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      if name != '.lock':
        with open(path, 'rb') as f:
          files[os.path.relpath(path, workdir)] = f.read()
  return files


def one_error_line(result, code: int, *words: str) -> str:
  assert result.returncode == code, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, result.stderr[-3000:]
  for word in words:
    assert word in errors[0], errors[0]
  return errors[0]


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  result = run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture
def copy(finished, tmp_path):
  target = tmp_path / 'run'
  shutil.copytree(finished, target)
  return target


def test_a_rerun_with_another_config_is_refused_and_touches_nothing(copy):
  # The reproduction: the newest checkpoints gone, then a rerun with another depth.
  for step in helpers.checkpoint_steps(copy)[-2:]:
    shutil.rmtree(copy / 'checkpoints' / str(step))
  (copy / 'summary.json').unlink()
  before = snapshot(copy)
  result = run(copy, '--config.model.depth=32')
  one_error_line(result, 2, 'model.depth: 20 -> 32', 'allow_config_change')
  assert snapshot(copy) == before
  # Without config.json, each checkpoint's own record of its config refuses it the same way.
  (copy / 'config.json').unlink()
  before = snapshot(copy)
  one_error_line(run(copy, '--config.model.depth=32', '--config.seed=3'), 2,
                 'was written with another config', 'model.depth: 20 -> 32', 'seed: 0 -> 3')
  assert snapshot(copy) == before


def test_a_changed_model_does_not_fit_even_when_allowed(copy):
  before = snapshot(copy)
  result = run(copy, '--config.model.depth=32', '--config.allow_config_change=true')
  one_error_line(result, 2, 'does not fit this model', 'stage1_unit4')
  assert snapshot(copy) == before


def test_a_scanned_model_on_an_unrolled_checkpoint_names_the_scan_key(copy):
  # scan=None resolves by backend and dtype, so a resume elsewhere may meet the other layout.
  before = snapshot(copy)
  result = run(copy, '--config.model.scan=true')
  one_error_line(result, 2, 'does not fit this model', 'stages are unrolled',
                 "this model's are scanned", '--config.model.scan=false')
  assert snapshot(copy) == before
  # The hint's own command resumes it.
  assert run(copy, '--config.model.scan=false').returncode == 0


def test_keys_that_do_not_change_the_result_may_change(copy):
  before = snapshot(copy)
  result = run(copy, '--config.log_every_steps=7', '--config.checkpoint_every_steps=30',
               '--config.keep_checkpoints=5', '--config.data.worker_count=0',
               '--config.eval_batch_size=120')
  assert result.returncode == 0, result.stderr[-3000:]
  assert snapshot(copy) == before  # Finished already: nothing to do, nothing changed.


def test_a_run_killed_between_its_last_save_and_its_summary_reports_the_same_numbers(copy):
  """CI caught it: resumed with no step left to train, the summary lost the train scalars (the
  sweep's train_error column went blank). They come from the log of the last step."""
  finished = json.loads((copy / 'summary.json').read_text())
  (copy / 'summary.json').unlink()
  result = run(copy)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((copy / 'summary.json').read_text())
  numbers = lambda s: {k: v for k, v in s.items() if k.startswith(('train/', 'eval/'))}
  assert 'train/accuracy' in finished and numbers(summary) == numbers(finished)


def test_a_change_on_purpose_continues_and_keeps_the_old_config(copy):
  old_config = (copy / 'config.json').read_text()
  shutil.rmtree(copy / 'checkpoints' / str(STEPS))
  (copy / 'summary.json').unlink()
  resume_at = helpers.checkpoint_steps(copy)[-1]
  result = run(copy, '--config.learning_rate=0.05', '--config.allow_config_change=true')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'learning_rate: 0.1 -> 0.05' in result.stderr
  assert json.loads((copy / 'config.json').read_text())['learning_rate'] == 0.05
  assert (copy / f'config.until_step_{resume_at}.json').read_text() == old_config


def test_a_corrupt_newest_checkpoint_is_moved_aside_and_never_loops(copy):
  # The reproduction: the newest checkpoint's metadata gone, and the summary.
  (copy / 'checkpoints' / str(STEPS) / 'state' / '_METADATA').unlink()
  (copy / 'summary.json').unlink()
  older = helpers.checkpoint_steps(copy)[-2]
  result = run(copy)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from {copy} at step {older}' in result.stderr
  assert f'Moved the unreadable checkpoint of step {STEPS} aside' in result.stderr
  # issue 21: a correct recovery is quiet (orbax's failed read left "Event loop is closed").
  assert 'Traceback' not in result.stderr and 'Event loop is closed' not in result.stderr
  assert (copy / 'checkpoints' / f'corrupt-{STEPS}' / 'state').is_dir()  # Kept, not deleted.
  assert STEPS in helpers.checkpoint_steps(copy) and (copy / 'summary.json').exists()
  again = run(copy)  # The crash loop of StepAlreadyExistsError is gone.
  assert again.returncode == 0, again.stderr[-3000:]
  steps = [(r['step'], 'eval/accuracy' in r) for r in read_metrics(copy)]
  assert len(steps) == len(set(steps)), 'a step was recorded twice'


def test_a_newest_checkpoint_with_damaged_arrays_is_passed_over_quietly(copy):
  """issue 21: orbax abandons the other reads when one array fails; each used to print an
  'Exception ignored in: <coroutine ...>' traceback (47 for the quickstart net)."""
  for chunk in (copy / 'checkpoints' / str(STEPS) / 'state').glob('ocdbt.process_0/d/*'):
    chunk.write_bytes(np.random.default_rng(0).bytes(100))
  (copy / 'summary.json').unlink()
  result = run(copy)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Moved the unreadable checkpoint of step {STEPS} aside' in result.stderr
  assert 'Traceback' not in result.stderr and 'Exception ignored' not in result.stderr


def test_a_newest_checkpoint_with_a_damaged_train_window_is_passed_over(copy):
  """The train window is read with the state, so its damage is that checkpoint's damage: the run
  resumes from the one before, as for damaged arrays, and does not stop with orbax's error."""
  files = [f for f in (copy / 'checkpoints' / str(STEPS) / 'train_window').rglob('*')
           if f.is_file()]
  assert files
  for f in files:
    f.write_bytes(f.read_bytes()[:5])  # Truncated, as by a crash mid-write.
  (copy / 'summary.json').unlink()
  result = run(copy)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Moved the unreadable checkpoint of step {STEPS} aside' in result.stderr
  assert f'Resumed from {copy} at step {helpers.checkpoint_steps(copy)[-2]}' in result.stderr


def _abandon_a_failed_read(filename: str, gathered: bool) -> None:
  """A read of code from `filename` that fails with no one to retrieve its exception, as orbax's
  other reads of a damaged checkpoint do: a task of its own, or gathered with others into one
  future; collected when this returns."""
  namespace = {}
  exec(compile('async def read():\n  raise ValueError("damaged")\n', filename, 'exec'), namespace)

  async def start():
    read = namespace['read']()
    return asyncio.gather(read) if gathered else asyncio.ensure_future(read)

  loop = asyncio.new_event_loop()
  abandoned = loop.run_until_complete(start())
  loop.run_until_complete(asyncio.sleep(0))  # The read runs, and fails.
  loop.close()
  del abandoned


@pytest.mark.parametrize('gathered', [False, True], ids=['task', 'gathered'])
@pytest.mark.parametrize('filename, logged', [('/site-packages/orbax/checkpoint/read.py', False),
                                              ('/work/some_other_code.py', True)])
def test_abandoned_failed_reads_of_orbax_are_collected_without_a_traceback(caplog, filename,
                                                                           logged, gathered):
  """Seen in CI and in repeated runs: the damaged-arrays test above got asyncio's 'Task
  exception was never retrieved' and '_GatheringFuture exception was never retrieved', with
  tracebacks, for orbax's failed reads. restore's guard drops those raised in orbax's code; one
  of other code is still logged."""
  from resnet_jax.train import checkpoint
  with checkpoint._quiet_abandoned_reads():  # pylint: disable=protected-access
    _abandon_a_failed_read(filename, gathered)
  lines = [r for r in caplog.records if 'exception was never retrieved' in r.getMessage()]
  assert bool(lines) == logged, [r.getMessage()[:300] for r in lines]


def test_the_orbax_filter_ends_on_an_exception_chain_that_loops():
  """A cause chain set by hand can loop (a -> b -> a); the asyncio filter then still answers
  (it is a logging filter: a hang there would hang the process that logs), and the record of an
  exception of other code is logged."""
  from resnet_jax.train import checkpoint
  a, b = ValueError('a'), ValueError('b')
  a.__cause__, b.__cause__ = b, a
  record = logging.LogRecord('asyncio', logging.ERROR, __file__, 1,
                             'Task exception was never retrieved', None, (ValueError, a, None))
  answer, orbax_filter = [], checkpoint._AbandonedOrbaxReads()  # pylint: disable=protected-access
  # In a thread, so that a filter that loops fails this test instead of hanging the suite.
  worker = threading.Thread(target=lambda: answer.append(orbax_filter.filter(record)),
                            daemon=True)
  worker.start()
  worker.join(timeout=30)
  assert answer == [True], 'the filter did not return: it follows the loop for ever'


_READ = '''
import types

@types.coroutine
def _pause():
  yield

async def read():
  try:
    await _pause()
  finally:
    raise ValueError('damaged')
'''


def _abandon_a_started_read(filename: str) -> None:
  """A coroutine of code from `filename` that fails as it is closed unfinished, as orbax's other
  reads of a damaged checkpoint do when they are collected."""
  namespace = {}
  exec(compile(_READ, filename, 'exec'), namespace)
  read = namespace['read']()
  read.send(None)
  del read
  gc.collect()


def _finish_a_read_after_its_loop_closed() -> None:
  """What tensorstore does for a read that finishes after orbax closed its event loop: its
  callback calls the closed loop's call_soon_threadsafe, and reports the RuntimeError."""
  import tensorstore as ts
  promise, future = ts.Promise.new()

  async def wait():
    return await future

  async def start():
    waiting = asyncio.ensure_future(wait())
    await asyncio.sleep(0)
    return waiting

  loop = asyncio.new_event_loop()
  loop.run_until_complete(start())
  loop.close()
  promise.set_result(1)


class _RaisesWhenCollected:
  def __del__(self):
    raise ValueError('not a read')


def _collect_an_object_whose_del_raises() -> None:
  _RaisesWhenCollected()
  gc.collect()


@pytest.mark.parametrize('report, passed_on', [
    (lambda: _abandon_a_started_read('/site-packages/orbax/checkpoint/read.py'), False),
    (_finish_a_read_after_its_loop_closed, False),
    (lambda: _abandon_a_started_read('/work/some_other_code.py'), True),
    (_collect_an_object_whose_del_raises, True)],
    ids=['orbax-read', 'late-tensorstore-callback', 'other-coroutine', 'other-object'])
def test_abandoned_reads_stay_quiet_after_the_restore_and_other_reports_pass(monkeypatch, report,
                                                                            passed_on):
  """Seen in CI: the damaged-arrays test above got 'Event loop is closed' tracebacks from reads
  that finished after the restore had returned. restore's guard stays in place for those, and
  passes every other report on to the hook it found."""
  from resnet_jax.train import checkpoint
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  with checkpoint._quiet_abandoned_reads():  # pylint: disable=protected-access
    pass
  report()  # After the guard, as the reads in flight finish.
  assert bool(seen) == passed_on, [(u.object, u.exc_value) for u in seen]


def test_no_readable_checkpoint_stops_and_touches_nothing(copy):
  for step in helpers.checkpoint_steps(copy):
    (copy / 'checkpoints' / str(step) / 'state' / '_METADATA').unlink()
  (copy / 'summary.json').unlink()
  before = snapshot(copy)
  one_error_line(run(copy), 1, 'no checkpoint in', 'can be restored', 'Nothing was changed')
  assert snapshot(copy) == before


def test_metrics_records_are_never_duplicated_and_a_torn_line_is_repaired(copy):
  shutil.rmtree(copy / 'checkpoints' / str(STEPS))
  (copy / 'summary.json').unlink()
  with open(copy / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 125, "train/lo')  # An OS crash mid-write.
  assert read_metrics(copy)[-1]['step'] == STEPS  # The torn line is skipped, not fatal.
  result = run(copy)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = (copy / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]  # Every line parses.
  keys = [(r['step'], 'eval/accuracy' in r) for r in records]
  assert len(keys) == len(set(keys)) and max(k[0] for k in keys) == STEPS
  assert [r['train/steps'] for r in records if 'train/loss' in r] == [10] * (STEPS // 10)


def test_a_second_run_on_a_workdir_is_refused_at_once_and_a_killed_one_leaves_no_lock(tmp_path):
  workdir = tmp_path / 'run'
  first = subprocess.Popen(helpers.main_command(workdir, *ARGS, *SCHEDULE), cwd=helpers.ROOT,
                           env=helpers.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
  try:
    deadline = time.time() + 300
    while not (workdir / 'config.json').exists():  # Written once the lock is held.
      assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
      time.sleep(0.1)
    started = time.time()
    second = helpers.run_main(workdir, *ARGS, *SCHEDULE, timeout=helpers.HANG_S)
    one_error_line(second, 2, 'is in use by another run', f'pid {first.pid}')
    assert time.time() - started < 60  # Refused before compiling anything.
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=helpers.HANG_S)
  result = run(workdir)  # kill -9 left the lock file, but no lock.
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize('sig, code', [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=['SIGTERM', 'SIGINT'])
def test_a_signal_saves_then_exits_non_zero_and_twice_exits_at_once(tmp_path, sig, code):
  def start(workdir):
    proc = subprocess.Popen(helpers.main_command(workdir, *ARGS, *SCHEDULE), cwd=helpers.ROOT,
                            env=helpers.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while not helpers.checkpoint_steps(workdir):
      assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
      time.sleep(0.1)
    return proc

  proc = start(tmp_path / 'once')
  proc.send_signal(sig)
  stderr = proc.communicate(timeout=helpers.HANG_S)[1]
  assert proc.returncode == code, stderr[-3000:]
  assert 'Traceback' not in stderr and 'Stopped at step' in stderr
  stopped_at = helpers.checkpoint_steps(tmp_path / 'once')[-1]
  assert stopped_at < STEPS and not (tmp_path / 'once' / 'summary.json').exists()

  # The second signal must come after the first was handled (the same signal twice before its
  # handler runs counts once): send it while the run still compiles, long before any save.
  workdir = tmp_path / 'twice'
  proc = subprocess.Popen(helpers.main_command(workdir, *ARGS, *SCHEDULE), cwd=helpers.ROOT,
                          env=helpers.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 300
  while not ((workdir / '.lock').exists() and (workdir / '.lock').read_text()):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
    time.sleep(0.02)
  proc.send_signal(sig)
  time.sleep(0.5)
  proc.send_signal(sig)
  stderr = proc.communicate(timeout=helpers.HANG_S)[1]
  assert proc.returncode == code, stderr[-3000:]
  assert 'received again: exiting now' in stderr and 'Traceback' not in stderr
  assert not helpers.checkpoint_steps(workdir)


def _checkpoint_is_finite(workdir, step) -> bool:
  import jax
  import orbax.checkpoint as ocp
  path = workdir / 'checkpoints' / str(step) / 'state'
  with ocp.PyTreeCheckpointer() as ckpt:
    metadata = ckpt.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    tree = ckpt.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


# After step 60 the learning rate jumps to 1e6: the loss turns NaN within a few steps.
DIVERGE = ('--config.lr_boundaries=(60,)', '--config.lr_decay_factor=1e7')


def test_a_non_finite_loss_stops_before_it_is_saved(tmp_path):
  workdir = tmp_path / 'run'
  result = run(workdir, schedule=DIVERGE)
  line = one_error_line(result, 1, 'non-finite', 'last good checkpoint is step 60')
  first_bad = int(line.split('at step ')[1].split(';')[0])
  assert 60 < first_bad < 80
  assert max(helpers.checkpoint_steps(workdir)) == 60
  assert all(_checkpoint_is_finite(workdir, s) for s in helpers.checkpoint_steps(workdir))
  assert not (workdir / 'summary.json').exists()
  # Still resumable: the same command resumes from step 60 and stops the same way.
  again = run(workdir, schedule=DIVERGE)
  one_error_line(again, 1, f'non-finite (NaN or inf) at step {first_bad}')
  assert 'Resumed from' in again.stderr


def test_skipping_non_finite_updates_counts_them_and_saves_finite_weights(tmp_path):
  workdir = tmp_path / 'run'
  result = run(workdir, '--config.skip_nonfinite_updates=true', schedule=DIVERGE)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert 0 < summary['nonfinite_steps'] <= STEPS - 60
  counted = sum(r['train/nonfinite_steps'] for r in read_metrics(workdir) if 'train/loss' in r)
  assert counted == summary['nonfinite_steps']
  assert all(_checkpoint_is_finite(workdir, s) for s in helpers.checkpoint_steps(workdir))
  # Resumed from step 80, after the first skipped steps: the summary still counts them all.
  skipped_by_80 = sum(r['train/nonfinite_steps'] for r in read_metrics(workdir)
                      if 'train/loss' in r and r['step'] <= 80)
  assert 0 < skipped_by_80 < summary['nonfinite_steps']
  for step in (s for s in helpers.checkpoint_steps(workdir) if s > 80):
    shutil.rmtree(workdir / 'checkpoints' / str(step))
  (workdir / 'summary.json').unlink()
  result = run(workdir, '--config.skip_nonfinite_updates=true', schedule=DIVERGE)
  assert result.returncode == 0 and f'Resumed from {workdir} at step 80' in result.stderr
  resumed = json.loads((workdir / 'summary.json').read_text())
  assert resumed['nonfinite_steps'] == summary['nonfinite_steps']


@pytest.fixture
def small_disk(tmp_path):
  """A 5 MiB tmpfs: room for the first checkpoints of the quickstart (about 2.2 MB each)."""
  with helpers.tmpfs(tmp_path / 'disk', '5m') as mount:
    yield mount


def test_a_full_disk_is_reported_at_once_and_keeps_the_saved_checkpoints(small_disk):
  workdir = small_disk / 'run'
  result = run(workdir, '--config.keep_checkpoints=5', '--config.keep_best_checkpoint=false')
  line = one_error_line(result, 1, 'no space to save the checkpoint of step', str(workdir),
                        'MiB free', 'intact')
  failed = int(line.split('of step ')[1].split(' ')[0])
  saved = helpers.checkpoint_steps(workdir)
  assert saved and max(saved) < failed
  assert f'step {failed + 10}/' not in result.stderr  # Reported at that save, not later.
  assert all(_checkpoint_is_finite(workdir, s) for s in saved)
  # Room again: the same command resumes from the newest checkpoint.
  subprocess.run(['mount', '-o', 'remount,size=64m', str(small_disk)], check=True)
  result = run(workdir, '--config.keep_checkpoints=5', '--config.keep_best_checkpoint=false')
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from {workdir} at step {saved[-1]}' in result.stderr


def test_a_write_that_fails_during_a_save_is_reported_at_once(copy):
  # A file-size limit makes the checkpoint's data files fail to write half-way, as a disk that
  # fills up during the save would (the space check before it passed).
  # The limit (64 KiB) is set by a shell that then execs the run: a preexec_fn would fork this
  # multithreaded (JAX) process in Python, which warns of deadlocks.
  shutil.rmtree(copy / 'checkpoints' / str(STEPS))
  (copy / 'summary.json').unlink()
  before = helpers.checkpoint_steps(copy)
  limited = ['bash', '-c', 'ulimit -f 64 && exec "$@"', 'bash',
             *helpers.main_command(copy, *ARGS, *SCHEDULE)]
  result = subprocess.run(limited, cwd=helpers.ROOT, env=helpers.env(), capture_output=True,
                          text=True, timeout=helpers.HANG_S)
  # orbax's writer threads print the tracebacks of their failed writes themselves; the run's
  # own report is one line.
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert errors[0].startswith(f'error: could not save the checkpoint of step {STEPS}')
  assert 'File too large' in errors[0] and 'intact' in errors[0]
  assert helpers.checkpoint_steps(copy) == before
  assert all(_checkpoint_is_finite(copy, s) for s in before)


@pytest.mark.slow
def test_the_best_checkpoint_survives_a_kill_with_keep_1(tmp_path):
  # A 20x learning-rate jump after step 200 knocks the accuracy down (to 0.52 fifty steps after
  # such a jump at step 100, measured) and it takes longer than the 100 steps left to recover,
  # so the best eval is at or before step 200, not the last one.
  workdir = tmp_path / 'run'
  args = ('--config.num_train_steps=300', '--config.checkpoint_every_steps=50',
          '--config.eval_every_steps=50', '--config.log_every_steps=25',
          '--config.keep_checkpoints=1', '--config.lr_boundaries=(200,)',
          '--config.lr_decay_factor=20')
  proc = subprocess.Popen(helpers.main_command(workdir, *args), cwd=helpers.ROOT,
                          env=helpers.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 600
  while 250 not in helpers.checkpoint_steps(workdir):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=helpers.HANG_S)
  result = helpers.run_main(workdir, *args)
  assert result.returncode == 0, result.stderr[-3000:]
  evals = [r for r in read_metrics(workdir) if 'eval/accuracy' in r]
  best = max(evals, key=lambda r: r['eval/accuracy'])['step']
  assert best < 300, f'the best eval is the last one ({evals}): nothing was tested'
  assert helpers.checkpoint_steps(workdir) == sorted({best, 300})


def _tiny_quickstart(**overrides):
  from configs import quickstart
  config = quickstart.get_config()
  config.num_train_steps = 8
  config.lr_boundaries = ()
  config.warmup_steps = 0
  config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  for key, value in overrides.items():
    config[key] = value
  return config


def _scripted_eval(monkeypatch, accuracies: dict):
  """Replaces the eval with fixed accuracies per step, or an error where the value is one."""
  from resnet_jax.train import loop

  def evaluate(p_eval_step, state, data_config, batch_size, par):
    step = int(par.host_value(state.step))
    if isinstance(accuracies[step], Exception):
      raise accuracies[step]
    return {'eval/loss': 1.0, 'eval/accuracy': accuracies[step], 'eval/top5_accuracy': 1.0,
            'eval/num_examples': 360}
  monkeypatch.setattr(loop, 'evaluate_split', evaluate)


def test_a_failing_eval_loses_no_training(tmp_path, monkeypatch):
  import jax
  from resnet_jax.train import loop
  _scripted_eval(monkeypatch, {2: 0.5, 4: RuntimeError('the eval split is unreadable')})
  with pytest.raises(RuntimeError, match='unreadable'):
    loop.train_and_evaluate(_tiny_quickstart(), str(tmp_path), devices=jax.devices()[:1])
  assert helpers.checkpoint_steps(tmp_path)[-1] == 4  # Saved before the eval that failed.


def test_the_best_checkpoint_is_known_after_a_restart(tmp_path, monkeypatch):
  import jax
  from resnet_jax.train import loop
  _scripted_eval(monkeypatch, {2: 0.5, 4: 0.9, 6: 0.3, 8: 0.2})
  config = _tiny_quickstart(keep_checkpoints=1)
  loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  assert helpers.checkpoint_steps(tmp_path) == [4, 8]
  # As after a kill before the last save: a new process knows the best only from the records.
  shutil.rmtree(tmp_path / 'checkpoints' / '8')
  (tmp_path / 'summary.json').unlink()
  for _ in range(2):
    loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert helpers.checkpoint_steps(tmp_path) == [4, 8]


def test_a_disk_that_is_full_at_the_start_is_one_line(tmp_path, monkeypatch):
  """issue 21: on a full disk an empty file can still be made; the workdir check writes a block
  and syncs it (/dev/full answers every write with ENOSPC)."""
  import tempfile
  from resnet_jax.errors import UserError
  from resnet_jax.train import workdir as workdir_lib
  monkeypatch.setattr(tempfile, 'TemporaryFile', lambda dir: open('/dev/full', 'wb'))
  with pytest.raises(UserError, match=r'--workdir=.* is on a full disk; choose another path\.'):
    workdir_lib.check_writable(str(tmp_path / 'run'))


def test_the_metric_writer_on_a_full_disk_raises_one_run_error_and_closes_quietly(tmp_path):
  from resnet_jax import metrics
  from resnet_jax.errors import RunError
  writer = metrics.MetricWriter(str(tmp_path))
  writer._jsonl.close()  # pylint: disable=protected-access
  writer._jsonl = open('/dev/full', 'w')  # pylint: disable=protected-access  # ENOSPC on write.
  with pytest.raises(RunError, match=r'the metrics of step 3 cannot be written \(No space left'):
    writer.write(3, {'train/loss': 1.0})
  writer.close()  # What could not be written is dropped, without a second error.


@pytest.fixture
def tiny_disk(tmp_path):
  with helpers.tmpfs(tmp_path / 'disk', '64k') as mount:
    yield mount


def test_a_disk_that_fills_up_ends_the_run_in_one_line_without_tracebacks(tiny_disk):
  """issue 21: 8 KiB free: the workdir check passes, the first metrics record does not fit. One
  line, exit 1, and no traceback from the writers' close or tensorboardX at exit."""
  (tiny_disk / 'fill').write_bytes(b'\0' * 56 * 1024)
  workdir = tiny_disk / 'run'
  result = helpers.run_main(workdir, '--config.num_train_steps=4', '--config.log_every_steps=2')
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr and 'Exception ignored' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'No space left on device' in errors[0], result.stderr[-2000:]
