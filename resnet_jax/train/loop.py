"""train_and_evaluate: the one trainer that every config and every experiment runs through."""

import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator

import flax
import jax
import numpy as np

from resnet_jax import data, parallel
from resnet_jax.errors import RunError, UserError
from resnet_jax.metrics import MetricWriter, Progress, best_eval_step, read_metrics
from resnet_jax.train import init_from, optim, run, step as step_lib
from resnet_jax.train import workdir as workdir_lib
from resnet_jax.train.checkpoint import Checkpointer


class ConsumedIterator:
  """The train iterator as the steps have consumed it.

  Batches are pulled ahead of their step (device prefetch), so the wrapped iterator's own state
  runs ahead of training. This records the state after each batch that a step actually used; that
  is what a checkpoint must hold for a resumed run to see the same next batch. It offers the
  get_state / set_state / start_prefetch that grain's orbax handler calls.
  """

  def __init__(self, iterator):
    self._iterator = iterator
    self._state = iterator.get_state()

  def pull(self) -> Iterator[tuple[dict, bytes]]:
    for batch in self._iterator:
      yield batch, self._iterator.get_state()

  def consumed(self, state) -> None:
    self._state = state

  def get_state(self):
    return self._state

  def set_state(self, state) -> None:
    self._iterator.set_state(state)
    self._state = state

  def start_prefetch(self) -> None:
    if hasattr(self._iterator, 'start_prefetch'):
      self._iterator.start_prefetch()


