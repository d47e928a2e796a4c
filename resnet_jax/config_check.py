"""Validates a config before anything compiles, so a typo costs a message, not a traceback.

Every message names the key, the value and what is allowed. resnet_jax.cli loads config files
and parses command lines with these checks.
"""

import difflib
import math
import numbers
import os

import flax.traverse_util
import ml_collections

from configs import schema
from resnet_jax import models, parallel
from resnet_jax.data import datasets, device
from resnet_jax.errors import UserError
from resnet_jax.train import optim


class ConfigError(UserError, ValueError):
  """A config value that cannot work."""


def _choice(config, key: str, allowed) -> None:
  value = _get(config, key)
  # None stands only where configs/schema.py has a placeholder (check_structure): derived later.
  if value is not None and value not in allowed:
    raise ConfigError(f'config.{key}={value!r} is not allowed; choose one of {tuple(allowed)}.')


def _check(ok: bool, key: str, value, requirement: str) -> None:
  if not ok:
    raise ConfigError(f'config.{key}={value!r}: {requirement}.')


TYPE_NAMES = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string',
               tuple: "a tuple, e.g. '(1, 2)'"}


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fits(value, kind) -> bool:
  """Whether `value` can stand where configs/schema.py has a value of type `kind`."""
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if kind is float:
    return _is_number(value)
  if kind in (tuple, list):
    return isinstance(value, (tuple, list))
  return isinstance(value, kind)


def _compare(config, reference, prefix: str, missing: list, problems: list) -> None:
  """Appends the keys of `reference` that `config` lacks to `missing`, other mismatches to
  `problems`."""
  missing += [prefix + k for k in reference if k not in config]
  for key in config:
    name = prefix + key
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference), 1, 0.75)
      hint = f' (did you mean {prefix + close[0]}?)' if close else ''
      problems.append(f'unknown key {name}{hint}')
      continue
    value, expected = config[key], reference[key]
    kind = reference.get_type(key)
    if isinstance(expected, ml_collections.ConfigDict):
      if isinstance(value, ml_collections.ConfigDict):
        _compare(value, expected, name + '.', missing, problems)
      else:
        problems.append(f'{name}={value!r} must be a ConfigDict of keys like {", ".join(expected)}')
    elif value is None:
      # Placeholders (None in configs/schema.py) are optional; nothing else is.
      if expected is not None:
        problems.append(f'{name}=None must be {TYPE_NAMES.get(kind, kind.__name__)}')
    elif not _fits(value, kind):
      problems.append(f'{name}={value!r} must be {TYPE_NAMES.get(kind, kind.__name__)}, not a '
                      f'{type(value).__name__}')
    elif (isinstance(value, (tuple, list)) and expected and all(map(_is_number, expected))
          and not all(map(_is_number, value))):
      problems.append(f'{name}={tuple(value)!r} must hold numbers only')


