"""The workdir's guards: one run per workdir, and never two different runs mixed in one.

A sweep launches hundreds of runs, so a workdir is checked before anything in it is touched:

* `check_writable`: the path is a directory this process can write (not a file, not on a
  read-only file system), checked before compile so a typo costs seconds, not a compile.
* `lock`: an exclusive `flock` on `<workdir>/.lock`. The kernel drops it when its process dies,
  `kill -9` included, so a crashed run never leaves the workdir stuck.
* `check_same_run`: a rerun resumes only the run that the workdir holds. Any key that changes the
  result (model, data, optimiser, schedule, seed, batch) must equal the recorded config; the keys
  in `RESULT_NEUTRAL_KEYS` (logging, checkpointing, loading and placement) may change. A key
  added to configs/schema.py since the run was recorded counts as having its default there.
  `config.allow_config_change=True` continues on purpose, and keeps the old config beside the new.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import socket
import tempfile

import flax.traverse_util

from configs import schema
from resnet_jax.errors import UserError

# A run's files in its workdir (cli.enclosing_run spells three of them out: it runs before JAX,
# which this module's imports load).
CHECKPOINTS_DIR = 'checkpoints'
CONFIG_FILE = 'config.json'
LOCK_FILE = '.lock'
METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'

# Keys that may differ between the runs that share a workdir: they decide when things are logged,
# evaluated or saved, how data is loaded and where things run, never which numbers training
# computes. (Exact eval counts every example once whatever eval_batch_size is; checkpoints hold
# one layout that both parallel backends restore. model.scan, scan_unroll, canonical_conv_grads
# and unit_fence compile the same function another way; scan=None resolves by backend, so a
# resume elsewhere may have to name the layout its checkpoints hold, and a checkpoint of the other
# layout is refused by the restore, in one line that names the key. config.xla orders the same
# kernels another way: 30 bfloat16 steps gave bit-identical weights either way.)
RESULT_NEUTRAL_KEYS = frozenset({
    'log_every_steps', 'eval_every_steps', 'eval_every_epochs', 'checkpoint_every_steps',
    'keep_checkpoints',
    'keep_best_checkpoint', 'eval_batch_size', 'allow_config_change',
    'data.data_dir', 'data.worker_count', 'data.worker_buffer_size', 'data.read_threads',
    'data.read_buffer_size', 'data.prefetch_to_device',
    'parallel.backend', 'model.scan', 'model.scan_unroll', 'model.canonical_conv_grads',
    'model.unit_fence',
    'distributed.initialize', 'distributed.coordinator_address', 'distributed.num_processes',
    'distributed.process_id', 'xla.cpu_concurrency_optimized_scheduler',
})


class WorkdirError(UserError):
  """A workdir that cannot be used: not writable, in use, or holding another run."""


class WorkdirInUse(WorkdirError):
  """A workdir whose lock another process holds: its run is in progress there."""


def is_local(workdir: str) -> bool:
  return '://' not in workdir


def check_writable(workdir: str, flag: str = '--workdir') -> None:
  """Creates `workdir` if needed and proves it writable, or raises WorkdirError naming it as
  `flag`."""
  if not is_local(workdir):
    return  # gs:// and friends: orbax and tfds report their own permission errors.
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'{flag}={workdir} is a file, not a directory; choose another path.')
  try:
    os.makedirs(workdir, exist_ok=True)
    # A byte written and synced, not only a file made: on a full disk, creating an empty file
    # still works.
    with tempfile.TemporaryFile(dir=workdir) as probe:
      probe.write(b'\0' * 4096)
      probe.flush()
      os.fsync(probe.fileno())
  except OSError as e:
    why = {errno.EROFS: 'is on a read-only file system',
           errno.EACCES: 'is not writable by this user',
           errno.EPERM: 'is not writable by this user',
           errno.ENOTDIR: 'lies under a path that is a file, not a directory',
           errno.ENOSPC: 'is on a full disk'}.get(e.errno, f'cannot be created or written ({e.strerror})')
    raise WorkdirError(f'{flag}={workdir} {why}; choose another path.') from None


@contextlib.contextmanager
def lock(workdir: str, enabled: bool = True, flag: str = '--workdir', holder: str = 'run'):
  """Holds the workdir's lock for the duration of a run (or the results dir's for a study:
  `flag`, `holder`); a second one is refused at once."""
  if not (enabled and is_local(workdir)):
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      who = os.pread(fd, 1000, 0).decode(errors='replace').strip()
      # The file names what holds it (a report reads a study's results dir under its lock);
      # a file of an older version holds the pid only.
      if not re.fullmatch(r'\w+ \(.*\)', who):
        who = f'{holder} ({who or "another process"})'
      raise WorkdirInUse(
          f'{flag}={workdir} is in use by another {who}; wait for it to finish, '
          f'stop it, or choose another {flag}.') from None
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (f'{holder} (pid {os.getpid()} on {socket.gethostname()}, started '
                     f'{datetime.datetime.now().isoformat(timespec="seconds")})').encode(), 0)
    except OSError as e:  # The disk filled since check_writable: the lock holds, unnamed.
      logging.warning('%s: the lock holder could not be written (%s).', path, e.strerror)
    yield
  finally:
    os.close(fd)  # Closing the descriptor releases the flock.


@contextlib.contextmanager
def lock_folder(folder: str, message: str):
  """An flock on the folder itself, for a folder of the repository (docs/) that must hold no
  lock file: a second holder is refused at once with WorkdirInUse(`message`)."""
  fd = os.open(folder, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirInUse(message) from None
    yield
  finally:
    os.close(fd)  # Closing the descriptor releases the flock.


def flatten(tree: dict) -> dict:
  """{'model': {'depth': 20}} -> {'model.depth': 20}."""
  return flax.traverse_util.flatten_dict(tree, sep='.')


def as_dict(config) -> dict:
  """A config as the plain JSON values that config.json records (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


class _Absent:
  """A key that a recorded config lacks, standing for its default (shown as such in messages)."""

  def __init__(self, value):
    self.default = value

  def __eq__(self, other):
    return self.default == other

  def __repr__(self):
    return f'(absent: the default {self.default!r})'


def result_changes(recorded: dict, config: dict) -> list[tuple[str, object, object]]:
  """The keys, outside RESULT_NEUTRAL_KEYS, whose values differ: (key, recorded, new).

  A key that `recorded` lacks was added to configs/schema.py after that run was recorded. A new
  key defaults to the behaviour from before it existed, so the recorded run had its default value:
  the current default is no change, any other value is. Without this, every new key would make
  every existing workdir (and every finished experiment run) refuse to resume.
  """
  old, new = flatten(recorded), flatten(config)
  defaults = flatten(as_dict(schema.get_config()))
  missing = object()
  changes = []
  for key in sorted(set(old) | set(new)):
    if key in RESULT_NEUTRAL_KEYS:
      continue
    a, b = old.get(key, missing), new.get(key, missing)
    if a is missing and key in defaults:
      a = _Absent(defaults[key])
    if not a == b:
      changes.append((key, '(absent)' if a is missing else a, '(absent)' if b is missing else b))
  return changes


def describe_changes(changes) -> str:
  return '; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in changes)


def read_recorded_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f'{path} cannot be read ({e}); it records the run in {workdir}. Restore it, '
                       'or use another workdir.') from None


