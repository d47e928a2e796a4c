"""benchmarks/throughput.py: a quick run on the digits quickstart prints a table and appends CSV
rows with positive figures and ratios; mistakes end in one line; without PyTorch one line says
so; the peers build the nets they claim to."""

import csv
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import hardware, throughput, timing
from benchmarks.peers import flax_minimal
from resnet_jax.errors import UserError
from resnet_jax.models import create_model
from tests import helpers

# A few steps of everything, on scikit-learn's digits (always there): seconds, not minutes.
QUICK = ('--config=configs/quickstart.py', '--config.batch_size=16', '--config.eval_batch_size=40',
         '--warmup=1', '--steps=2', '--loop_steps=6', '--loop_warmup=2', '--input_batches=2')
TABLE_HEADER = ['workload', 'impl', 'model', 'batch', 'dtype', 'step ms', 'img/s', 'project/impl',
                'compile s', 'loop img/s', 'input img/s', 'TFLOP/s', 'MFU', 'peak mem']


def _benchmark(tmp_path, *args):
  """Runs the benchmark as a user would, with torch made unimportable (as in CI's venv)."""
  stub = tmp_path / 'hide_torch' / 'torch'
  stub.mkdir(parents=True, exist_ok=True)
  (stub / '__init__.py').write_text("raise ImportError('torch is hidden by the test')\n")
  env = helpers.env(devices=1)
  # The second run compiles what the first did: a compilation cache keeps the test short.
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  env['PYTHONPATH'] = os.pathsep.join(p for p in (str(stub.parent), env.get('PYTHONPATH')) if p)
  return subprocess.run([sys.executable, '-m', 'benchmarks.throughput', *args], cwd=helpers.ROOT,
                        env=env, capture_output=True, text=True, timeout=helpers.HANG_S)


def _table(stdout):
  lines = [line for line in stdout.splitlines() if line.startswith('|')]
  cells = [[c.strip() for c in line.strip('|').split('|')] for line in lines]
  assert cells[0] == TABLE_HEADER
  assert set(''.join(cells[1])) <= {'-'}  # The Markdown separator row.
  return [dict(zip(TABLE_HEADER, row)) for row in cells[2:]]


def _number(text) -> float:
  return float(str(text).replace(',', '').replace('%', ''))


def test_a_quick_run_prints_a_table_and_appends_csv_rows(tmp_path):
  path = tmp_path / 'throughput.csv'
  first = _benchmark(tmp_path, *QUICK, '--peers=project,flax,torch', f'--csv={path}')
  assert first.returncode == 0, first.stderr[-3000:]

  shown = _table(first.stdout)
  assert [r['impl'] for r in shown] == ['project', 'flax_minimal']
  for row in shown:
    for column in ('step ms', 'img/s', 'project/impl', 'compile s', 'TFLOP/s'):
      assert _number(row[column]) > 0, (column, row)
    assert row['MFU'] == 'n/a'  # No peak is tabled for CPUs.
  assert _number(shown[0]['loop img/s']) > 0 and _number(shown[0]['input img/s']) > 0
  assert shown[0]['peak mem'] == 'n/a'  # CPUs report no device memory.
  # PyTorch is missing: one plain line says so, and no traceback.
  skipped = [line for line in first.stdout.splitlines() if 'PyTorch peers are skipped' in line]
  assert len(skipped) == 1, first.stdout
  assert 'Traceback' not in first.stdout + first.stderr

  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['impl'] for r in rows] == ['project', 'flax_minimal']
  project, flax = rows
  for column in ('step_ms', 'img_per_s', 'lower_s', 'compile_s', 'gflop_per_step', 'tflop_per_s',
                 'step_mem_bytes', 'loop_steps_timed', 'loop_img_per_s', 'input_img_per_s',
                 'input_over_step', 'cpu_count'):
    assert float(project[column]) > 0, column
  assert float(project['project_over_impl']) == 1.0
  assert float(flax['project_over_impl']) == pytest.approx(
      float(project['img_per_s']) / float(flax['img_per_s']), rel=1e-3)
  assert project['peak_mem_bytes'] == 'n/a' and project['mfu'] == 'n/a'
  assert project['data_pipeline'] in ('grain', 'device')
  assert project['image_shape'] == '8x8x1' and project['batch_size'] == '16'
  assert project['overrides'] == '--config.batch_size=16 --config.eval_batch_size=40'
  assert project['platform'] == 'cpu' and project['jax'] == jax.__version__
  assert project['run_id'] == flax['run_id']
  assert project['xla_flags'] == '--xla_force_host_platform_device_count=1'  # As the test set it.

  # A second run appends; --peak_flops gives an MFU.
  second = _benchmark(tmp_path, *QUICK, '--peers=flax', '--peak_flops=1e11', '--loop_steps=0',
                      '--input_batches=0', f'--csv={path}')
  assert second.returncode == 0, second.stderr[-3000:]
  with open(path, newline='') as f:
    again = list(csv.DictReader(f))
  assert again[:2] == rows and len(again) == 3
  assert again[2]['impl'] == 'flax_minimal' and again[2]['run_id'] != project['run_id']
  assert 0 < float(again[2]['mfu']) < 1 and again[2]['peak_flops_source'] == '--peak_flops'
  assert again[2]['project_over_impl'] == ''  # The project was not timed in that run.
  assert 'compilation cache' in again[2]['note']  # Its compile time is a cache load.


