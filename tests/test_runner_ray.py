"""experiments.runner on a real Ray cluster: a head and a worker node on this machine, bound to
127.0.0.1 (ray.cluster_utils.Cluster), stopped by the tests. No mock of Ray."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from configs import quickstart
from experiments import runner, study
from resnet_jax.errors import UserError
from resnet_jax.train import workdir as workdir_lib
from tests import helpers

ray = pytest.importorskip('ray')


def _run(seed: int, steps: int = 20) -> runner.Run:
  config = quickstart.get_config()
  config.seed = seed
  study.apply_budget(config, steps=steps, batch_size=64, eval_split='test', evals=2, paper=False,
                     warmup_steps=0, unrolled=True)
  return runner.Run(name=f'digits-s{seed}', config=config, meta={'seed': seed})


def test_a_second_sweep_on_one_results_dir_is_refused_before_it_writes(tmp_path):
  with workdir_lib.lock(str(tmp_path), holder='sweep', flag='--results_dir'):
    with pytest.raises(UserError, match=r'--results_dir=.* is in use by another sweep \(pid '):
      runner.run_sweep([_run(0)], tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.lock']


def test_print_commands_gives_a_self_contained_trainer_command_per_unfinished_run(tmp_path):
  runs = [_run(0, steps=10), _run(1, steps=10)]
  first, second = runner.commands(runs, tmp_path)
  assert ' && python -m resnet_jax.main --config=' in first and 'digits-s0' in first
  # The command, run as another scheduler would (from any directory), trains the run.
  done = subprocess.run(first.replace(' python ', f' {sys.executable} '), shell=True, cwd='/',
                        env=helpers.env(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert (tmp_path / 'runs' / 'digits-s0' / 'summary.json').exists()
  assert runner.commands(runs, tmp_path) == [second]  # The finished run is left out.
  workdir_lib.check_same_run(str(tmp_path / 'runs' / 'digits-s0'), _prepared(runs[0]))


def _prepared(run):
  from resnet_jax.train import run as run_lib
  return run_lib.prepare(run.config, open_data=False).config


# The worker node holds a custom resource that a run can ask for, to be placed there.
WORKER = dict(num_cpus=1, node_ip_address='127.0.0.1', object_store_memory=80 * 2**20,
              resources={'worker_node': 1})


@pytest.fixture(scope='module')
def cluster():
  from ray.cluster_utils import Cluster
  nodes = Cluster(initialize_head=True, head_node_args={
      'num_cpus': 1, 'node_ip_address': '127.0.0.1', 'include_dashboard': False,
      'object_store_memory': 80 * 2**20})
  worker = nodes.add_node(**WORKER)
  nodes.wait_for_nodes()
  yield nodes, worker
  nodes.shutdown()


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The two runs trained one after the other on the embedded local instance."""
  out = tmp_path_factory.mktemp('local')
  return runner.run_sweep([_run(0), _run(1)], out)


RESULT = ('train_error', 'test_error', 'eval_examples', 'steps')


@pytest.mark.slow
def test_a_sweep_spread_over_two_nodes_gives_the_local_results(cluster, reference, tmp_path):
  nodes, _ = cluster
  rows = runner.run_sweep([_run(0), _run(1)], tmp_path,
                          runner.Placement(cluster=nodes.address, cpus_per_run=1))
  assert [r['status'] for r in rows] == ['ok', 'ok']
  for row, ref in zip(rows, reference):
    assert {k: row[k] for k in RESULT} == {k: ref[k] for k in RESULT}
  side = [runner._read_json(runner._sidecar_path(str(tmp_path), name))
          for name in ('digits-s0', 'digits-s1')]
  nodes_used = {s['node'] for s in side}
  assert len(nodes_used) == 2  # One run on each node (each asks for one node's only CPU).


@pytest.mark.slow
def test_a_run_whose_node_dies_resumes_elsewhere_with_the_same_numbers(cluster, tmp_path):
  nodes, worker = cluster  # Last of the module's cluster tests: it replaces the worker node.
  run = _run(0, steps=200)  # Checkpoints at 100 and 200: the node dies between them.
  checkpoints = tmp_path / 'killed' / 'runs' / run.name / 'checkpoints'

  def kill_the_worker_node_after_the_first_checkpoint():
    deadline = time.time() + 300
    while time.time() < deadline and not (checkpoints / '100').exists():
      time.sleep(0.1)
    nodes.remove_node(worker)  # Its raylet and workers die, the run's process with them.
    nodes.add_node(**WORKER)  # Where Ray retries the run.

  killer = threading.Thread(target=kill_the_worker_node_after_the_first_checkpoint, daemon=True)
  killer.start()
  # The run asks for the worker node's resource: it trains there, and after the kill on the
  # node that replaces it.
  [row] = runner.run_sweep([run], tmp_path / 'killed', runner.Placement(
      cluster=nodes.address, cpus_per_run=1, resources=(('worker_node', 1),)))
  killer.join()
  assert row['status'] == 'ok', row
  log = (tmp_path / 'killed' / 'logs' / f'{run.name}.log').read_text()
  assert 'Resumed from' in log and 'at step 100.' in log  # The kill came mid-run.
  [whole] = runner.run_sweep([run], tmp_path / 'whole')  # Uninterrupted, on the local instance.
  assert {k: row[k] for k in RESULT} == {k: whole[k] for k in RESULT}


@pytest.mark.slow
def test_a_two_process_run_in_a_sweep_trains_as_the_trainer_s_two_processes(tmp_path,
                                                                            monkeypatch):
  """Each process gets 2 CPU devices; the same two processes started by hand (test_multihost's
  launcher, which test_multihost holds to one process x 4 devices) give the same losses."""
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  run = _run(0, steps=6)
  run.config.log_every_steps = 1
  [row] = runner.run_sweep([run], tmp_path / 'ray', runner.Placement(
      cpus_per_run=1, processes_per_run=2))
  assert row['status'] == 'ok', row
  by_hand = tmp_path / 'by_hand'
  config = os.path.join(helpers.ROOT, 'configs', 'from_json.py')
  [command] = runner.commands([run], tmp_path / 'plain')
  path = command.split(':', 1)[1].split()[0]
  helpers.run_distributed(by_hand, config=f'{config}:{path}')
  np.testing.assert_allclose(helpers.train_losses(tmp_path / 'ray' / 'runs' / run.name),
                             helpers.train_losses(by_hand), rtol=1e-6)
  log = (tmp_path / 'ray' / 'logs' / f'{run.name}.log').read_text()
  assert 'process 0 of 2' in log and 'process 1 of 2' not in log  # Process 0 writes the log.
