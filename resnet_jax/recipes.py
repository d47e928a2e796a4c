"""The hyperparameters that follow from others, derived once from the final config of a run.

The normalisation and the class count follow the dataset, the warm-up of the CIFAR recipes the
recipe, the placement and the depth, and a warm-up and eval interval given in epochs the size of
the training split and the batch. Config files leave these at None (or name what they follow);
`finalize` fills them in at train time, after every command-line override, so
`--config.data.dataset=cifar100` or `--config.model.depth=110` changes them as it should, and the
run's config.json records the numbers that ran.

Precedence, for each derived key:
  data.mean, data.std, data.image_size, model.num_classes: a value set; else the dataset's record
    (resnet_jax/data/datasets.py; image_size only for datasets of one image size).
  warmup_steps: a number set; else warmup_epochs in steps, if > 0; else the recipe's (400 or 0).
  warmup_mode: a value set; else 'constant' where the recipe warms this net up or warmup_rule is
    'train_error', else 'linear'.
  eval_every_steps: eval_every_epochs in steps if that is > 0, else as set. Epochs win here, as
    num_epochs does over num_train_steps, because every config has a number of steps (so it
    cannot tell a default from a choice); `--config.eval_every_epochs=0` brings the steps back.

config.recipe:
  '2015': He et al. 2015, Sec. 4.2: ResNet-110 and deeper hold lr warmup_lr (0.01) for the first
    400 steps, "until the training error is below 80%", then go back to learning_rate.
  '2016': He et al. 2016 (Identity Mappings): the same warm-up for every depth.
  'auto': the recipe of the paper that introduced the placement (models/placements.py): '2016'
    for the pre-activation placements, '2015' for the others.
  'none' (or None): no recipe; the keys above give the numbers.
finalize records the recipe that applied ('auto' becomes '2015' or '2016').
"""

import ml_collections

from resnet_jax import config_check, models
from resnet_jax.data import datasets

RECIPES = ('2015', '2016', 'auto', 'none')
RECIPE_WARMUP_STEPS = 400
# The 2015 paper warms up ResNet-110 and ResNet-1202, not ResNet-56 and shallower.
RECIPE_2015_WARMUP_DEPTH = 110


def recipe(config) -> str:
  """config.recipe, checked, with 'auto' and None resolved: '2015', '2016' or 'none'."""
  value = config.recipe
  name = 'none' if value is None else str(value).lower()
  if name not in RECIPES:
    raise config_check.ConfigError(
        f'config.recipe={value!r} is not allowed; choose one of {RECIPES} (or None).')
  if name == 'auto':
    try:
      return models.placements.get(config.model.placement).recipe
    except ValueError as e:
      raise config_check.ConfigError(f'config.model: {e}') from None
  return name


def _epochs_to_steps(config, key: str, num_train_examples: int | None) -> int:
  """config[key] epochs in steps of the final batch_size, rounded down as optim.num_train_steps."""
  if num_train_examples is None:
    raise config_check.ConfigError(
        f'config.{key}={config[key]!r} needs the size of the training set, which is not known '
        f'for config.data.dataset={config.data.dataset!r}; give it in steps instead: '
        f'--config.{key}=0 --config.{key.replace("epochs", "steps")}=N.')
  return int(config[key] * num_train_examples // config.batch_size)


def train_split_size(config) -> int | None:
  """Examples in config.data.train_split by the dataset table; None outside the table."""
  try:
    return datasets.split_size(config.data.dataset, config.data.train_split)
  except datasets.DataError as e:
    raise config_check.ConfigError(f'config.data.train_split: {e}') from None


def from_dataset(config) -> ml_collections.ConfigDict:
  """A copy of `config` whose data keys and class count left at None are the dataset's (what the
  input pipeline reads: resnet_jax.train.run opens the data with it, before `finalize`)."""
  config = config.copy_and_resolve_references()
  record = datasets.get(config.data.dataset)
  fixed = record is not None and record.fixed_size
  for node, key, value in (
      (config.data, 'mean', record and record.mean), (config.data, 'std', record and record.std),
      (config.data, 'image_size', record.image_shape[0] if fixed else None),
      (config.model, 'num_classes', record and record.num_classes)):
    if node[key] is None:
      if value is None:
        name = f'{"model" if node is config.model else "data"}.{key}'
        raise config_check.ConfigError(
            f'config.{name} is None, and the dataset {config.data.dataset!r} '
            + ('has images of many sizes' if record else 'is not in resnet_jax/data/datasets.py')
            + f' to take it from; set --config.{name}.')
      node[key] = value
  return config


def finalize(config, num_train_examples: int | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` with the derived keys filled in (see the module docstring).

  The input is left as it is (it may be locked or frozen). num_train_examples: the size of the
  configured training split, for the keys given in epochs; None takes it from the dataset table.
  Finalising a finalised config changes nothing. Raises ConfigError for a value that cannot work.
  """
  if isinstance(config, ml_collections.FrozenConfigDict):
    config = config.as_configdict()
  config = from_dataset(config)
  name = recipe(config)
  for key in ('warmup_epochs', 'eval_every_epochs'):
    if config[key] < 0:
      raise config_check.ConfigError(
          f'config.{key}={config[key]!r}: must be >= 0 (0 leaves the interval to the steps).')
  if num_train_examples is None and (config.warmup_epochs > 0 or config.eval_every_epochs > 0):
    num_train_examples = train_split_size(config)
  warms_up = name == '2016' or (name == '2015' and
                                config.model.depth >= RECIPE_2015_WARMUP_DEPTH)
  config.recipe = name
  if config.warmup_steps is None:
    if config.warmup_epochs > 0:
      config.warmup_steps = _epochs_to_steps(config, 'warmup_epochs', num_train_examples)
    else:
      config.warmup_steps = RECIPE_WARMUP_STEPS if warms_up else 0
  by_error = config.warmup_rule == 'train_error'
  if config.warmup_mode is None:
    config.warmup_mode = 'constant' if warms_up or by_error else 'linear'
  if by_error and config.warmup_steps == 0:
    raise config_check.ConfigError(
        "config.warmup_rule='train_error' with warmup_steps=0 (the recipe's, for this net) "
        'would never warm up: set config.warmup_steps=N, the longest the warm-up may last.')
  if config.eval_every_epochs > 0:
    # At least 1: config_check wants a positive interval, however small the split.
    config.eval_every_steps = max(
        1, _epochs_to_steps(config, 'eval_every_epochs', num_train_examples))
  config_check.check_boundaries(config)
  return config