MISTAKES = [
    (['--config=configs/quickstart.py', '--config.batch_sise=3'],
     "has no key 'batch_sise'; did you mean --config.batch_size?"),
    (['--config=configs/quickstart.py', '--config.model.depth=21'], 'depth=21'),
    (['--workloads=cifar_r21_fp32'], "no preset 'cifar_r21_fp32'; did you mean cifar_r20_fp32?"),
    ([], 'give either --config=FILE'),
    (['--config=configs/quickstart.py', '--peers=project,mxnet'], "'mxnet' is not one of"),
    (['--config=configs/quickstart.py', '--steps=0'], '--steps=0 must be at least 1'),
    # Empty lists timed nothing and ended with '0 rows appended', exit 0.
    (['--config=configs/quickstart.py', '--peers='], '--peers is empty; give one or more of'),
    (['--config=configs/quickstart.py', '--torch_variants='], '--torch_variants is empty'),
]


def test_mistakes_exit_2_with_one_line():
  results = helpers.run_modules([('benchmarks.throughput', args, None) for args, _ in MISTAKES])
  for (args, expected), result in zip(MISTAKES, results):
    assert result.returncode == 2, (args, result.stderr[-2000:])
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], args
    assert result.stderr.startswith('error: ') and expected in result.stderr, args


def test_the_timing_method_is_the_median_of_the_timed_steps():
  calls = []
  times = timing.time_steps(lambda: calls.append(1), lambda _: None, warmup=2, steps=5)
  assert len(calls) == 7 and len(times.times_s) == 5
  assert times.median_s == sorted(times.times_s)[2]
  with pytest.raises(ValueError):
    timing.time_steps(lambda: None, lambda _: None, warmup=0, steps=5)


def test_interleaved_timing_takes_turns_and_reverses_the_order():
  order = []
  steps = {name: (lambda name=name: order.append(name)) for name in ('a', 'b', 'c')}
  times = timing.time_interleaved(steps, lambda _: None, warmup=2, steps=3)
  # Warm-up of each on its own, then rounds of one step each, every other round reversed.
  assert order == ['a', 'a', 'b', 'b', 'c', 'c'] + ['a', 'b', 'c', 'c', 'b', 'a', 'a', 'b', 'c']
  assert set(times) == {'a', 'b', 'c'}
  assert all(len(t.times_s) == 3 and t.median_s == sorted(t.times_s)[1] for t in times.values())
  with pytest.raises(ValueError):
    timing.time_interleaved(steps, lambda _: None, warmup=1, steps=0)


def test_interleaved_timing_cancels_a_drift_that_sequential_timing_reports(monkeypatch):
  # Two equally fast steps on a machine that slows down steadily (a simulated clock): timed one
  # after the other the second looks 20% slower; timed in turns they come out alike.
  clock = {}
  monkeypatch.setattr(timing.time, 'perf_counter', lambda: clock['t'])

  def work():
    clock['t'] += clock['cost']
    clock['cost'] *= 1.01

  clock.update(t=0.0, cost=1.0)
  first, second = [timing.time_steps(work, lambda _: None, warmup=1, steps=20) for _ in range(2)]
  assert second.median_s / first.median_s > 1.2
  clock.update(t=0.0, cost=1.0)
  turns = timing.time_interleaved({'a': work, 'b': work}, lambda _: None, warmup=1, steps=20)
  assert abs(turns['b'].median_s / turns['a'].median_s - 1) < 0.02


@pytest.mark.parametrize('device_kind, dtype, expected', [
    ('NVIDIA H200', 'bfloat16', 989.4e12),
    ('NVIDIA H100 80GB HBM3', 'float32', 494.7e12),  # TF32, XLA's default for float32 convs.
    ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
    ('NVIDIA A100-SXM4-80GB', 'bfloat16', 312e12),
    ('TPU v4', 'bfloat16', 275e12),
    ('TPU v5 lite', 'float32', 197e12),
    ('TPU v5', 'bfloat16', 459e12),
    ('NVIDIA H100 NVL', 'bfloat16', None),  # A variant that is not tabled.
    ('cpu', 'float32', None),
])
def test_peak_flops_table(device_kind, dtype, expected):
  peak, source = hardware.peak_flops(device_kind, dtype)
  assert peak == expected and source
  assert hardware.peak_flops(device_kind, dtype, override=5e12) == (5e12, '--peak_flops')


