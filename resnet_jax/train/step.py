"""The pure train and eval steps, written once with per-device semantics on the axis `AXIS`.

Each function sees one device's slice of the global batch. Every cross-device reduction is explicit
here: gradients are averaged with `lax.pmean`, metrics (clu.metrics) are summed
with `lax.psum`, and BN statistics are synced inside the model's `nn.BatchNorm`
(its `axis_name` is `AXIS` when `config.parallel.sync_batch_stats` is on). `resnet_jax.parallel`
maps these functions over the devices with shard_map or pmap.
"""

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics
from jax import lax

from resnet_jax.parallel import AXIS


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('top1')
  top5_accuracy: metrics.Average.from_output('top5')


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('top1')
  top5_accuracy: metrics.Average.from_output('top5')


def psum_metrics(collection):
  """Merges a metrics collection over the devices.

  Every metric here is an `Average` (a total and a count), whose merge is a sum, so a `psum` is
  the merge; it is also invariant over the axis, which shard_map's replication check needs
  (clu's gather_from_model_output is an all_gather, whose result JAX treats as varying).
  """
  return jax.tree.map(lambda x: lax.psum(x, AXIS), collection)


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


def train_step(state, batch, *, label_smoothing: float = 0.0, sync_batch_stats: bool = True):
  """One SGD step on this device's slice of the batch; returns the new state and the metrics."""
  # Stochastic depth draws differ per device and per step, and resume reproduces them exactly.
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS))

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
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
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  step_metrics = psum_metrics(TrainMetrics.single_from_model_output(
      loss=loss, top1=correct_topk(logits, batch['label'], 1),
      top5=correct_topk(logits, batch['label'], 5)))
  return new_state, step_metrics


def eval_step(state, batch):
  """Metrics of one padded eval batch; padding (mask False) counts for nothing."""
  logits = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats},
                          batch['image'], train=False)
  return psum_metrics(EvalMetrics.single_from_model_output(
      mask=batch['mask'], loss=cross_entropy(logits, batch['label']),
      top1=correct_topk(logits, batch['label'], 1), top5=correct_topk(logits, batch['label'], 5)))
