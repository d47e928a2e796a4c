"""Derived hyperparameters follow the final config: a command-line override re-derives them."""

import pathlib
import re

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from configs import cifar10, cifar10_resnet20, imagenet_resnet50
from resnet_jax import config_check, recipes
from resnet_jax.data import datasets

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'
IMAGENET_TRAIN = 1_281_167

# (warmup_steps, warmup_mode, warmup_lr, eval_every_steps) of every shipped config, as the
# configs computed them when they were built, before the derivation moved to recipes.finalize.
SHIPPED = {
    'cifar10.py': (0, 'linear', 0.01, 2000),
    'cifar100.py': (0, 'linear', 0.01, 2000),
    'cifar100_preact_resnet1001.py': (400, 'constant', 0.01, 2000),
    'cifar100_preact_resnet110.py': (400, 'constant', 0.01, 2000),
    'cifar100_preact_resnet164.py': (400, 'constant', 0.01, 2000),
    'cifar10_preact_resnet1001.py': (400, 'constant', 0.01, 2000),
    'cifar10_preact_resnet110.py': (400, 'constant', 0.01, 2000),
    'cifar10_preact_resnet164.py': (400, 'constant', 0.01, 2000),
    'cifar10_resnet110.py': (400, 'constant', 0.01, 2000),
    'cifar10_resnet1202.py': (400, 'constant', 0.01, 2000),
    'cifar10_resnet20.py': (0, 'linear', 0.01, 2000),
    'cifar10_resnet32.py': (0, 'linear', 0.01, 2000),
    'cifar10_resnet44.py': (0, 'linear', 0.01, 2000),
    'cifar10_resnet56.py': (0, 'linear', 0.01, 2000),
    'schema.py': (0, 'linear', 0.01, 2000),
    'imagenet.py': (6255, 'linear', 0.01, 6255),
    'imagenet_preact_resnet200.py': (6255, 'linear', 0.01, 6255),
    'imagenet_preact_resnet50.py': (6255, 'linear', 0.01, 6255),
    'imagenet_resnet50.py': (6255, 'linear', 0.01, 6255),
    'quickstart.py': (50, 'linear', 0.01, 200),
}


def _derived(config):
  return (config.warmup_steps, config.warmup_mode, config.warmup_lr, config.eval_every_steps)


def _file(name: str) -> str:
  return f'--config={CONFIG_DIR / name}'


def _command_line(*argv) -> ml_collections.ConfigDict:
  """The config that `--config=FILE --config.KEY=VALUE` gives, parsed by ml_collections."""
  argv = ['main', *argv]
  flag_values = flags.FlagValues()
  # config_flags finds the --config.KEY overrides in the argv it is defined with.
  config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_every_config_is_in_the_table():
  assert sorted(SHIPPED) == sorted(p.name for p in CONFIG_DIR.glob('*.py')
                                   if p.name not in ('__init__.py', 'from_json.py'))


@pytest.mark.parametrize('name', sorted(SHIPPED))
def test_every_shipped_config_keeps_its_recipe(name):
  config = config_flags.config_flags._LoadConfigModule(name, str(CONFIG_DIR / name)).get_config()
  assert _derived(recipes.finalize(config)) == SHIPPED[name]


@pytest.mark.parametrize('arg, base, override', [
    ('depth=110', 'cifar10_resnet20.py', ['--config.model.depth=110']),
    ('depth=20,recipe=2016', 'cifar10_resnet20.py', ['--config.recipe=2016']),
    # The generic config's default recipe follows the placement: pre-activation is the 2016 one.
    ('depth=56,placement=full_preact', 'cifar10.py', ['--config.model.depth=56',
                                                      '--config.model.placement=full_preact']),
])
def test_a_command_line_override_derives_what_the_config_argument_does(arg, base, override):
  from_arg = recipes.finalize(cifar10.get_config(arg))
  from_flags = recipes.finalize(_command_line(_file(base), *override))
  assert _derived(from_flags) == _derived(from_arg)
  assert from_arg.warmup_steps == 400  # Each case is one that warms up.


def test_resnet110_set_after_the_config_is_built_warms_up_as_the_2015_paper_says():
  config = cifar10_resnet20.get_config()
  config.model.depth = 110
  assert _derived(recipes.finalize(config)) == _derived(
      recipes.finalize(cifar10.get_config('depth=110'))) == (400, 'constant', 0.01, 2000)


def test_an_imagenet_batch_override_rescales_the_warmup_and_eval_interval():
  config = imagenet_resnet50.get_config()
  config.batch_size = 256
  final = recipes.finalize(config)
  assert final.warmup_steps == final.eval_every_steps == 5 * IMAGENET_TRAIN // 256
  from_flags = recipes.finalize(_command_line(_file('imagenet_resnet50.py'),
                                              '--config.batch_size=256'))
  assert _derived(from_flags) == _derived(final)


