"""Checkpoints through orbax's CheckpointManager: train state, data iterator position and config.

Saving the state and the iterator is what makes resume exact: the restored run sees the same next
batch, the same augmentation draws (grain derives them from the record index) and the same RNG
stream (the state holds the key, and steps fold in their number) as the run that was interrupted.
The device data path (resnet_jax/data/device.py) draws its batches from the step number alone, so
its checkpoints hold no iterator. The config beside them says which run wrote them.

Nothing a run has saved is lost to a fault:
* an unreadable checkpoint is moved aside to `corrupt-<step>/`, never deleted, and only once an
  older one has been restored (if none can be, nothing is touched);
* a checkpoint that does not fit the model is a mismatch, reported as such, not corruption;
* a save that fails (a full disk) is reported at once, and the saved checkpoints stay;
* the best checkpoint is chosen from the eval records (`metrics.jsonl`), which survive restarts.
"""

import contextlib
import dataclasses
import gc
import inspect
import logging
import shutil
import sys
import traceback
from typing import Any, Sequence

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from resnet_jax.errors import RunError, UserError
from resnet_jax.models import weight_file
from resnet_jax.train import workdir as workdir_lib


class CheckpointMismatch(UserError):
  """A checkpoint written by another config or model than this run's."""


class CheckpointError(RunError):
  """No checkpoint can be restored, or one could not be saved."""


@dataclasses.dataclass
class _StepInfo:
  """What the preservation policies used here read of a checkpoint."""
  step: int
  metrics: dict | None = None
  time: Any = None


@dataclasses.dataclass
class PreserveBest:
  """An orbax preservation policy that keeps the checkpoint of the best eval so far.

  orbax's BestN reads the metrics that `save()` stores, but those exist only when eval runs
  before the save, and a run saves first so that a failing eval loses nothing. The best step is
  therefore told to this policy after each eval, and at start-up from the eval records.
  """
  best_step: int | None = None

  def should_preserve(self, checkpoints: Sequence[Any], *, context=None) -> Sequence[bool]:
    return [c.step == self.best_step for c in checkpoints]


class _OrbaxErrorFilter(logging.Filter):
  """Keeps orbax's background-thread tracebacks of a failed save out of the log.

  A failed save is reported once, by `Checkpointer.poll`, in one line; orbax would log the same
  error from every writer thread. The first message is kept for that line.
  """

  def __init__(self):
    super().__init__()
    self.first_error = None

  def filter(self, record):
    if record.levelno >= logging.ERROR and 'orbax' in record.pathname:
      if self.first_error is None:
        self.first_error = record.getMessage().splitlines()[0]
        if record.exc_info and record.exc_info[1] is not None:
          self.first_error = str(record.exc_info[1]).splitlines()[0]
      return False
    return True