def check_structure(config) -> None:
  """Raises ConfigError unless `config` has exactly the keys of configs/schema.py, with values of
  their types (None only where schema.py has a placeholder), so that no later line trips over a
  missing key or a string where a number belongs."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'the config is a {type(config).__name__}, not an ml_collections.ConfigDict; '
                      'build it from configs/schema.py: config = schema.get_config().')
  missing, problems = [], []
  _compare(config, schema.get_config(), 'config.', missing, problems)
  if missing:
    problems.insert(0, f'missing keys {", ".join(missing)}')
  if missing or any(p.startswith('unknown') for p in problems):
    problems.append('every key of configs/schema.py must be there and no other: start from '
                    'schema.get_config() and override keys (a new key belongs in schema.py)')
  if problems:
    raise ConfigError('; '.join(problems) + '.')


def _non_finite(config):
  """(key, value) of the first NaN or infinite number anywhere in the config, or None."""
  for key, value in flax.traverse_util.flatten_dict(config.to_dict(), sep='.').items():
    if any(_is_number(v) and not math.isfinite(v)
           for v in (value if isinstance(value, (tuple, list)) else (value,))):
      return key, value
  return None


_POSITIVE = (lambda v: v > 0, 'must be a positive integer')
_NON_NEGATIVE = (lambda v: v >= 0, 'must be >= 0')

# (key, test, requirement) for the keys that must lie in a range.
_RANGES = (
    *((key, *_POSITIVE) for key in (
        'batch_size', 'eval_batch_size', 'log_every_steps', 'eval_every_steps',
        'checkpoint_every_steps', 'keep_checkpoints', 'warmup_error_window', 'data.image_size',
        'data.worker_buffer_size', 'data.read_threads', 'data.read_buffer_size')),
    *((key, *_NON_NEGATIVE) for key in (
        'learning_rate', 'warmup_lr', 'weight_decay', 'warmup_steps', 'data.prefetch_to_device')),
    ('seed', lambda v: 0 <= v < 2**32, 'must be in [0, 2**32)'),
    ('lr_decay_factor', lambda v: v > 0,
     'must be > 0 (it multiplies the learning rate at each of lr_boundaries, e.g. 0.1)'),
    ('momentum', lambda v: 0 <= v < 1, 'must be in [0, 1)'),
    ('warmup_error', lambda v: 0 < v <= 1,
     'must be in (0, 1] (the training error, as a fraction, below which the warm-up ends)'),
    ('label_smoothing', lambda v: 0 <= v < 1, 'must be in [0, 1)'),
    ('data.pad', lambda v: v >= 0, 'must be >= 0 (pixels of padding before the random crop)'),
    ('data.crop_fraction', lambda v: 0 < v <= 1,
     'must be in (0, 1] (the share of the resized image that the eval crop keeps)'),
    ('data.mean', lambda v: len(v) > 0 and all(map(_is_number, v)),
     'must hold numbers only, one per image channel'),
    ('data.std', lambda v: len(v) > 0 and all(_is_number(s) and s > 0 for s in v),
     'must hold numbers > 0 only, one per image channel (the pixels are divided by them)'),
    ('data.worker_count', lambda v: v >= 0, 'must be >= 0 (0 loads in the main process)'),
)


def _get(config, key: str):
  for part in key.split('.'):
    config = config[part]
  return config


def validate(config) -> None:
  """Raises ConfigError for the first value that is missing, of the wrong type or out of range.

  The keys that resnet_jax.recipes.finalize derives may still be None; the rest must be set.
  """
  check_structure(config)
  found = _non_finite(config)
  if found:
    _check(False, *found, 'must be a finite number (no inf or nan)')
  _choice(config, 'parallel.backend', parallel.BACKENDS)
  _choice(config, 'optimizer', optim.OPTIMIZERS)
  _choice(config, 'weight_decay_type', optim.WEIGHT_DECAY_TYPES)
  _choice(config, 'lr_schedule', optim.SCHEDULES)
  _choice(config, 'warmup_mode', optim.WARMUP_MODES)
  _choice(config, 'warmup_rule', optim.WARMUP_RULES)
  if config.warmup_rule == 'train_error':
    _check(config.warmup_mode in (None, 'constant'), 'warmup_mode', config.warmup_mode,
           "must be 'constant' with warmup_rule='train_error': a warm-up of unknown length "
           'cannot ramp')
  _choice(config, 'distributed.initialize', parallel.INITIALIZE)
  _choice(config, 'data.pipeline', datasets.PIPELINES)
  if config.data.pipeline == 'device':
    record = datasets.get(config.data.dataset)
    small = tuple(n for n, d in datasets.TABLE.items() if 'device' in d.pipelines)
    _check(record is not None and 'device' in record.pipelines, 'data.pipeline', 'device',
           f'keeps the whole train split on every device, which only {small} are small enough '
           f"for; read config.data.dataset={config.data.dataset!r} with "
           '--config.data.pipeline=grain')
    _check(config.data.augment in device.AUGMENTATIONS, 'data.pipeline', 'device',
           f'augments in the train step with {device.AUGMENTATIONS} only, not '
           f"config.data.augment={config.data.augment!r}; use --config.data.pipeline=grain")
  check_splits(config)
  for key, test, requirement in _RANGES:
    value = _get(config, key)
    if value is not None:  # None only for the derived keys (check_structure), set by finalize.
      _check(test(value), key, value, requirement)
  if config.num_epochs <= 0:
    _check(config.num_train_steps > 0, 'num_train_steps', config.num_train_steps,
           'must be positive (or set config.num_epochs > 0)')
  check_boundaries(config)
  mean, std = config.data.mean, config.data.std
  if mean is not None and std is not None:
    _check(len(mean) == len(std), 'data.mean', tuple(mean),
           f'needs one value per image channel, as many as config.data.std={tuple(std)}')
  try:  # Any backend will do for the check: it must not start JAX's (XLA_FLAGS come first).
    models.from_config(config.model, backend='cpu')
  except ValueError as e:
    raise ConfigError(f'config.model: {e}') from None
  # Whether the file or workdir exists and fits the model is checked when a fresh run starts
  # (resnet_jax/train/init_from.py): a resumed run never reads it again.
  _check(config.init_from is None or bool(config.init_from.strip()), 'init_from',
         config.init_from, "must name a weight file or a workdir ('runs/x', 'runs/x:1200'), or "
         'be None to start from a random init')


def check_splits(config) -> None:
  """The split strings of a dataset of the table, read against its recorded split sizes: one
  that tfds cannot parse, that names no split or that selects no example is a ConfigError naming
  the key. A tfds dataset outside the table is checked when it is opened."""
  for key in ('data.train_split', 'data.eval_split'):
    split = _get(config, key)
    try:
      size = datasets.split_size(config.data.dataset, split)
    except UserError as e:
      raise ConfigError(f'config.{key}={split!r}: {e}') from None
    record = datasets.get(config.data.dataset)
    _check(size != 0, key, split, str(datasets.EmptySplit(
        config.data.dataset, split, record.splits if record else {})).rstrip('.'))


def check_boundaries(config) -> None:
  """lr_boundaries strictly increase (optim keys the decays by step: a repeated step would decay
  once), and lie after the warm-up once warmup_steps is known."""
  boundaries, warmup = list(config.lr_boundaries), config.warmup_steps
  _check(all(a < b for a, b in zip(boundaries, boundaries[1:]))
         and all(b > (warmup or 0) for b in boundaries),
         'lr_boundaries', tuple(boundaries),
         f'must be increasing steps after the warm-up (warmup_steps={warmup})')


def check_init_from_path(config, path: str) -> None:
  """Raises ConfigError unless config.init_from names a file or a directory that exists."""
  if not os.path.exists(path):
    raise ConfigError(
        f'config.init_from={config.init_from!r}: {path} does not exist; give a weight file '
        '(python -m resnet_jax.export or resnet_jax.convert writes one) or a workdir, e.g. '
        "'runs/x' or 'runs/x:1200'.")


def check_init_from_fits(config, problems: list[str], head: str = 'params/head/') -> None:
  """Raises ConfigError if the weights of config.init_from do not fit the model: `problems` are
  their differences (resnet_jax.models.weight_file.differences), the first few of which it names.
  With config.init_head=False the classifier (`head`) may differ: it is not loaded."""
  if not config.init_head:
    problems = [p for p in problems if not p.startswith(head)]
  if not problems:
    return
  count = models.weight_file.describe(problems)
  if all(p.startswith(head) for p in problems):
    raise ConfigError(
        f'config.init_from={config.init_from!r}: its classifier does not fit this model ({count}); '
        'set --config.init_head=false to train a new one (as another num_classes requires).')
  raise ConfigError(
      f'config.init_from={config.init_from!r}: the weights do not fit this model ({count}); they '
      "were trained with another config.model than this run's.")


def validate_against_dataset(config, info) -> None:
  """Checks the keys that must agree with the dataset."""
  _check(config.model.num_classes == info.num_classes, 'model.num_classes',
         config.model.num_classes, f'the dataset {config.data.dataset!r} has '
         f'{info.num_classes} classes; set --config.model.num_classes={info.num_classes}')
