"""CIFAR-10, any network of the two ResNet papers, chosen by an argument string.

  python -m resnet_jax.main --workdir=runs/c10_110_b \
      --config='configs/cifar10.py:depth=110,placement=bn_after_add,shortcut=A'

The argument sets `config.model` keys (depth, placement, shortcut, width, ...) and `recipe`:
'2015' (He et al. 2015, Sec. 4.2: lr 0.1, /10 at 32k and 48k of 64k steps, batch 128, wd 1e-4;
ResNet-110 and deeper warm up at lr 0.01 for 400 steps) or '2016' (Identity Mappings: the same,
with the 400-step warm-up for every depth). The default recipe is '2016' for pre-activation
placements and '2015' otherwise. An ablation needs no new file: the papers' Table 2 cell
"ResNet-110, BN after addition" is the command above, and should reach about 8.2% test error
(the paper's median of 5 runs is 8.17%).
"""

import ml_collections

from configs import default

RECIPES = ('2015', '2016')


def parse_arg(arg: str | None) -> dict:
  """'depth=110,placement=full_preact' -> {'depth': '110', 'placement': 'full_preact'}."""
  pairs = {}
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'config argument {item!r} is not key=value (in {arg!r}).')
    pairs[key.strip()] = value.strip()
  return pairs


def apply_model_args(config, pairs: dict) -> None:
  """Sets config.model keys from strings, converted to each key's type."""
  for key, value in pairs.items():
    if key not in config.model:
      raise ValueError(f'config argument {key}={value!r} is not a model key; allowed: recipe, '
                       f'{", ".join(sorted(config.model))}.')
    current = config.model[key]
    if value.lower() in ('none', ''):
      config.model[key] = None
    elif isinstance(current, bool) or key in ('scan', 'remat', 'zero_init_last', 'resnet_d'):
      config.model[key] = value.lower() in ('1', 'true', 'yes')
    elif isinstance(current, int):
      config.model[key] = int(value)
    elif isinstance(current, float):
      config.model[key] = float(value)
    else:
      config.model[key] = value


def cifar_config(arg: str | None, *, dataset: str, num_classes: int, mean, std):
  config = default.get_config()
  config.data.dataset = dataset
  config.data.mean = mean
  config.data.std = std
  config.model.num_classes = num_classes
  pairs = parse_arg(arg)
  recipe = pairs.pop('recipe', None)
  apply_model_args(config, pairs)
  preact = config.model.placement in ('relu_only_preact', 'full_preact')
  recipe = recipe or ('2016' if preact else '2015')
  if recipe not in RECIPES:
    raise ValueError(f'config argument recipe={recipe!r} is not one of {RECIPES}.')
  # He et al. 2015, Sec. 4.2: "we use 0.01 to warm up the training until the training error is
  # below 80% (about 400 iterations)" for ResNet-110; He et al. 2016 does so for every CIFAR net.
  if recipe == '2016' or config.model.depth >= 110:
    config.warmup_steps = 400
    config.warmup_mode = 'constant'
    config.warmup_lr = 0.01
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return cifar_config(arg, dataset='cifar10', num_classes=10,
                      mean=(125.31, 122.95, 113.87), std=(62.99, 62.09, 66.70))
