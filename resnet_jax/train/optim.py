"""The optimiser and learning-rate schedule, built from optax pieces named by the config."""

import flax.traverse_util
import optax

from resnet_jax.errors import UserError

OPTIMIZERS = ('momentum', 'nesterov')
SCHEDULES = ('piecewise', 'cosine', 'constant')
WARMUP_MODES = ('linear', 'constant')
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
  """
  for key in ('warmup_steps', 'warmup_mode'):
    if config[key] is None:
      # Deriving it here would be a second place that does so; the trainer finalises once.
      raise ValueError(f'config.{key} is None: it is derived from the recipe by '
                       'resnet_jax.recipes.finalize(config), which must run first.')
  lr = base_learning_rate(config)
  warmup = config.warmup_steps
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


def create_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  mask = None if config.decay_bn_and_bias else decay_mask
  nesterov = config.optimizer == 'nesterov'
  if config.weight_decay_type == 'l2':
    # L2 regularisation as in the papers: wd * w joins the gradient before momentum.
    return optax.chain(optax.add_decayed_weights(config.weight_decay, mask),
                       optax.sgd(schedule, momentum=config.momentum, nesterov=nesterov))
  # Decoupled (Loshchilov & Hutter 2019): the decay bypasses momentum and follows the lr.
  return optax.chain(optax.trace(decay=config.momentum, nesterov=nesterov),
                     optax.add_decayed_weights(config.weight_decay, mask),
                     optax.scale_by_learning_rate(schedule))