def _num_params(model, image_shape):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)),
                                             train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


@pytest.mark.parametrize('family, depth, shape', [
    ('cifar', 20, (32, 32, 3)), ('cifar', 56, (32, 32, 3)), ('imagenet', 50, (224, 224, 3))])
def test_the_flax_peer_builds_the_projects_net(family, depth, shape):
  # Same parameters as the project's net of that depth (option A for CIFAR, v1.5 for ImageNet):
  # the peer does the same work, so the ratio compares implementations, not nets.
  peer = flax_minimal.create_model(family, depth, 10 if family == 'cifar' else 1000, 'float32')
  assert _num_params(peer, shape) == _num_params(create_model(family, depth), shape)


def test_the_torch_peers_train_a_step():
  torch = pytest.importorskip('torch', reason='torch is an optional extra (.[benchmark])')
  from benchmarks.peers import torch_peers
  spec = {'family': 'cifar', 'depth': 8, 'num_classes': 10, 'dtype': 'float32',
          'image_shape': [8, 8, 3], 'batch_size': 4, 'learning_rate': 0.1, 'momentum': 0.9,
          'nesterov': False, 'weight_decay': 1e-4, 'warmup': 1, 'steps': 2,
          'variants': ['eager']}
  result = torch_peers.run(spec)
  assert result['skipped'] == [] and [r['impl'] for r in result['rows']] == ['torch_eager']
  assert result['rows'][0]['step_s'] > 0
  model, _ = torch_peers.create_model({**spec, 'depth': 20, 'image_shape': [32, 32, 3]})
  assert sum(p.numel() for p in model.parameters()) == _num_params(
      create_model('cifar', 20), (32, 32, 3))
  del torch


def test_each_preset_runs_in_a_process_of_its_own_with_its_xla_flags(tmp_path):
  path = tmp_path / 'presets.csv'
  result = _benchmark(tmp_path, '--workloads=cifar_r20_fp32,cifar_r20_bf16', '--peers=project',
                      '--warmup=1', '--steps=1', '--loop_steps=0', '--input_batches=0',
                      f'--csv={path}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.count('in a process of its own') == 2
  assert [r['workload'] for r in _table(result.stdout)] == ['cifar_r20_fp32', 'cifar_r20_bf16']
  with open(path, newline='') as f:
    fp32, bf16 = list(csv.DictReader(f))
  assert fp32['run_id'] == bf16['run_id']  # One run, two processes.
  # config.xla of each, as resnet_jax.main would set it: XLA's default scheduler for float32,
  # the concurrency-optimised one off for bfloat16.
  devices = '--xla_force_host_platform_device_count=1'
  assert fp32['xla_flags'] == devices
  assert bf16['xla_flags'] == f'{devices} --xla_cpu_enable_concurrency_optimized_scheduler=false'
  assert float(fp32['img_per_s']) > 0 and float(bf16['img_per_s']) > 0
  assert '[cifar_r20_bf16] hardware: cpu:' in result.stdout


def test_a_preset_whose_process_fails_fails_the_run(tmp_path):
  path = tmp_path / 'failed.csv'
  result = _benchmark(tmp_path, '--workloads=cifar_r20_fp32,cifar_r20_bf16', '--num_devices=2',
                      '--peers=project', f'--csv={path}')
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  # Each process's own one-line error, then the run's.
  assert lines.count('error: --num_devices=2, but there are 1 devices.') == 2, lines
  assert lines[-1] == ('error: no workload could be measured (cifar_r20_fp32, cifar_r20_bf16); '
                       'the errors are above.')
  assert not path.exists()


def test_a_csv_that_cannot_be_appended_to_is_refused_before_any_measuring(tmp_path):
  """issue 20: checked by throughput.main before the first workload is timed."""
  with pytest.raises(UserError, match='is a directory; give a file name'):
    throughput.check_csv(tmp_path)
  afile = tmp_path / 'afile'
  afile.write_text('x')
  with pytest.raises(UserError, match='lies under .*afile, which is a file'):
    throughput.check_csv(afile / 'rows.csv')
  fresh = tmp_path / 'new' / 'rows.csv'
  assert throughput.check_csv(fresh) and not fresh.exists()
  afile.write_text('other,columns\n')
  with pytest.raises(UserError, match='has other columns'):
    throughput.check_csv(afile)
  run = tmp_path / 'run'  # A training run's folder: its files are the trainer's.
  (run / 'checkpoints').mkdir(parents=True)
  (run / 'config.json').write_text('{}')
  with pytest.raises(UserError, match=f'lies inside the training run {run}, whose files only'):
    throughput.check_csv(run / 'throughput.csv')
  assert sorted(p.name for p in run.iterdir()) == ['checkpoints', 'config.json']