def _leaves_by_name(tree) -> dict:
  """{'params/stem/conv/kernel': leaf}: the same names for a TrainState and its saved dict."""
  def name(path):
    return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
  return {name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpointer:
  """Keeps the last `keep` checkpoints, plus the best one by eval accuracy if `keep_best`."""

  def __init__(self, directory: str, keep: int = 3, keep_best: bool = True):
    self.directory = directory
    self.best = PreserveBest()
    self.preservation = checkpoint_managers.AnyPreservationPolicy(
        [checkpoint_managers.LatestN(keep)] + ([self.best] if keep_best else []))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=self.preservation,
        # Saves are started by the loop at the steps it chooses, never skipped by orbax.
        save_decision_policy=checkpoint_managers.ContinuousCheckpointingPolicy(),
        create=True)
    self.manager = ocp.CheckpointManager(
        directory, options=options, item_names=('state', 'data', 'config', 'train_window'),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler(),
                       'train_window': ocp.JsonCheckpointHandler()})
    self._pending = None
    self._errors = _OrbaxErrorFilter()
    logging.getLogger('absl').addFilter(self._errors)

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator, config: dict,
           train_window: dict | None = None) -> None:
    """Starts an asynchronous save; `state` must be replicated global arrays.

    `data_iterator` is None where the data is a function of the step alone (the device data
    path): the checkpoint then holds no data item. `train_window`: the train metrics summed
    since the last log step (JSON), which a run resumed here goes on summing.
    """
    self.poll()
    self._check_space(step, sum(x.nbytes for x in jax.tree.leaves(state)))
    items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    if train_window is not None:
      items['train_window'] = ocp.args.JsonSave(train_window)
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    args = ocp.args.Composite(**items)
    try:
      self.manager.save(step, args=args, force=True)
    except Exception as e:  # A synchronous failure (the directory cannot even be created).
      self._fail(step, e)
    self._pending = step

  def _check_space(self, step: int, state_bytes: int) -> None:
    """Refuses a save that cannot fit, before it writes a byte.

    A write that fails half-way is reported too (`poll`), but from orbax's writer threads, which
    print tracebacks of their own; a full disk is the common cause, and caught here cleanly.
    A checkpoint is the state's bytes, uncompressed, plus small metadata files.
    """
    if not workdir_lib.is_local(self.directory) or jax.process_index() != 0:
      return
    needed = int(state_bytes * 1.05) + 2**20
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise CheckpointError(
          f'no space to save the checkpoint of step {step} in {self.directory}: it needs about '
          f'{needed / 2**20:,.1f} MiB and the disk has {free / 2**20:,.1f} MiB free. The '
          f'checkpoints already saved ({", ".join(map(str, self.all_steps())) or "none"}) are '
          'intact; free some space and rerun the same command to resume.')

  def poll(self) -> None:
    """Raises CheckpointError if the last save has finished without writing its checkpoint.

    Cheap enough for every step: a thread check, and one stat once the save is done.
    """
    if self._pending is None or self.manager.is_saving_in_progress():
      return
    step, self._pending = self._pending, None
    if not (epath.Path(self.directory) / str(step)).exists():
      self._fail(step, None)

  def _fail(self, step: int, error: Exception | None) -> None:
    reason = self._errors.first_error or (str(error).splitlines()[0] if error else 'unknown error')
    free = ''
    if workdir_lib.is_local(self.directory):
      usage = shutil.disk_usage(self.directory)
      free = f' {usage.free / 2**20:,.1f} MiB free of {usage.total / 2**20:,.0f} MiB on that disk.'
    kept = [s for s in self.all_steps() if s != step]
    raise CheckpointError(
        f'could not save the checkpoint of step {step} in {self.directory}: {reason}.{free} The '
        f'checkpoints already saved ({", ".join(map(str, kept)) or "none"}) are intact; free some '
        'space (or fix the error) and rerun the same command to resume.')

  def restore(self, state_like: Any, data_iterator, config: dict,
              allow_config_change: bool = False) -> tuple[int | None, Any, dict | None]:
    """Restores the newest readable checkpoint into the shapes and shardings of `state_like`,
    and `data_iterator` (None on the device data path) to the position saved with it.

    A checkpoint that cannot be read (a truncated file after a crash, a corrupted disk) is passed
    over with a warning for the next older one, and moved aside to `corrupt-<step>/` once an older
    one has been restored, so the run can save that step again. A checkpoint written with another
    config, or whose arrays do not fit the model, raises CheckpointMismatch. If checkpoints exist
    but none can be read, CheckpointError is raised and nothing is changed. Returns (step, state,
    train window), or (None, state_like, None) when there is nothing to restore; the train window
    (see `save`) is None for a checkpoint saved without one.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    with _quiet_abandoned_reads():
      return self._restore_newest_readable(state_like, abstract, data_iterator,
                                           allow_config_change, config)

  def _restore_newest_readable(self, state_like, abstract, data_iterator, allow_config_change,
                               config):
    unreadable = []  # (step, what failed): strings, so no traceback keeps orbax's reads alive.
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        metadata = self.manager.item_metadata(step)
        if (epath.Path(self.directory) / str(step) / 'config').exists():  # Older ones have none.
          self._check_config(step, allow_config_change, config)
        self._check_fits(step, metadata['state'], abstract)
        items = dict(state=ocp.args.StandardRestore(abstract))
        if data_iterator is not None:
          if (epath.Path(self.directory) / str(step) / 'data').exists():
            items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
          else:  # Written by the device data path: a change of config.data.pipeline on purpose.
            logging.warning('The checkpoint of step %d holds no data-iterator state; the data '
                            'iterator starts at the beginning of its stream.', step)
        if (epath.Path(self.directory) / str(step) / 'train_window').exists():
          items['train_window'] = ocp.args.JsonRestore()  # Read here, so damage means fall back.
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except CheckpointMismatch:
        raise
      except Exception as e:  # orbax raises many types for unreadable files; try the next one.
        why = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
        logging.warning('Checkpoint at step %d is unreadable (%s); trying an older one.', step,
                        why)
        unreadable.append((step, why))
        continue
      self._move_aside([s for s, _ in unreadable])
      return step, restored.state, restored.get('train_window')
    if unreadable:
      raise CheckpointError(
          f'no checkpoint in {self.directory} can be restored ('
          + '; '.join(f'step {s}: {why}' for s, why in unreadable)
          + '). Nothing was changed. Move the checkpoints aside to start the run afresh, or '
          'choose another --workdir.')
    return None, state_like, None

  def _check_fits(self, step: int, metadata, abstract) -> None:
    """Raises CheckpointMismatch if the saved arrays are not the arrays of this model."""
    saved = _leaves_by_name(metadata)
    wanted = _leaves_by_name(abstract)
    if not saved:  # No readable array metadata at all: damage, not another model.
      raise ValueError('the checkpoint lists no arrays (its metadata is missing or unreadable)')
    problems = weight_file.differences(saved, wanted, net='this model')
    if problems:
      # Scanned stages are stacked as stage{s}_scan; scan=None resolves by backend and dtype, so
      # the same config can scan on one machine and unroll on another.
      saved_scans, wanted_scans = (any('_scan/' in k for k in names) for names in (saved, wanted))
      hint = ('' if saved_scans == wanted_scans else
              f' Its stages are {"scanned" if saved_scans else "unrolled"} and this model\'s '
              f'are {"scanned" if wanted_scans else "unrolled"} (config.model.scan=None decides '
              f'by backend and dtype): add --config.model.scan={str(saved_scans).lower()} '
              'to resume it.')
      raise CheckpointMismatch(
          f'the checkpoint of step {step} in {self.directory} does not fit this model '
          f'({weight_file.describe(problems)}); it was written by '
          'another model config. Rerun with the config that wrote it, or choose another '
          f'--workdir.{hint}')

  def _check_config(self, step: int, allow_config_change: bool, config: dict) -> None:
    recorded = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config
    changes = workdir_lib.result_changes(recorded, config)
    if changes and not allow_config_change:
      raise CheckpointMismatch(
          f'the checkpoint of step {step} in {self.directory} was written with another config: '
          f'{workdir_lib.describe_changes(changes)}. Rerun with that config, choose another '
          '--workdir, or pass --config.allow_config_change=true to continue it on purpose.')

  def _move_aside(self, steps: list[int]) -> None:
    if not steps:
      return
    if jax.process_index() == 0:
      root = epath.Path(self.directory)
      for step in steps:
        target = root / f'corrupt-{step}'
        n = 1
        while target.exists():
          target, n = root / f'corrupt-{step}.{n}', n + 1
        (root / str(step)).rename(target)
        logging.warning('Moved the unreadable checkpoint of step %d aside to %s; nothing was '
                        'deleted.', step, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('resnet_jax: unreadable checkpoints moved aside')
    self.manager.reload()

  def prune(self) -> None:
    """Deletes what the preservation policies would no longer keep.

    orbax applies them at each save, so the best step found by the eval after the last save has
    not been applied yet; this applies it, with the same policies.
    """
    infos = [_StepInfo(s) for s in self.all_steps()]
    keep = self.preservation.should_preserve(infos, context=None)
    for info, kept in zip(infos, keep):
      if not kept:
        self.manager.delete(info.step)

  def wait(self) -> None:
    """Waits for the save in flight; raises CheckpointError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      step, self._pending = self._pending, None
      self._fail(step if step is not None else -1, e)
    self.poll()

  def close(self) -> None:
    """Waits for the saves in flight and stops orbax's threads.

    A failed save was reported already (by `wait` or `poll`), or is being reported by the
    exception that unwinds the run, so an error here is not raised again.
    """
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.info('Closing the checkpoint manager: %s', str(e).splitlines()[0] if str(e) else e)
    finally:
      logging.getLogger('absl').removeFilter(self._errors)