def check_not_results(workdir: str) -> None:
  """Refuses a workdir that holds a study's results (its results.json) rather than a run."""
  if os.path.isfile(os.path.join(workdir, 'results.json')):
    raise WorkdirError(f"--workdir={workdir} holds a study's results (results.json), not a run; "
                       "the study's runs are in its runs/ folder. Choose another --workdir.")


def check_same_run(workdir: str, config) -> None:
  """Refuses a config whose result would differ from the run recorded in `workdir`."""
  recorded = read_recorded_config(workdir)
  if recorded is None:
    # The trainer writes config.json before any of these: without it, and without checkpoints
    # (each records its config, which the restore checks), they are another tool's, and a new
    # run would truncate or replace them.
    found = [name for name in (METRICS_FILE, SUMMARY_FILE)
             if os.path.exists(os.path.join(workdir, name))]
    if found and not os.path.exists(os.path.join(workdir, CHECKPOINTS_DIR)):
      them = 'them' if len(found) > 1 else 'it'
      raise WorkdirError(f'--workdir={workdir} holds {" and ".join(found)} but no {CONFIG_FILE}, '
                         f'so no run of this trainer wrote {them}; a run there would overwrite '
                         f'{them}. Move {them} aside, or choose another --workdir.')
    return
  if not (isinstance(recorded, dict) and all(isinstance(recorded.get(k), dict)
                                             for k in ('model', 'data'))):
    raise WorkdirError(f'--workdir={workdir} holds a {CONFIG_FILE} that no run of this trainer '
                       'wrote (it is no JSON object with model and data keys); a run there would '
                       'overwrite it. Move it aside, or choose another --workdir.')
  changes = result_changes(recorded, as_dict(config))
  if not changes:
    return
  if config.get('allow_config_change', False):
    logging.warning('Continuing the run in %s with a changed config, as '
                    'config.allow_config_change asks: %s', workdir, describe_changes(changes))
    return
  raise WorkdirError(
      f'--workdir={workdir} holds a run with another config, which this run would overwrite: '
      f'{describe_changes(changes)}. Rerun with the recorded config ({os.path.join(workdir, CONFIG_FILE)}), '
      'choose another --workdir, or pass --config.allow_config_change=true to continue it on purpose.')


def write_atomic(path: str, text: str) -> None:
  """Writes a file so that a crash leaves either the old or the new content, never half. The
  temporary is this process's own, so two processes that write one file (two evaluations of a
  run) leave one whole file, never a mix."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:  # A full disk: no half-written temporary left beside the file.
    with contextlib.suppress(OSError):
      os.remove(tmp)
    # A failed write names no file (and a failed open the temporary's): name the file.
    raise OSError(e.errno, e.strerror, path) from None


def record_config(workdir: str, config, restored_step: int | None) -> None:
  """Writes config.json; a config changed on purpose keeps the previous one beside it."""
  path = os.path.join(workdir, CONFIG_FILE)
  text = config.to_json_best_effort(indent=2)
  if os.path.exists(path):
    with open(path) as f:
      previous = f.read()
    if previous == text:
      return
    if restored_step is not None:
      write_atomic(os.path.join(workdir, f'config.until_step_{restored_step}.json'), previous)
  write_atomic(path, text)
