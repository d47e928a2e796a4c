"""The pure train and eval steps, written once with per-device semantics on the axis `AXIS`.

Each function sees one device's slice of the global batch. Every cross-device reduction is explicit
here: gradients are averaged with `lax.pmean`, metrics (clu.metrics) are summed
with `lax.psum`, and BN statistics are synced inside the model's `nn.BatchNorm`
(its `axis_name` is `AXIS` when `config.parallel.sync_batch_stats` is on). `resnet_jax.parallel`
maps these functions over the devices with shard_map or pmap.
"""

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics
from jax import lax

from resnet_jax.parallel import AXIS


@flax.struct.dataclass
class FirstStep(metrics.Metric):
  """The first step at which a condition held (NO_STEP if never): min-merged, over steps and devices."""
  step: jnp.ndarray

  NO_STEP = jnp.iinfo(jnp.int32).max

  @classmethod
  def empty(cls):
    return cls(step=jnp.array(cls.NO_STEP, jnp.int32))

  @classmethod
  def from_model_output(cls, step, condition, **_):
    return cls(step=jnp.where(condition, step, cls.NO_STEP).astype(jnp.int32))

  def merge(self, other):
    return type(self)(step=jnp.minimum(self.step, other.step))

  def reduce_over_devices(self):
    return type(self)(step=lax.pmin(self.step, AXIS))

  def compute(self):
    return self.step


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('top1')
  top5_accuracy: metrics.Average.from_output('top5')
  # The fraction of steps whose loss or gradient was not finite, and the first such step.
  nonfinite: metrics.Average
  first_nonfinite: FirstStep


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('top1')
  top5_accuracy: metrics.Average.from_output('top5')


