"""train_and_evaluate: the one trainer that every config and every experiment runs through."""

import functools
import json
import logging
import os
import signal
import time
from typing import Iterator

import jax
import numpy as np

from resnet_jax import config_check, data, models, parallel
from resnet_jax.metrics import MetricWriter, Progress
from resnet_jax.train import optim, step as step_lib
from resnet_jax.train.checkpoint import Checkpointer
from resnet_jax.train.state import create_train_state


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


class _StopRequest:
  """Turns SIGTERM (preemption, `kill`, a scheduler's time limit) into a save-and-exit."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. a notebook worker): no handler, no harm.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning('SIGTERM received: saving a checkpoint at the end of this step, then exiting.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

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


def create_model(config, sync_batch_stats: bool):
  kwargs = dict(config.model)
  try:
    return models.create_model(
        kwargs.pop('family'), kwargs.pop('depth'),
        axis_name=parallel.AXIS if sync_batch_stats else None, **kwargs)
  except ValueError as e:
    raise config_check.ConfigError(f'config.model: {e}') from None


def evaluate(p_eval_step, state, config, par: parallel.DataParallel) -> dict:
  """Metrics over the whole eval split: every example exactly once (padded batches are masked)."""
  batches = data.create_eval_iterator(config.data, global_batch_size=config.eval_batch_size)
  total = None
  for batch in par.prefetch(batches, config.data.prefetch_to_device):
    m = p_eval_step(state, batch)
    total = m if total is None else total.merge(m)
  result = par.host_value(total)
  return {'eval/loss': result.loss.compute(), 'eval/accuracy': result.accuracy.compute(),
          'eval/top5_accuracy': result.top5_accuracy.compute(),
          'eval/num_examples': result.accuracy.count}


def _train_scalars(metrics, par) -> dict:
  m = par.host_value(metrics)
  return {'train/loss': m.loss.compute(), 'train/accuracy': m.accuracy.compute(),
          'train/top5_accuracy': m.top5_accuracy.compute()}


def train_and_evaluate(config, workdir: str, *, devices=None, train_iterator=None) -> dict:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final metrics.

  devices: the devices to run on (default: all of them). train_iterator: this process's batches,
  in place of the configured pipeline (tests use it to feed the same global batches to runs of
  different process counts).
  """
  if '://' not in workdir:  # Local paths: orbax's tensorstore writer needs them absolute.
    workdir = os.path.abspath(workdir)
  config_check.validate(config)
  info = data.dataset_info(config.data)
  config_check.validate_against_dataset(config, info)
  par = parallel.DataParallel(config.parallel.backend, devices)
  parallel.check_batch_size('batch_size', config.batch_size, par.num_devices)
  parallel.check_batch_size('eval_batch_size', config.eval_batch_size, par.num_devices)
  is_main = jax.process_index() == 0

  total_steps = optim.num_train_steps(config, info.num_train)
  schedule = optim.create_learning_rate_schedule(config, total_steps)
  tx = optim.create_optimizer(config, schedule)
  model = create_model(config, config.parallel.sync_batch_stats)
  state = par.init_replicated(
      functools.partial(create_train_state, model=model, tx=tx, image_shape=info.image_shape),
      jax.random.key_data(jax.random.key(config.seed)))

  if train_iterator is None:
    train_iterator = data.create_train_iterator(
        config.data, global_batch_size=config.batch_size, seed=config.seed)
  train_iterator = ConsumedIterator(train_iterator)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints,
                      keep_best=config.keep_best_checkpoint)
  restored_step, global_state = ckpt.restore(par.to_global(state), train_iterator)
  if restored_step is not None:
    state = par.to_backend(global_state)
    logging.info('Resumed from %s at step %d.', workdir, restored_step)
  start_step = int(restored_step or 0)
  summary_path = os.path.join(workdir, 'summary.json')
  if start_step >= total_steps and os.path.exists(summary_path):
    logging.info('%s has finished all %d steps already; its summary is in %s.', workdir,
                 total_steps, summary_path)
    with open(summary_path) as f:
      return json.load(f)
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  p_train_step = par.map(functools.partial(
      step_lib.train_step, label_smoothing=config.label_smoothing,
      sync_batch_stats=config.parallel.sync_batch_stats), donate_state=True)
  p_eval_step = par.map(step_lib.eval_step)

  writer = MetricWriter(workdir, enabled=is_main)
  progress = Progress(total_steps, config.batch_size, start_step)
  batches = par.prefetch(train_iterator.pull(), config.data.prefetch_to_device,
                         place=lambda item: (par.put_batch(item[0]), item[1]))
  train_metrics, eval_scalars, last_train = None, {}, {}
  started = time.perf_counter()
  step = start_step
  with _StopRequest() as stop:
    while step < total_steps:
      batch, data_state = next(batches)
      state, m = p_train_step(state, batch)
      train_iterator.consumed(data_state)
      train_metrics = m if train_metrics is None else train_metrics.merge(m)
      step += 1
      is_last = step == total_steps
      if step % config.log_every_steps == 0 or is_last:
        last_train = _train_scalars(train_metrics, par)
        lr = float(schedule(step - 1))
        writer.write(step, {**last_train, 'lr': lr})
        if is_main:
          logging.info(progress.line(step, last_train['train/loss'], lr))
        train_metrics = None
      eval_now = step % config.eval_every_steps == 0 or is_last
      if eval_now:
        eval_scalars = evaluate(p_eval_step, state, config, par)
        writer.write(step, eval_scalars)
        if is_main:
          logging.info('step %d: eval accuracy %.4f, loss %.4f over %d examples', step,
                       eval_scalars['eval/accuracy'], eval_scalars['eval/loss'],
                       eval_scalars['eval/num_examples'])
      stopping = stop.check(step, config.log_every_steps)
      if step % config.checkpoint_every_steps == 0 or is_last or stopping:
        ckpt.save(step, par.to_global(state), train_iterator,
                  {k: float(v) for k, v in eval_scalars.items()} if eval_now else None)
      if stopping:
        logging.warning('Stopped at step %d on request; rerun the same command to resume.', step)
        break
  # Stopped early (SIGTERM): the checkpoint is what matters, so no extra eval or summary
  # delays the exit within a preemption's grace period.
  if not eval_scalars and step >= total_steps:
    # Resumed at the very end, after the last eval: report the test error.
    eval_scalars = evaluate(p_eval_step, state, config, par)
  ckpt.wait()
  ckpt.close()
  writer.close()
  if step < total_steps:
    return {'step': step, 'stopped': True, **last_train}

  summary = {'step': step, 'wall_s': time.perf_counter() - started, **last_train,
             **{k: float(v) for k, v in eval_scalars.items()}}
  if is_main and 'eval/accuracy' in summary:
    logging.info('Final (step %d): train error %.2f%%, test error %.2f%% (%s, %d examples), %.0f s.',
                 step, 100 * (1 - summary.get('train/accuracy', float('nan'))),
                 100 * (1 - summary['eval/accuracy']), config.data.eval_split,
                 summary['eval/num_examples'], summary['wall_s'])
    with open(summary_path, 'w') as f:
      json.dump(summary, f, indent=2)
  return summary
