"""Every config loads, validates, builds its model and documents its command."""

import pathlib
import re

import jax
import jax.numpy as jnp
import pytest
from ml_collections import config_flags

from configs import cifar10
from resnet_jax import config_check, recipes
from resnet_jax.train import run

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'
# from_json.py loads a config saved as JSON (a study's --print_commands): a loader, not a run.
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob('*.py')
                 if p.name not in ('__init__.py', 'from_json.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_validates_and_its_docstring_gives_a_command(name):
  module = config_flags.config_flags._LoadConfigModule(name, str(CONFIG_DIR / name))
  config_check.validate(recipes.finalize(module.get_config()))
  if name == 'schema.py':  # Every key at its default, not a run of its own.
    return
  assert re.search(r'python -m resnet_jax\.main .*--config=.?configs/', module.__doc__ or '',
                   re.S), f'{name} does not state its command'
  assert '%' in module.__doc__, f'{name} does not state the result it should reach'


@pytest.mark.parametrize('name', [n for n in CONFIGS if n not in ('cifar10.py', 'cifar100.py')])
def test_config_builds_its_model(name):
  config = config_flags.config_flags._LoadConfigModule(name, str(CONFIG_DIR / name)).get_config()
  prepared = run.prepare(config, open_data=False)
  model = run.model(prepared.config)
  out = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *prepared.image_shape)),
                                          train=False))
  assert out['params']


@pytest.mark.parametrize('name, depth', [('cifar10_preact_resnet164.py', 164),
                                         ('cifar100_preact_resnet1001.py', 1001)])
def test_2016_presets_follow_the_paper_recipe(name, depth):
  config = recipes.finalize(
      config_flags.config_flags._LoadConfigModule(name, str(CONFIG_DIR / name)).get_config())
  assert (config.model.depth, config.model.placement) == (depth, 'full_preact')
  assert (config.batch_size, config.weight_decay, config.momentum, config.learning_rate) == (
      128, 1e-4, 0.9, 0.1)
  assert tuple(config.lr_boundaries) == (32_000, 48_000) and config.num_train_steps == 64_000
  assert (config.warmup_steps, config.warmup_mode, config.warmup_lr) == (400, 'constant', 0.01)


def test_generic_config_takes_model_keys_as_an_argument():
  config = cifar10.get_config('depth=110,placement=bn_after_add,shortcut=A,width=2')
  assert (config.model.depth, config.model.placement, config.model.shortcut,
          config.model.width) == (110, 'bn_after_add', 'A', 2.0)
  assert cifar10.get_config('depth=56,scan=false').model.scan is False
  assert cifar10.get_config('depth=56,scan=none').model.scan is None
  # 'none' is a shortcut option, the plain net, not the family's default (option A).
  assert cifar10.get_config('depth=56,shortcut=none').model.shortcut == 'none'


@pytest.mark.parametrize('arg, message', [
    ('depth', "'depth' is not key=value"),
    ('colour=red', "colour='red' is not a model key"),
])
def test_generic_config_rejects_bad_arguments_clearly(arg, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    cifar10.get_config(arg)


@pytest.mark.parametrize('key, value, message', [
    ('momentum', 1.5, 'config.momentum=1.5: must be in [0, 1)'),
    ('optimizer', 'adam', "config.optimizer='adam' is not allowed; choose one of ('momentum', 'nesterov')"),
    ('lr_boundaries', (48_000, 32_000), 'config.lr_boundaries=(48000, 32000): must be increasing'),
    # optim keys the decays by step: the second 32000 would silently not decay again.
    ('lr_boundaries', (32_000, 32_000), 'config.lr_boundaries=(32000, 32000): must be increasing'),
    ('eval_every_steps', 0, 'config.eval_every_steps=0: must be a positive integer'),
])
def test_validation_names_the_key_the_value_and_what_is_allowed(key, value, message):
  config = recipes.finalize(cifar10.get_config())
  config[key] = value
  with pytest.raises(config_check.ConfigError, match=re.escape(message)):
    config_check.validate(config)