def psum_metrics(collection):
  """Merges a metrics collection over the devices.

  An `Average` (a total and a count) merges by a sum, so a `psum` is its merge; other metrics say
  how with `reduce_over_devices`. Both results are invariant over the axis, which shard_map's
  replication check needs (clu's gather_from_model_output is an all_gather, whose result JAX
  treats as varying).
  """
  return collection.replace(**{
      name: (m.reduce_over_devices() if hasattr(m, 'reduce_over_devices')
             else jax.tree.map(lambda x: lax.psum(x, AXIS), m))
      for name, m in ((f.name, getattr(collection, f.name))
                      for f in dataclasses.fields(collection))})


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy in float32, whatever the compute dtype."""
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def correct_topk(logits, labels, k: int):
  k = min(k, logits.shape[-1])
  _, top = lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def all_finite(*trees) -> jax.Array:
  """Whether every element of every leaf of `trees` is finite, as one reduction.

  A check per leaf compiled to a small reduction kernel per leaf (ResNet-20: about 250, a
  quarter of the step's kernels). Concatenated, it is one copy of the leaves (float32: 2 MB for
  ResNet-20, 200 MB for ResNet-50) and one reduction: XLA plans the same memory for the step,
  and the step compiles faster (ResNet-50 5.2 s against 6.7 s, docs/benchmarks.md).
  """
  leaves = [x.ravel().astype(jnp.float32) for tree in trees for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.isfinite(jnp.concatenate(leaves))) if leaves else jnp.array(True)


def model_input(images, mean=None, std=None):
  """What the model reads of a batch's images.

  The input pipelines send uint8 pixels, a quarter of float32's bytes from the host to the
  device, and the normalisation (image - mean) / std per channel happens here, on the device, in
  float32 as augment.Normalize computes it on the host. Float images are taken as normalised
  already (an iterator of one's own, the benchmarks' synthetic batches) and pass unchanged.
  """
  if images.dtype != jnp.uint8:
    return images
  if mean is None or std is None:
    raise ValueError('uint8 images need the per-channel mean and std to be normalised with')
  return ((images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32))
          / jnp.asarray(std, jnp.float32))


def train_step(state, batch, *, label_smoothing: float = 0.0, sync_batch_stats: bool = True,
               skip_nonfinite: bool = False, image_mean=None, image_std=None):
  """One SGD step on this device's slice of the batch; returns the new state and the metrics.

  uint8 images are normalised with image_mean and image_std (config.data.mean, .std) first
  (`model_input`).

  A step whose loss or gradient is not finite is counted in the metrics, which the loop reads at
  its log, eval and save steps (no extra host sync per step) to stop before a non-finite state is
  saved. With `skip_nonfinite`, such a step leaves the parameters, optimiser state and BN
  statistics as they were instead; optax.apply_if_finite would guard only the first two.
  """
  # Stochastic depth draws differ per device and per step, and resume reproduces them exactly.
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS))
  images = model_input(batch['image'], image_mean, image_std)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'], rngs={'dropout': rng})
    loss = cross_entropy(logits, batch['label'], label_smoothing)
    return loss.mean(), (loss, logits, updates['batch_stats'])

  # Differentiate this device's loss with respect to a per-device copy of the parameters. Under
  # shard_map, the gradient with respect to the replicated parameters themselves would already be
  # summed over the devices (the transpose of replicated -> varying is a psum); marking them
  # varying keeps the gradient local, as under pmap, so the one pmean below is the reduction.
  local_params = lax.pcast(state.params, AXIS, to='varying')
  grads, (loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(local_params)
  # Data parallelism: the mean of the per-device gradients is the gradient of the global batch.
  grads = lax.pmean(grads, AXIS)
  if not sync_batch_stats:
    # Per-device BN normalised with this device's statistics; average the running estimates so
    # the replicas stay identical (as flax's ImageNet example does before each eval).
    batch_stats = lax.pmean(batch_stats, AXIS)
  # The batch's training error, for an optimiser that ends its warm-up on it
  # (optim.warmup_until_error); an optimiser without that link ignores it, and XLA drops it.
  train_error = 1.0 - lax.pmean(correct_topk(logits, batch['label'], 1).mean(), AXIS)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                       train_error=train_error)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, batch_stats=batch_stats)
  # The loss, the gradients and what the update made of the weights and BN statistics (an lr
  # too large overflows them even from finite gradients). After the pmean all of these, and so
  # the flag, are the same on every device.
  finite = (jnp.isfinite(lax.pmean(loss.mean(), AXIS))
            & all_finite(grads, new_state.params, new_state.batch_stats))
  if skip_nonfinite:
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    # The step still counts, so the schedule, the data and the RNG stay on the run's timeline.
    new_state = kept.replace(step=new_state.step)
  # A non-finite step is left out of the averages (its count says it happened).
  keep = jnp.broadcast_to(finite, loss.shape)
  step_metrics = psum_metrics(TrainMetrics.empty().replace(
      loss=metrics.Average.from_model_output(loss, mask=keep),
      accuracy=metrics.Average.from_model_output(correct_topk(logits, batch['label'], 1), mask=keep),
      top5_accuracy=metrics.Average.from_model_output(correct_topk(logits, batch['label'], 5),
                                                      mask=keep),
      nonfinite=metrics.Average.from_model_output((~finite).astype(jnp.float32)),
      first_nonfinite=FirstStep.from_model_output(state.step + 1, ~finite)))
  return new_state, step_metrics


def eval_step(state, batch, *, image_mean=None, image_std=None):
  """Metrics of one padded eval batch; padding (mask False) counts for nothing. uint8 images are
  normalised as in `train_step`."""
  logits = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats},
                          model_input(batch['image'], image_mean, image_std), train=False)
  return psum_metrics(EvalMetrics.single_from_model_output(
      mask=batch['mask'], loss=cross_entropy(logits, batch['label']),
      top1=correct_topk(logits, batch['label'], 1), top5=correct_topk(logits, batch['label'], 5)))


def normalised(step_fn, data_config, **settings):
  """`step_fn` (train_step or eval_step) with the normalisation of a final config.data and
  `settings` bound."""
  return functools.partial(step_fn, image_mean=tuple(data_config.mean),
                           image_std=tuple(data_config.std), **settings)


def configured_train_step(config):
  """`train_step` with the settings of a (finalised) run config bound."""
  return normalised(train_step, config.data, label_smoothing=config.label_smoothing,
                    sync_batch_stats=config.parallel.sync_batch_stats,
                    skip_nonfinite=config.skip_nonfinite_updates)


def configured_eval_step(config):
  """`eval_step` with the normalisation of a run config bound."""
  return normalised(eval_step, config.data)