class StopRequest:
  """Turns SIGTERM (preemption, `kill`, a scheduler's limit) and SIGINT (Ctrl-C) into save-and-exit.

  The first signal asks the loop to save a checkpoint at the end of the step and stop; a second
  one exits at once, without saving. `signum` is the first signal, for the exit code (128 + it,
  as schedulers expect).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def __enter__(self):
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. a notebook worker): no handler, no harm.
        pass
    return self

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.signum is not None:
      print(f'{name} received again: exiting now, without saving.', file=sys.stderr, flush=True)
      os._exit(128 + signum)
    logging.warning('%s received: saving a checkpoint at the end of this step, then exiting '
                    '(send it again to exit at once, without saving).', name)
    self.signum = signum

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)

  def check(self, step: int, every: int) -> bool:
    """Whether to stop after this step.

    With several processes, all stop together if any was signalled (a lone save would leave the
    others waiting in a collective); they agree every `every` steps, to keep the extra collective
    off most steps.
    """
    if jax.process_count() == 1:
      return self.requested
    if step % every:
      return False
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


class NonFiniteLoss(RunError):
  """The loss or the gradient became NaN or infinite."""


def evaluate_split(p_eval_step, state, data_config, batch_size: int,
                   par: parallel.DataParallel) -> dict:
  """Metrics over the whole data_config.eval_split: every example exactly once (the padding of
  the last batch is masked). p_eval_step: the eval step mapped by `par`."""
  batches = data.create_eval_iterator(data_config, global_batch_size=batch_size)
  total = None
  for batch in par.prefetch(batches, data_config.prefetch_to_device):
    m = p_eval_step(state, batch)
    total = m if total is None else total.merge(m)
  result = par.host_value(total)
  return {'eval/loss': result.loss.compute(), 'eval/accuracy': result.accuracy.compute(),
          'eval/top5_accuracy': result.top5_accuracy.compute(),
          'eval/num_examples': result.accuracy.count}


@flax.struct.dataclass
class EvalState:
  """What step.eval_step reads of a train state: weights without an optimiser."""
  params: Any
  batch_stats: Any
  apply_fn: Callable = flax.struct.field(pytree_node=False)


def evaluate_weights(weights, split: str, batch_size: int, devices=None) -> dict:
  """evaluate_split of `weights` (resnet_jax.train.trained.Weights) on `split` of its dataset,
  on all (or `devices`) devices, as Python numbers. A split that cannot be read is a DataError,
  a net of another class count a UserError."""
  data_config = weights.data.copy_and_resolve_references()
  data_config.eval_split = split
  source = data.open_source(data_config, split)
  if source.num_classes != weights.model.num_classes:
    raise UserError(f'the net has {weights.model.num_classes} classes and '
                    f'{data_config.dataset!r} has {source.num_classes}: it was not trained on '
                    'this dataset.')
  par = parallel.DataParallel('shard_map', devices)
  parallel.check_batch_size('eval_batch_size', batch_size, par.num_devices)
  state = par.replicate(EvalState(weights.variables['params'],
                                  weights.variables.get('batch_stats', {}), weights.model.apply))
  p_eval_step = par.map(step_lib.normalised(step_lib.eval_step, data_config))
  result = evaluate_split(p_eval_step, state, data_config, batch_size, par)
  return {k: float(v) if k != 'eval/num_examples' else int(v) for k, v in result.items()}


def _device_data(config, par: parallel.DataParallel, train_step, start_step: int):
  """The device data path: the train step on the split held by the devices, and the stream of
  (record indices, None) for the steps from `start_step` (None: no iterator state to record)."""
  split = data.device.load_split(config.data, 'train_split')
  dataset = par.replicate(split)
  stream = data.device.Stream(len(split['label']), global_batch_size=config.batch_size,
                              seed=config.seed)
  mapped = par.map(data.device.gathered(train_step, config.data, config.seed), donate_state=True,
                   replicated_args=1)
  return (lambda state, indices: mapped(state, indices, dataset),
          ((indices, None) for indices in stream.from_step(start_step)))


def _train_scalars(metrics, par, steps: int) -> dict:
  m = par.host_value(metrics)
  return {'train/loss': m.loss.compute(), 'train/accuracy': m.accuracy.compute(),
          'train/top5_accuracy': m.top5_accuracy.compute(),
          # How many steps this record averages (fewer in the first record of a run resumed from
          # a checkpoint that holds no train window).
          'train/steps': steps,
          'train/nonfinite_steps': int(round(float(m.nonfinite.compute()) * steps)),
          'first_nonfinite_step': int(m.first_nonfinite.compute())}


def _saved_window(window, par, steps: int) -> dict:
  """The train metrics summed since the last log step, as JSON for a checkpoint: a checkpoint
  off a log step (a signal, checkpoint_every_steps) would otherwise lose them, and the run
  resumed there would log averages over fewer steps than an uninterrupted one."""
  sums = {} if window is None else flax.serialization.to_state_dict(par.host_value(window))
  return {'steps': steps, 'sums': jax.tree.map(lambda x: np.asarray(x).item(), sums)}


def _restored_window(saved: dict | None, par):
  """(window, steps) from _saved_window's record, on the devices as the train step returns it."""
  if not saved or not saved['steps']:
    return None, 0
  empty = step_lib.TrainMetrics.empty()
  sums = jax.tree.map(lambda like, x: np.asarray(x, like.dtype),
                      flax.serialization.to_state_dict(empty), saved['sums'])
  return par.replicate(flax.serialization.from_state_dict(empty, sums)), saved['steps']


def _train_record(workdir: str, step: int) -> dict:
  """The train scalars logged at `step`, or {}: what the summary reports for a run killed after
  its last checkpoint and before its summary, which resumes with no step left to train."""
  records = [r for r in read_metrics(workdir) if r['step'] == step and 'train/accuracy' in r]
  return {k: v for k, v in records[-1].items() if k.startswith('train/')} if records else {}