def test_explicit_numbers_win_over_the_recipe():
  config = _command_line(_file('cifar10_resnet110.py'), '--config.warmup_steps=100',
                         '--config.warmup_mode=linear')
  assert _derived(recipes.finalize(config))[:2] == (100, 'linear')
  config = _command_line(_file('imagenet_resnet50.py'), '--config.warmup_steps=10')
  assert recipes.finalize(config).warmup_steps == 10


def test_an_eval_interval_in_epochs_wins_over_one_in_steps_as_num_epochs_does():
  # Every config has a number for eval_every_steps, so it cannot say it was chosen on purpose.
  config = _command_line(_file('imagenet_resnet50.py'), '--config.eval_every_steps=1000')
  assert recipes.finalize(config).eval_every_steps == 5 * IMAGENET_TRAIN // 1024
  config = _command_line(_file('imagenet_resnet50.py'), '--config.eval_every_epochs=0',
                         '--config.eval_every_steps=1000')
  assert recipes.finalize(config).eval_every_steps == 1000


def test_epochs_use_the_size_of_the_configured_split_when_given():
  config = imagenet_resnet50.get_config()
  assert recipes.finalize(config, num_train_examples=102_400).warmup_steps == 5 * 100


def test_finalize_copies_and_a_second_finalize_changes_nothing():
  config = _command_line(_file('cifar10.py'), '--config.model.depth=164')
  before = config.to_dict()
  final = recipes.finalize(config)
  assert config.to_dict() == before and config.warmup_steps is None  # The input is untouched.
  assert final.recipe == '2015' and final.warmup_steps == 400  # 'auto' is recorded resolved.
  assert recipes.finalize(final).to_dict() == final.to_dict()
  frozen = ml_collections.FrozenConfigDict(config)
  assert recipes.finalize(frozen).to_dict() == final.to_dict()


@pytest.mark.parametrize('value', ['2017', 'resnet'])
def test_an_unknown_recipe_names_the_key_the_value_and_the_choices(value):
  config = cifar10.get_config(f'recipe={value}')
  with pytest.raises(config_check.ConfigError, match=re.escape(
      f"config.recipe={value!r} is not allowed; choose one of ('2015', '2016', 'auto', 'none')")):
    recipes.finalize(config)


def test_epochs_of_an_unknown_dataset_ask_for_steps():
  config = imagenet_resnet50.get_config()
  config.data.dataset = 'my_dataset'
  config.data.mean, config.data.std, config.model.num_classes = (0.0,) * 3, (1.0,) * 3, 5
  with pytest.raises(config_check.ConfigError,
                     match=re.escape("config.warmup_epochs=5.0 needs the size of the training set, "
                                     "which is not known for config.data.dataset='my_dataset'")):
    recipes.finalize(config)


def test_a_negative_interval_in_epochs_is_an_error():
  config = imagenet_resnet50.get_config()
  config.eval_every_epochs = -1.0
  with pytest.raises(config_check.ConfigError,
                     match=re.escape('config.eval_every_epochs=-1.0: must be >= 0')):
    recipes.finalize(config)


def test_epochs_count_the_examples_of_the_configured_split():
  # The README's validation split: every key in epochs counts 45,000 examples, num_epochs too.
  config = _command_line(_file('cifar10.py'), "--config.data.train_split=train[:45000]",
                         '--config.data.eval_split=train[45000:]', '--config.num_epochs=2',
                         '--config.warmup_epochs=1', '--config.eval_every_epochs=0.5')
  final = recipes.finalize(config)
  assert (final.warmup_steps, final.eval_every_steps) == (45_000 // 128, 22_500 // 128)
  assert recipes.train_split_size(final) == 45_000


def test_the_data_keys_follow_the_dataset_that_the_final_config_names():
  final = recipes.finalize(_command_line(_file('cifar10.py'), '--config.data.dataset=cifar100'))
  record = datasets.TABLE['cifar100']
  assert (final.model.num_classes, tuple(final.data.mean), tuple(final.data.std)) == (
      100, record.mean, record.std)
  assert final.data.image_size == 32
  given = recipes.finalize(_command_line(_file('cifar10.py'), '--config.data.mean=(1.,2.,3.)'))
  assert tuple(given.data.mean) == (1.0, 2.0, 3.0)  # A value set wins.


def test_a_dataset_outside_the_table_needs_its_statistics_set():
  config = cifar10.get_config()
  config.data.dataset = 'svhn_cropped'
  with pytest.raises(config_check.ConfigError, match=re.escape(
      "config.data.mean is None, and the dataset 'svhn_cropped' is not in "
      'resnet_jax/data/datasets.py to take it from; set --config.data.mean.')):
    recipes.finalize(config)
