"""The optimiser and learning-rate schedule, built from optax pieces named by the config."""

from typing import NamedTuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from resnet_jax.errors import UserError

OPTIMIZERS = ('momentum', 'nesterov')
SCHEDULES = ('piecewise', 'cosine', 'constant')
WARMUP_MODES = ('linear', 'constant')
WARMUP_RULES = ('steps', 'train_error')
WEIGHT_DECAY_TYPES = ('l2', 'decoupled')


def num_train_steps(config, num_train_examples: int | None) -> int:
  """num_epochs (if > 0) wins over num_train_steps, as in the Flax examples.

  num_train_examples: the size of the training split; None where it is not known."""
  if config.num_epochs > 0:
    if num_train_examples is None:  # A dataset outside the table, not opened.
      raise UserError(f'config.num_epochs={config.num_epochs} needs the size of the training '
                      'split; give --config.num_train_steps=N --config.num_epochs=0 instead.')
    return max(1, int(config.num_epochs * num_train_examples // config.batch_size))
  return int(config.num_train_steps)


def base_learning_rate(config) -> float:
  scale = config.batch_size / 256 if config.scale_lr_by_batch else 1.0
  return config.learning_rate * scale


def create_learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  """Warm-up followed by the main schedule; boundaries are absolute step numbers.

  The 'constant' warm-up holds warmup_lr, as He et al. 2015 (Sec. 4.2) do for ResNet-110 and
  He et al. 2016 for all CIFAR nets: lr 0.01 for the first 400 iterations, then 0.1. `config`
  must be finalised (resnet_jax.recipes.finalize), so the warm-up is the final config's.

  With warmup_rule 'train_error' the warm-up has no fixed end: this is the main schedule alone,
  at absolute steps, and `warmup_until_error` (in the optimiser) holds warmup_lr until it ends.
  """
  for key in ('warmup_steps', 'warmup_mode'):
    if config[key] is None:
      # Deriving it here would be a second place that does so; the trainer finalises once.
      raise ValueError(f'config.{key} is None: it is derived from the recipe by '
                       'resnet_jax.recipes.finalize(config), which must run first.')
  lr = base_learning_rate(config)
  # The main schedule starts where a fixed warm-up ends; one that ends on the training error
  # runs over it, from step 0.
  warmup = 0 if config.warmup_rule == 'train_error' else config.warmup_steps
  if config.lr_schedule == 'piecewise':
    # join_schedules restarts the count at the boundary, so shift the absolute boundaries.
    main = optax.piecewise_constant_schedule(
        lr, {int(b) - warmup: config.lr_decay_factor for b in config.lr_boundaries})
  elif config.lr_schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps=max(1, total_steps - warmup))
  else:
    main = optax.constant_schedule(lr)
  if warmup == 0:
    return main
  if config.warmup_mode == 'constant':
    ramp = optax.constant_schedule(config.warmup_lr)
  else:
    ramp = optax.linear_schedule(0.0, lr, warmup)
  return optax.join_schedules([ramp, main], boundaries=[warmup])


def decay_mask(params):
  """True for the weights that weight decay applies to: conv and dense kernels only.

  BN scales and biases and dense biases are left out (Goyal et al. 2017; timm's default), so a
  zero-initialised BN scale is not pulled back towards zero while it learns.
  """
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({k: k[-1] == 'kernel' for k in flat})


class WarmupState(NamedTuple):
  count: jax.Array   # updates made
  error: jax.Array   # exponential moving average of the training error, before bias correction
  done: jax.Array    # whether the warm-up has ended (it never starts again)


def warmup_until_error(schedule: optax.Schedule, warmup_lr: float, below: float, window: int,
                       max_steps: int) -> optax.GradientTransformationExtraArgs:
  """The last link of an optimiser whose lr follows `schedule`: scales its updates so that the
  lr is warmup_lr until the running training error is below `below`, or max_steps updates were
  made, whichever comes first; from then on the updates pass unchanged.

  He et al. 2015 (Sec. 4.2): "we use 0.01 to warm up the training until the training error is
  below 80% (about 400 iterations), and then go back to 0.1". Each update takes the step's
  training error as the extra argument `train_error` (a fraction, of the global batch, before the
  update); the running error is its exponential moving average over about `window` steps, bias
  corrected as Adam's moments are, so the first steps are not taken for low-error ones. The state
  is part of the optimiser state, so a checkpoint holds it and a resumed run continues it
  exactly. Both update rules here (L2 and decoupled) multiply the lr last, so scaling the update
  is setting the lr.
  """
  decay = 1.0 - 1.0 / window

  def init(params):
    del params
    return WarmupState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32),
                       jnp.zeros([], jnp.bool_))

  def update(updates, state, params=None, *, train_error=None, **extra):
    del params, extra
    if train_error is None:
      raise ValueError("warmup_rule='train_error' needs each update's train_error")
    count = state.count + 1
    error = decay * state.error + (1.0 - decay) * jnp.asarray(train_error, jnp.float32)
    running = error / (1.0 - decay ** count.astype(jnp.float32))
    done = state.done | (running < below) | (state.count >= max_steps)
    lr = schedule(state.count)
    scale = jnp.where(done | (lr == 0), 1.0, warmup_lr / jnp.where(lr == 0, 1.0, lr))
    updates = jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)
    return updates, WarmupState(count, error, done)

  return optax.GradientTransformationExtraArgs(init, update)


def create_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  mask = None if config.decay_bn_and_bias else decay_mask
  nesterov = config.optimizer == 'nesterov'
  if config.weight_decay_type == 'l2':
    # L2 regularisation as in the papers: wd * w joins the gradient before momentum.
    links = [optax.add_decayed_weights(config.weight_decay, mask),
             optax.sgd(schedule, momentum=config.momentum, nesterov=nesterov)]
  else:
    # Decoupled (Loshchilov & Hutter 2019): the decay bypasses momentum and follows the lr.
    links = [optax.trace(decay=config.momentum, nesterov=nesterov),
             optax.add_decayed_weights(config.weight_decay, mask),
             optax.scale_by_learning_rate(schedule)]
  if config.warmup_rule == 'train_error':
    links.append(warmup_until_error(schedule, config.warmup_lr, config.warmup_error,
                                    config.warmup_error_window, config.warmup_steps))
  return optax.chain(*links)


def warmup_done(opt_state):
  """The optimiser state's `done` of warmup_until_error (an array), or None without that link."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, 'done')
  return found[0][1] if found else None


def learning_rate(config, schedule: optax.Schedule, step: int, done: bool | None) -> float:
  """The lr of the update that made `step` (1-based); done: warmup_done after it, on the host."""
  if config.warmup_rule == 'train_error' and not done:
    return float(config.warmup_lr)
  return float(schedule(step - 1))
