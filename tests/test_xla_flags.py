"""resnet_jax/xla_flags.py: config.xla is resolved from the final config, reaches XLA through
XLA_FLAGS before the backends start, yields to XLA_FLAGS you set; a contradiction is one line."""

import logging
import subprocess
import sys

import pytest

from configs import quickstart
from resnet_jax import xla_flags
from resnet_jax.config_check import ConfigError
from tests import helpers

OFF = '--xla_cpu_enable_concurrency_optimized_scheduler=false'


def _config(dtype='float32', scheduler=None):
  config = quickstart.get_config()
  config.model.dtype = dtype
  config.xla.cpu_concurrency_optimized_scheduler = scheduler
  return config


@pytest.fixture
def backends_not_started(monkeypatch):
  monkeypatch.setattr(xla_flags, '_backends_started', lambda: False)


@pytest.mark.parametrize('dtype, scheduler, expected', [
    ('bfloat16', None, [OFF]),  # The default: off for bfloat16 ...
    ('float32', None, []),  # ... and XLA's own default for float32.
    ('float32', False, [OFF]),
    ('bfloat16', True, ['--xla_cpu_enable_concurrency_optimized_scheduler=true']),
])
def test_the_flags_follow_the_final_config(dtype, scheduler, expected):
  assert xla_flags.wanted(_config(dtype, scheduler)) == expected


def test_xla_flags_strings_are_parsed():
  assert xla_flags.named_in('--a=1  -b --c=x=y\t--d --e=') == {
      'a': '1', 'b': 'true', 'c': 'x=y', 'd': 'true', 'e': ''}
  assert xla_flags.named_in('') == {}


def test_apply_appends_to_xla_flags(backends_not_started):
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  assert xla_flags.apply(_config('bfloat16'), environ) == [OFF]
  assert environ['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=2 {OFF}'
  assert xla_flags.apply(_config('bfloat16'), environ) == []  # Named already: not twice.
  assert environ['XLA_FLAGS'].count(OFF) == 1
  empty = {}
  assert xla_flags.apply(_config('float32'), empty) == [] and empty == {}


def test_xla_flags_you_set_win_over_a_default_and_contradict_an_explicit_key(
    backends_not_started):
  on = '--xla_cpu_enable_concurrency_optimized_scheduler=true'
  environ = {'XLA_FLAGS': on}
  assert xla_flags.apply(_config('bfloat16'), environ) == [] and environ == {'XLA_FLAGS': on}
  with pytest.raises(ConfigError) as error:
    xla_flags.apply(_config('float32', False), environ)
  assert str(error.value) == (
      'config.xla.cpu_concurrency_optimized_scheduler=False contradicts XLA_FLAGS, which sets '
      '--xla_cpu_enable_concurrency_optimized_scheduler=true; drop one of them.')
  agreeing = {'XLA_FLAGS': OFF}
  assert xla_flags.apply(_config('float32', False), agreeing) == []


def test_too_late_in_a_process_changes_nothing_and_says_so(monkeypatch, caplog):
  monkeypatch.setattr(xla_flags, '_backends_started', lambda: True)
  environ = {}
  with caplog.at_level(logging.INFO):
    assert xla_flags.apply(_config('float32', False), environ) == []
  assert environ == {}
  assert [r.levelno for r in caplog.records] == [logging.WARNING]  # Asked for by name.
  assert OFF in caplog.records[0].getMessage()
  caplog.clear()
  with caplog.at_level(logging.INFO):
    xla_flags.apply(_config('bfloat16'), environ)  # A default: no warning.
  assert [r.levelno for r in caplog.records] == [logging.INFO]


# Compiles the quickstart step after config.xla is applied, prints XLA's memory plan of it, runs
# three steps and prints a hash of the weights and BN statistics they leave.
_COMPILE = r"""
import hashlib, sys
from configs import quickstart
from resnet_jax import xla_flags
config = quickstart.get_config()
config.model.dtype = sys.argv[1]
print('appended', xla_flags.apply(config))
import jax
from benchmarks import project
from resnet_jax.train import run
step = project.compile_train_step(run.prepare(config, open_data=False), jax.devices()[:1])
print('temp', step.compiled.memory_analysis().temp_size_in_bytes)
for _ in range(3):
  step()
leaves = jax.tree.leaves(jax.device_get((step.state.params, step.state.batch_stats)))
print('trained', hashlib.sha256(b''.join(leaf.tobytes() for leaf in leaves)).hexdigest())
"""


def _compile_and_train(dtype, xla_flags_env):
  environ = helpers.env()
  environ['XLA_FLAGS'] = xla_flags_env
  result = subprocess.run([sys.executable, '-c', _COMPILE, dtype], cwd=helpers.ROOT, env=environ,
                          capture_output=True, text=True, timeout=helpers.HANG_S)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = dict(line.split(' ', 1) for line in result.stdout.splitlines())
  return lines['appended'], int(lines['temp']), lines['trained']


def test_the_flag_reaches_xla_when_applied_before_the_backends_start():
  devices = '--xla_force_host_platform_device_count=1'
  appended, off, trained_off = _compile_and_train('bfloat16', devices)
  assert appended == repr([OFF])
  # XLA_FLAGS that name it win: XLA's default scheduler, which plans the bfloat16 step's
  # buffers differently (more memory, here and on every net measured) ...
  appended, on, trained_on = _compile_and_train(
      'bfloat16', f'{devices} --xla_cpu_enable_concurrency_optimized_scheduler=true')
  assert appended == '[]'
  assert off != on
  # ... and computes the same bits: the key is result-neutral (workdir.RESULT_NEUTRAL_KEYS).
  assert trained_off == trained_on


def test_main_applies_it_and_a_contradiction_is_one_line(tmp_path):
  [result] = helpers.run_modules([(
      'resnet_jax.main', [f'--workdir={tmp_path / "run"}', '--config=configs/quickstart.py',
                          '--config.xla.cpu_concurrency_optimized_scheduler=false'],
      {'XLA_FLAGS': '--xla_cpu_enable_concurrency_optimized_scheduler=1'})])
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == (
      'error: config.xla.cpu_concurrency_optimized_scheduler=False contradicts XLA_FLAGS, which '
      'sets --xla_cpu_enable_concurrency_optimized_scheduler=1; drop one of them.')
  assert not (tmp_path / 'run').exists()  # Before anything was written.
