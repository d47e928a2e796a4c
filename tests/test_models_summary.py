"""`python -m resnet_jax.summary`: layer table, parameter counts, multiply-adds, --config, --table.
"""

import pathlib
import subprocess
import sys

from resnet_jax import models
from resnet_jax import summary
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'resnet_jax.summary', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=helpers.HANG_S)


def test_summary_of_a_net_named_in_the_config_argument():
  result = _run('--config=configs/cifar10.py:depth=110,placement=full_preact,scan=true')
  assert result.returncode == 0, result.stderr
  out = result.stdout
  # Units 2..18 of each stage share one row: one scanned module.
  assert any(line.split()[:2] == ['stage3_scan', '17'] for line in out.splitlines())
  assert 'parameters: 1,727,962 (1,719,866 without BN + 8,096 BN scales and biases)' in out
  assert 'multiply-adds per image: 2.317e+08 (XLA cost analysis' in out


def test_summary_from_a_config_file():
  result = _run('--config=configs/schema.py', '--config.model.depth=56')
  assert result.returncode == 0, result.stderr
  assert 'cifar ResNet-56' in result.stdout and 'parameters: 853,018' in result.stdout
  digits = _run('--config=configs/quickstart.py')  # The input is the dataset's: 8x8x1.
  assert 'input 8x8x1' in digits.stdout and 'parameters: 271,994' in digits.stdout


def test_layer_rows_add_up():
  model = models.create_model('imagenet', 50)
  rows = summary.layer_rows(model, (224, 224, 3))
  total, _ = summary.param_counts(summary.abstract_variables(model, (1, 224, 224, 3))['params'])
  assert sum(r[4] for r in rows) == total == 25_557_032
  assert [r[3] for r in rows if r[0].startswith('stage')][-1] == '7x7x2048'
  assert sum(r[5] for r in rows) == summary.analytic_multiply_adds(model, (224, 224, 3))


def test_paper_table_rows():
  # The whole table (python -m resnet_jax.summary --table) takes about a minute; two rows here.
  nets = [net for net in summary.PAPER_NETS if net[:2] in (('cifar', 20), ('imagenet', 50))]
  lines = summary.paper_table(nets).splitlines()
  assert lines[1].split()[:6] == ['cifar', 'ResNet-20', 'original', 'A', '269,722', '268,346']
  assert lines[2].split()[:6] == ['imagenet', 'ResNet-50', 'original', 'B', '25,557,032',
                                  '25,503,912']
  assert '25,557,032 torchvision' in lines[2] and lines[2].split()[-1] == '3.8e+09'