def train_and_evaluate(config, workdir: str, *, devices=None, train_iterator=None) -> dict:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final metrics.

  config: a run config, or the run.Prepared of one (a command line that needed the final config
  first). devices: the devices to run on (default: all of them). train_iterator: this process's
  batches, in place of the configured grain pipeline (tests use it to feed the same global
  batches to runs of different process counts).

  A run stopped by SIGTERM or SIGINT returns {'stopped': True, 'signal': signum, ...} after
  saving. Bad input raises a resnet_jax.errors.UserError and a failed run a RunError, each with a
  one-line message, before anything in the workdir is changed (a failed run keeps every
  checkpoint it saved).
  """
  if workdir_lib.is_local(workdir):  # orbax's tensorstore writer needs absolute paths.
    workdir = os.path.abspath(workdir)
  # The derived keys (warm-up, eval interval, data statistics) from the final config, overrides
  # included; this config is what runs, what config.json records, and what a rerun is compared
  # with.
  prepared = config if isinstance(config, run.Prepared) else run.prepare(config)
  is_main = jax.process_index() == 0
  workdir_lib.check_not_results(workdir)  # Before the lock file or a probe is made there.
  if is_main:
    workdir_lib.check_writable(workdir)
  with StopRequest() as stop, workdir_lib.lock(workdir, enabled=is_main):
    par = parallel.DataParallel(prepared.config.parallel.backend, devices)
    workdir_lib.check_same_run(workdir, prepared.config)
    built = run.build(prepared, par, workdir)
    # Fine-tuning: a fresh run's first weights from config.init_from; a resumed run keeps its own.
    state = init_from.initialize(built.config, workdir, built.state, built.model, par)
    if built.config.data.pipeline == 'device':
      # No iterator: each step's batch is a function of (seed, step) (_device_data).
      if train_iterator is not None:
        raise ValueError("train_iterator feeds the grain path; config.data.pipeline is 'device'")
    else:
      if train_iterator is None:
        train_iterator = data.create_train_iterator(
            built.config.data, global_batch_size=built.config.batch_size, seed=built.config.seed)
      train_iterator = ConsumedIterator(train_iterator)
    ckpt = Checkpointer(os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR), keep=built.config.keep_checkpoints,
                        keep_best=built.config.keep_best_checkpoint)
    try:
      return _loop(_Run(built, workdir, par, ckpt, train_iterator, stop, is_main), state)
    finally:
      ckpt.close()


@dataclasses.dataclass
class _Run:
  """What the training loop works with, besides the state it updates."""
  built: run.Built
  workdir: str
  par: parallel.DataParallel
  ckpt: Checkpointer
  train_iterator: ConsumedIterator | None  # None on the device data path.
  stop: StopRequest
  is_main: bool


def _loop(r: _Run, state) -> dict:
  config, workdir, par, ckpt = r.built.config, r.workdir, r.par, r.ckpt
  total_steps, train_iterator, is_main = r.built.total_steps, r.train_iterator, r.is_main
  record = workdir_lib.as_dict(config)
  restored_step, global_state, saved_window = ckpt.restore(
      par.to_global(state), train_iterator, record, config.allow_config_change)
  if restored_step is not None:
    state = par.to_backend(global_state)
    logging.info('Resumed from %s at step %d.', workdir, restored_step)
  start_step = int(restored_step or 0)
  summary_path = os.path.join(workdir, workdir_lib.SUMMARY_FILE)
  if start_step >= total_steps and os.path.exists(summary_path):
    logging.info('%s has finished all %d steps already; its summary is in %s.', workdir,
                 total_steps, summary_path)
    with open(summary_path) as f:
      return json.load(f)
  if is_main:
    workdir_lib.record_config(workdir, config, restored_step)
  logged = [m for m in read_metrics(workdir) if m['step'] <= start_step]
  ckpt.best.best_step, best_accuracy = best_eval_step(logged, set(ckpt.all_steps()))

  train_step = step_lib.configured_train_step(config)
  if train_iterator is None:
    p_train_step, items = _device_data(config, par, train_step, start_step)
  else:
    p_train_step = par.map(train_step, donate_state=True)
    items = train_iterator.pull()
  p_eval_step = par.map(step_lib.configured_eval_step(config))
  evaluate = lambda state: evaluate_split(p_eval_step, state, config.data,
                                          config.eval_batch_size, par)

  writer = MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  progress = Progress(total_steps, config.batch_size, start_step)
  batches = par.prefetch(items, config.data.prefetch_to_device,
                         place=lambda item: (par.put_batch(item[0]), item[1]))
  window, window_steps = _restored_window(saved_window, par)
  nonfinite_steps = sum(m.get('train/nonfinite_steps', 0) for m in logged)
  eval_scalars, last_train = {}, _train_record(workdir, start_step)
  started = time.perf_counter()
  step = start_step
  try:
    while step < total_steps:
      batch, data_state = next(batches)
      state, m = p_train_step(state, batch)
      if train_iterator is not None:
        train_iterator.consumed(data_state)
      window = m if window is None else window.merge(m)
      window_steps += 1
      step += 1
      if step == start_step + 1:
        progress.restart(step)  # The first step compiled: keep that out of the speed and ETA.
      ckpt.poll()
      is_last = step == total_steps
      log_now = step % config.log_every_steps == 0 or is_last
      eval_now = step % config.eval_every_steps == 0 or is_last
      stopping = r.stop.check(step, config.log_every_steps)
      # An eval step saves too, so that the best checkpoint is the one that was evaluated.
      save_now = (step % config.checkpoint_every_steps == 0 or is_last or stopping
                  or (eval_now and config.keep_best_checkpoint))
      if log_now or eval_now or save_now:
        # The loop's only reads of the device: at these steps, never per step.
        scalars = _train_scalars(window, par, window_steps)
        first_bad = scalars.pop('first_nonfinite_step')
        if scalars['train/nonfinite_steps'] and not config.skip_nonfinite_updates:
          ckpt.wait()
          saved = ckpt.all_steps()
          raise NonFiniteLoss(
              f'the loss became non-finite (NaN or inf) at step {first_bad}; stopped at step '
              f'{step} without saving it. ' + (
                  f'The last good checkpoint is step {max(saved)} in {workdir}. '
                  if saved else 'No checkpoint had been saved yet. ') +
              'Fix the cause (e.g. lower config.learning_rate) or set '
              '--config.skip_nonfinite_updates=true to skip such steps, and rerun with '
              '--config.allow_config_change=true to resume.')
        if log_now:
          nonfinite_steps += scalars['train/nonfinite_steps']
          last_train = scalars
          done = optim.warmup_done(state.opt_state)
          lr = optim.learning_rate(config, r.built.schedule, step,
                                   None if done is None else bool(par.host_value(done)))
          writer.write(step, {**scalars, 'lr': lr})
          if is_main:
            logging.info(progress.line(step, scalars['train/loss'], lr))
          window, window_steps = None, 0
      if save_now:
        # Saved before the eval, so an eval that fails loses no training.
        ckpt.save(step, par.to_global(state), train_iterator, record,
                  _saved_window(window, par, window_steps))
      if eval_now:
        eval_scalars = evaluate(state)
        writer.write(step, eval_scalars)
        if is_main:
          logging.info('step %d: eval accuracy %.4f, loss %.4f over %d examples', step,
                       eval_scalars['eval/accuracy'], eval_scalars['eval/loss'],
                       eval_scalars['eval/num_examples'])
        if save_now and eval_scalars['eval/accuracy'] > best_accuracy:
          ckpt.best.best_step, best_accuracy = step, float(eval_scalars['eval/accuracy'])
      if stopping:
        logging.warning('Stopped at step %d on request; rerun the same command to resume.', step)
        break
    # Stopped early (a signal): the checkpoint is what matters, so no extra eval or summary
    # delays the exit within a preemption's grace period.
    if not eval_scalars and step >= total_steps:
      # Resumed at the very end, after the last eval: report the test error.
      eval_scalars = evaluate(state)
    ckpt.wait()
    if step >= total_steps:
      ckpt.prune()  # The last eval may have made an earlier best checkpoint redundant.
  finally:
    writer.close()
  if step < total_steps:
    return {'step': step, 'stopped': True, 'signal': r.stop.signum, **last_train}

  summary = {'step': step, 'wall_s': time.perf_counter() - started, **last_train,
             **{k: float(v) for k, v in eval_scalars.items()}}
  if config.skip_nonfinite_updates:
    summary['nonfinite_steps'] = nonfinite_steps
  if is_main and 'eval/accuracy' in summary:
    logging.info('Final (step %d): train error %.2f%%, test error %.2f%% (%s, %d examples), %.0f s.',
                 step, 100 * (1 - summary.get('train/accuracy', float('nan'))),
                 100 * (1 - summary['eval/accuracy']), config.data.eval_split,
                 summary['eval/num_examples'], summary['wall_s'])
    workdir_lib.write_atomic(summary_path, json.dumps(summary, indent=2))
  return summary
