"""Small things a new user hit: the first ETA, JAX's TPU-probe log line, the license, the extras."""

import logging
import tomllib

from resnet_jax import cli, metrics
from tests import helpers
from tests import trained_run


def test_the_first_eta_leaves_out_the_compile_time(monkeypatch):
  """The loop calls Progress.restart after its first step (resnet_jax/train/loop.py); the speed
  and the ETA of the first progress line are then those of the compiled steps."""
  clock = [0.0]
  monkeypatch.setattr(metrics.time, 'perf_counter', lambda: clock[0])
  progress = metrics.Progress(total_steps=1000, global_batch=100)
  clock[0] = 30.0  # Step 1: 30 s of compilation.
  progress.restart(1)
  clock[0] = 30.0 + 99 * 0.125  # Steps 2..100 at 0.125 s each.
  line = progress.line(100, loss=1.0, lr=0.1)
  assert '800 img/s' in line and 'ETA 1m52s' in line, line  # 900 steps at 0.125 s: 112.5 s.
  assert 'step 100/1000' in line
  loop_source = (helpers.ROOT / 'resnet_jax' / 'train' / 'loop.py').read_text()
  assert 'progress.restart(step)' in loop_source


def test_no_tpu_probe_line_in_a_cpu_runs_stderr(tmp_path_factory):
  # The shared quickstart run ran without JAX_PLATFORMS, so JAX probed for a TPU.
  _, stderr = trained_run.quickstart_run(tmp_path_factory)
  assert 'Final (step' in stderr
  assert 'Unable to initialize backend' not in stderr
  # What the filter drops: only that INFO line of JAX's backend logger.
  cli.quiet_tpu_probe()
  logger = logging.getLogger('jax._src.xla_bridge')
  probe = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "Unable to initialize "
                            "backend 'tpu': INTERNAL: Failed to open libtpu.so", (), None)
  other = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, 'An NVIDIA GPU may be '
                            'present on this machine, but a CUDA-enabled jaxlib is not installed.',
                            (), None)
  assert not logger.filter(probe) and logger.filter(other)


def test_license_and_extras():
  root = helpers.ROOT
  license_text = (root / 'LICENSE').read_text()
  assert license_text.lstrip().startswith('Apache License\n')
  assert 'Version 2.0, January 2004' in license_text
  assert 'END OF TERMS AND CONDITIONS' in license_text
  project = tomllib.loads((root / 'pyproject.toml').read_text())['project']
  assert project['license'] == 'Apache-2.0'
  assert any(d.startswith('safetensors>=') for d in project['dependencies'])
  assert any(d.startswith('tensorboard>=') for d in project['optional-dependencies']['tensorboard'])
  assert ".[tensorboard]" in (root / 'README.md').read_text()
