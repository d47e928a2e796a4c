"""benchmarks/op_profile.py: a quick profile of the quickstart's step sorts the XLA ops into the
categories of its table; the HLO parser tells the three kinds of convolution apart."""

import subprocess
import sys

import jax
import jax.numpy as jnp

from benchmarks import op_profile
from tests import helpers


def test_the_convolutions_of_a_gradient_step_fall_in_three_categories():
  def loss(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(jax.nn.relu(y) ** 2)
  x, w = jnp.ones((8, 16, 16, 4)), jnp.ones((3, 3, 4, 4))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  categories = set(op_profile.hlo_categories(hlo, batch_size=8).values())
  assert {'conv forward', 'conv input-grad', 'conv filter-grad'} <= categories


def test_a_quick_profile_prints_the_table(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.op_profile', '--config=configs/quickstart.py',
       '--config.batch_size=16', '--warmup=1', '--steps=1', '--notorch'],
      cwd=helpers.ROOT, env=helpers.env(devices=1), capture_output=True, text=True,
                                        timeout=helpers.HANG_S)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {line.split('|')[1].strip(): line for line in result.stdout.splitlines()
          if line.startswith('| ')}
  for category in ('conv forward', 'conv input-grad', 'conv filter-grad', '**total busy time**'):
    assert category in rows, result.stdout
  # The project's step and the minimal Flax step; no PyTorch column without torch.
  assert 'project (XLA) ms/step | minimal Flax (XLA) ms/step |' in result.stdout
  totals = [float(cell) for cell in rows['**total busy time**'].strip(' |').split('|')[1:]]
  assert len(totals) == 2 and min(totals) > 0


def test_a_bad_workload_is_one_line():
  result = subprocess.run([sys.executable, '-m', 'benchmarks.op_profile', '--workload=r20'],
                          cwd=helpers.ROOT, env=helpers.env(devices=1), capture_output=True,
                          text=True, timeout=helpers.HANG_S)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: --workload='r20' is not one of")
