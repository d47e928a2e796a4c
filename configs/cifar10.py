"""CIFAR-10, any network of the two ResNet papers, chosen by an argument string.

  python -m resnet_jax.main --workdir=runs/c10_110_b \
      --config='configs/cifar10.py:depth=110,placement=bn_after_add,shortcut=A'

The argument sets `config.model` keys (depth, placement, shortcut, width, ...) and `recipe`:
'2015' (He et al. 2015, Sec. 4.2: lr 0.1, /10 at 32k and 48k of 64k steps, batch 128, wd 1e-4;
ResNet-110 and deeper warm up at lr 0.01 for 400 steps) or '2016' (Identity Mappings: the same,
with the 400-step warm-up for every depth). The default recipe is '2016' for pre-activation
placements and '2015' otherwise. The warm-up is derived when training starts, from the final
config (resnet_jax.recipes), so it follows command-line overrides: `--config.model.depth=110`
gets the same warm-up as `depth=110`, and `--config.recipe=2016` does what `recipe=2016` does.

An ablation needs no new file: the papers' Table 2 cell "ResNet-110, BN after addition" is the
command above, and should reach about 8.2% test error (the paper's median of 5 runs is 8.17%).
"""

import ml_collections

from configs import schema


def parse_arg(arg: str | None) -> dict:
  """'depth=110,placement=full_preact' -> {'depth': '110', 'placement': 'full_preact'}."""
  pairs = {}
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = (part.strip() for part in item.partition('='))
    if not sep or not key:
      raise ValueError(f'config argument {item!r} is not key=value (in {arg!r}); write e.g. '
                       "'depth=110,placement=full_preact'.")
    if key in pairs:
      raise ValueError(f'config argument {key} is given twice (in {arg!r}); give it once.')
    pairs[key] = value
  return pairs


def apply_model_args(config, pairs: dict) -> None:
  """Sets config.model keys from strings, converted to each key's type. 'none' sets None, the
  default, except for a string key, where it is the string: shortcut=none is the plain net."""
  bools = {'true': True, 'yes': True, '1': True, 'false': False, 'no': False, '0': False}
  for key, value in pairs.items():
    if key not in config.model:
      raise ValueError(f'config argument {key}={value!r} is not a model key; allowed: recipe, '
                       f'{", ".join(sorted(config.model))}.')
    kind = config.model.get_type(key)  # The type of a None placeholder too (scan, shortcut).
    if value == '' or (value.lower() == 'none' and kind is not str):
      config.model[key] = None
    elif kind is bool:
      if value.lower() not in bools:
        raise ValueError(f'config argument {key}={value!r} must be true or false.')
      config.model[key] = bools[value.lower()]
    elif kind in (int, float):
      try:
        config.model[key] = kind(value)
      except ValueError:
        wanted = 'an integer' if kind is int else 'a number'
        raise ValueError(f'config argument {key}={value!r} must be {wanted}, e.g. '
                         f'{key}={config.model[key]}.') from None
    else:
      config.model[key] = value


def cifar_config(arg: str | None, dataset: str):
  """The 2015/2016 CIFAR recipe on `dataset`; its classes and statistics are the dataset's
  (resnet_jax/data/datasets.py), filled in at train time."""
  config = schema.get_config()
  config.data.dataset = dataset
  # The split lives on the devices and each step augments its batch there: on 2 CPU cores the
  # loop then runs at the step's own speed (ResNet-20: 329 img/s against 300 on the grain path;
  # docs/benchmarks.md). --config.data.pipeline=grain gives the host pipeline.
  config.data.pipeline = 'device'
  pairs = parse_arg(arg)
  # Only the recipe's name is set here: its warm-up is derived from the final depth and placement
  # at train time (resnet_jax.recipes.finalize), so command-line overrides change it too.
  config.recipe = pairs.pop('recipe', None) or config.recipe
  apply_model_args(config, pairs)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return cifar_config(arg, 'cifar10')