@contextlib.contextmanager
def _quiet_abandoned_reads():
  """Keeps the reads that orbax abandons when one array of a damaged checkpoint fails from
  printing a traceback each (dozens per checkpoint): the failure is reported once, by the warning
  of `restore`. The filters stay in place after the restore, because the reads still in flight
  finish later, in tensorstore's threads; they drop only these reports, anything else still
  reaches the usual hook and log."""
  if not isinstance(sys.unraisablehook, _AbandonedReadsHook):
    sys.unraisablehook = _AbandonedReadsHook(sys.unraisablehook)
  asyncio_logger = logging.getLogger('asyncio')
  if not any(isinstance(f, _AbandonedOrbaxReads) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_AbandonedOrbaxReads())
  try:
    yield
  finally:
    gc.collect()  # The abandoned coroutines and tasks go now, not at some later step.


class _AbandonedReadsHook:
  """sys.unraisablehook, less the two reports of an abandoned read:
  * its coroutine (orbax's `_read_array_index_and_device_put`), collected unfinished: 'Exception
    ignored in: <coroutine object ...>';
  * tensorstore's callback for a read that finishes after orbax closed its event loop: a
    RuntimeError('Event loop is closed') from asyncio's call_soon_threadsafe, with no object."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable):
    if not (_orbax_coroutine(unraisable.object) or _late_callback(unraisable)):
      self.previous(unraisable)


def _orbax_coroutine(obj) -> bool:
  return inspect.iscoroutine(obj) and 'orbax' in obj.cr_code.co_filename


def _late_callback(unraisable) -> bool:
  frames = [frame.name for frame in traceback.extract_tb(unraisable.exc_traceback)]
  return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed'
          and 'call_soon_threadsafe' in frames)


class _AbandonedOrbaxReads(logging.Filter):
  """Drops asyncio's '<Task, Future or _GatheringFuture> exception was never retrieved' for an
  exception raised in orbax's code: the failed read again, reported when the task or the future
  that gathered the reads is collected."""

  def filter(self, record):
    if 'exception was never retrieved' not in record.getMessage() or not record.exc_info:
      return True
    return not _raised_in_orbax(record.exc_info[1])


def _raised_in_orbax(exc) -> bool:
  seen = set()  # A chain set by hand can loop; a logging filter must never hang.
  while exc is not None and id(exc) not in seen:
    # orbax re-raises the read's error as a plain Exception, from it.
    if any('orbax' in frame.filename for frame in traceback.extract_tb(exc.__traceback__)):
      return True
    seen.add(id(exc))
    exc = exc.__cause__ or exc.__context__
  return False
