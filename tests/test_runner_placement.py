"""Where a sweep's runs train: the placement's defaults from what Ray has, and what a run that
shares a GPU is given. Pure functions; the sweeps themselves are in test_runner_ray.py."""

import argparse
import subprocess
import sys

import pytest

from benchmarks import hardware
from experiments import runner, study
from tests import helpers

Placement = runner.Placement


@pytest.mark.parametrize('placement, have, cpus, gpus', [
    # A CPU machine: the cores shared by the runs at once, no GPU.
    (Placement(jobs=2), {'CPU': 16.0}, 8.0, 0.0),
    # One GPU and four runs at once: a quarter each, which is what the flag would say.
    (Placement(jobs=4), {'CPU': 16.0, 'GPU': 1.0}, 4.0, 0.25),
    # Eight GPUs, eight runs: one each; eight GPUs, three runs: whole GPUs only (Ray's rule).
    (Placement(jobs=8), {'CPU': 64.0, 'GPU': 8.0}, 8.0, 1.0),
    (Placement(jobs=3), {'CPU': 48.0, 'GPU': 8.0}, 16.0, 2.0),
    # A cluster: 1 CPU, and 1 GPU where it has GPUs.
    (Placement(cluster='auto'), {'CPU': 64.0, 'GPU': 8.0}, 1.0, 1.0),
    (Placement(cluster='auto'), {'CPU': 64.0}, 1.0, 0.0),
    # Said on the command line: kept, 0 GPUs included.
    (Placement(jobs=4, cpus_per_run=2.0, gpus_per_run=0.0), {'CPU': 16.0, 'GPU': 1.0}, 2.0, 0.0),
])
def test_a_placement_s_defaults_come_from_what_ray_has(placement, have, cpus, gpus):
  resolved = runner.resolve(placement, have)
  assert (resolved.cpus_per_run, resolved.gpus_per_run) == (cpus, gpus)


def test_a_run_gets_the_environment_of_the_accelerators_it_asked_for():
  env = lambda gpus, environ=None, **kw: runner.accelerator_env(
      Placement(cpus_per_run=1.0, gpus_per_run=gpus, **kw), environ or {})
  # A share of a GPU: that share of JAX's 75% of its memory (measured on an H200: a limit of
  # 26.2 GiB at 0.1875, 104.9 GiB by default).
  assert env(0.25) == {'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.1875'}
  assert env(0.5) == {'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.3750'}
  assert env(1.0) == {} and env(2.0) == {}  # Whole GPUs: JAX's own default.
  for key in ('XLA_PYTHON_CLIENT_MEM_FRACTION', 'XLA_PYTHON_CLIENT_PREALLOCATE',
              'XLA_PYTHON_CLIENT_ALLOCATOR'):
    assert env(0.25, {key: 'x'}) == {}  # Yours wins.
  # No GPU: the CPU, unless the run asks for TPU chips or you chose the platforms.
  assert env(0.0) == {'JAX_PLATFORMS': 'cpu'}
  assert env(0.0, resources=(('TPU', 4.0),)) == {}
  assert env(0.0, {'JAX_PLATFORMS': 'cuda'}) == {}


@pytest.mark.parametrize('environ, platforms',
                         [({}, 'cpu'), ({'JAX_PLATFORMS': 'cpu,tpu'}, 'cpu,tpu')])
def test_a_study_s_own_process_leaves_the_accelerators_to_its_runs(environ, platforms):
  code = ('import jax\nfrom experiments import study\nstudy.leave_accelerators_to_runs()\n'
          'print(jax.config.jax_platforms)')
  env = {k: v for k, v in helpers.env(1).items() if k != 'JAX_PLATFORMS'}
  result = subprocess.run([sys.executable, '-c', code], cwd=helpers.ROOT, env={**env, **environ},
                          capture_output=True, text=True, timeout=helpers.HANG_S)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == [platforms]


def test_a_gpu_count_ray_cannot_give_is_one_line():
  from resnet_jax.errors import UserError
  with pytest.raises(UserError, match=r'--gpus_per_run=1.5: above 1, Ray gives whole GPUs only'):
    runner.check_placement(Placement(gpus_per_run=1.5))
  runner.check_placement(Placement(gpus_per_run=2.0))
  runner.check_placement(Placement(gpus_per_run=0.25))


def test_cpus_the_machine_lacks_are_refused_before_the_study_measures_anything(tmp_path):
  """The embedded instance has this machine's cores: a run that asks for more is refused by
  check_placement, which a study calls on its flags before it writes or measures anything (it
  was refused only once Ray had started, after the study's init measurements)."""
  from resnet_jax.errors import UserError
  cores = hardware.cpu_count()
  for ask in (Placement(cpus_per_run=cores + 1),
              Placement(cpus_per_run=1, processes_per_run=cores + 1)):
    with pytest.raises(UserError, match=rf'--cpus_per_run: each run asks for .* but this machine '
                                        rf'has {cores}; ask for less, or use --cluster\.'):
      runner.check_placement(ask)
  runner.check_placement(Placement(cpus_per_run=cores))
  parser = argparse.ArgumentParser()
  study.add_flags(parser)
  with pytest.raises(UserError, match='--cpus_per_run'):
    study.parse_args(parser, ['--budget=smoke', f'--results_dir={tmp_path / "out"}',
                              f'--cpus_per_run={cores + 1}'])
  assert not (tmp_path / 'out').exists()
