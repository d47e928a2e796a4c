"""Validates a config before anything compiles, so a typo costs a message, not a traceback.

Every message names the key, the value and what is allowed.
"""

from resnet_jax import parallel
from resnet_jax.train import optim


class ConfigError(ValueError):
  """A config value that cannot work."""


def _choice(config, key: str, allowed) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  if value not in allowed:
    raise ConfigError(f'config.{key}={value!r} is not allowed; choose one of {tuple(allowed)}.')


def _check(ok: bool, key: str, value, requirement: str) -> None:
  if not ok:
    raise ConfigError(f'config.{key}={value!r}: {requirement}.')


def validate(config) -> None:
  """Raises ConfigError for the first value that is out of range."""
  _choice(config, 'parallel.backend', parallel.BACKENDS)
  _choice(config, 'optimizer', optim.OPTIMIZERS)
  _choice(config, 'weight_decay_type', optim.WEIGHT_DECAY_TYPES)
  _choice(config, 'lr_schedule', optim.SCHEDULES)
  _choice(config, 'warmup_mode', optim.WARMUP_MODES)
  _choice(config, 'distributed.initialize', ('auto', 'on', 'off'))
  for key in ('batch_size', 'eval_batch_size', 'log_every_steps', 'eval_every_steps',
              'checkpoint_every_steps', 'keep_checkpoints'):
    _check(isinstance(config[key], int) and config[key] > 0, key, config[key],
           'must be a positive integer')
  if config.num_epochs <= 0:
    _check(config.num_train_steps > 0, 'num_train_steps', config.num_train_steps,
           'must be positive (or set config.num_epochs > 0)')
  _check(config.learning_rate >= 0, 'learning_rate', config.learning_rate, 'must be >= 0')
  _check(0 <= config.momentum < 1, 'momentum', config.momentum, 'must be in [0, 1)')
  _check(config.weight_decay >= 0, 'weight_decay', config.weight_decay, 'must be >= 0')
  _check(0 <= config.label_smoothing < 1, 'label_smoothing', config.label_smoothing,
         'must be in [0, 1)')
  _check(config.warmup_steps >= 0, 'warmup_steps', config.warmup_steps, 'must be >= 0')
  boundaries = list(config.lr_boundaries)
  _check(boundaries == sorted(boundaries) and all(b > config.warmup_steps for b in boundaries),
         'lr_boundaries', tuple(boundaries),
         f'must be increasing steps after the warm-up (warmup_steps={config.warmup_steps})')
  _check(config.data.worker_count >= 0, 'data.worker_count', config.data.worker_count,
         'must be >= 0 (0 loads in the main process)')
  _check(config.data.prefetch_to_device >= 0, 'data.prefetch_to_device',
         config.data.prefetch_to_device, 'must be >= 0')


def validate_against_dataset(config, info) -> None:
  """Checks the keys that must agree with the dataset."""
  _check(config.model.num_classes == info.num_classes, 'model.num_classes',
         config.model.num_classes, f'the dataset {config.data.dataset!r} has '
         f'{info.num_classes} classes; set --config.model.num_classes={info.num_classes}')
