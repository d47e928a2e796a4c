"""The command line: mistakes get a one-line message naming the key, never a traceback."""

import subprocess
import sys

import pytest

from tests import helpers


@pytest.mark.parametrize('override, expected', [
    ('--config.parallel.backend=tpu_magic', "config.parallel.backend='tpu_magic' is not allowed"),
    ('--config.batch_size=100', 'config.batch_size=100 does not divide over 8 devices'),
    ('--config.model.depth=21', 'depth=21'),
    ('--config.model.placement=preact', "placement='preact'"),
    ('--config.data.dataset=cifar100', 'TFDS_DATA_DIR'),
    ('--config.model.num_classes=100', 'config.model.num_classes=100'),
    ('--config.lr_schedule=step', "config.lr_schedule='step' is not allowed"),
])
def test_bad_config_values_exit_2_with_a_clear_message(tmp_path, override, expected):
  env = helpers.env(devices=8)
  env['TFDS_DATA_DIR'] = str(tmp_path / 'empty_tfds')
  result = subprocess.run(helpers.main_command(tmp_path / 'run', override), cwd=helpers.ROOT,
                          env=env, capture_output=True, text=True, timeout=helpers.HANG_S)
  assert result.returncode == 2, result.stderr[-2000:]
  assert expected in result.stderr
  assert 'Traceback' not in result.stderr
  # Nothing was trained, so nothing was written.
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_a_training_run_never_imports_tensorflow(tmp_path):
  code = (
      'import sys\n'
      'from configs import quickstart\n'
      'from resnet_jax.train import loop\n'
      'c = quickstart.get_config(); c.num_train_steps = 3; c.lr_boundaries = (); c.warmup_steps = 0\n'
      f'loop.train_and_evaluate(c, {str(tmp_path)!r})\n'
      "print('tensorflow imported:', any(m == 'tensorflow' or m.startswith('tensorflow.')\n"
      "                                  for m in sys.modules))\n")
  result = subprocess.run([sys.executable, '-c', code], cwd=helpers.ROOT, env=helpers.env(),
                          capture_output=True, text=True, timeout=helpers.HANG_S)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'tensorflow imported: False' in result.stdout


def test_console_script_is_the_same_entry_point():
  import shutil
  script = shutil.which('resnet-jax') or str(helpers.ROOT / '.venv' / 'bin' / 'resnet-jax')
  result = subprocess.run([script, '--helpfull'], capture_output=True, text=True,
                          timeout=helpers.HANG_S,
                          env=helpers.env())
  assert '--workdir' in result.stdout and '--config' in result.stdout
  assert result.returncode == 0, result.stderr[-2000:]  # absl alone exits 1 after a usage.


def test_a_relative_workdir_trains_and_checkpoints(tmp_path):
  # The README's quickstart passes --workdir=runs/quickstart, relative to where it runs.
  config = helpers.ROOT / 'configs' / 'quickstart.py'
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.main', f'--config={config}', '--workdir=runs/rel',
       '--config.num_train_steps=4', '--config.checkpoint_every_steps=2',
       '--config.lr_boundaries=()', '--config.warmup_steps=0'],
      cwd=tmp_path, env=helpers.env(), capture_output=True, text=True, timeout=helpers.HANG_S)
  assert result.returncode == 0, result.stderr[-3000:]
  assert helpers.checkpoint_steps(tmp_path / 'runs' / 'rel') == [2, 4]


def test_every_module_imports_into_one_process_and_leaves_jax_config_alone():
  # Flags are defined by the entry points, not on import, so resnet_jax.main and
  # resnet_jax.summary (each with a --config) import side by side, e.g. into a notebook.
  code = (
      'import importlib, pkgutil, jax\n'
      'from absl import flags\n'
      'import resnet_jax\n'
      'before = dict(jax.config.values)\n'
      "names = [m.name for m in pkgutil.walk_packages(resnet_jax.__path__, 'resnet_jax.')]\n"
      'for name in names:\n'
      '  importlib.import_module(name)\n'
      "assert {'resnet_jax.main', 'resnet_jax.summary'} <= set(names), names\n"
      "print('changed:', {k: v for k, v in jax.config.values.items() if before.get(k) != v})\n"
      "print('flags:', sorted({'config', 'workdir', 'table'} & set(flags.FLAGS)))\n")
  result = subprocess.run([sys.executable, '-c', code], cwd=helpers.ROOT, env=helpers.env(),
                          capture_output=True, text=True, timeout=helpers.HANG_S)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'changed: {}' in result.stdout and 'flags: []' in result.stdout, result.stdout
