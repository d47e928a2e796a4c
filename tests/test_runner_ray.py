"""experiments.runner on a real Ray cluster: a head and a worker node on this machine, bound to
127.0.0.1 (ray.cluster_utils.Cluster), stopped by the tests. No mock of Ray."""

import json
import os
import subprocess
import sys
import time

import pytest

from configs import quickstart
from experiments import runner, study
from resnet_jax.errors import UserError
from resnet_jax.train import workdir as workdir_lib
from tests import helpers

ray = pytest.importorskip('ray')
# One xdist worker runs them all, in order: the cluster tests share (and replace) its nodes.
pytestmark = pytest.mark.xdist_group('ray_cluster')


def test_this_module_runs_on_one_xdist_worker(request):
  """Its tests share one cluster, which needs `--dist loadgroup` to keep them on one worker; a
  pytest that silently drops the grouping (9.2 with xdist 3.8, pytest-xdist#1386) fails here."""
  if os.environ.get('PYTEST_XDIST_WORKER') and getattr(request.config.option, 'loadgroup', False):
    assert request.node.nodeid.endswith('@ray_cluster'), request.node.nodeid


def _run(seed: int, steps: int = 20) -> runner.Run:
  config = quickstart.get_config()
  config.seed = seed
  study.apply_budget(config, steps=steps, batch_size=64, eval_split='test', evals=2, paper=False,
                     warmup_steps=0, unrolled=True)
  return runner.Run(name=f'digits-s{seed}', config=config, meta={'seed': seed})


def test_a_run_the_embedded_instance_can_never_hold_is_one_line_and_trains_nothing(tmp_path):
  with pytest.raises(UserError, match=r'--cpus_per_run: each run asks for 64 CPU x 1 process\(es\)'
                                      r', but this machine has \d+; ask for less, or use '
                                      r'--cluster\.'):
    runner.run_sweep([_run(0)], tmp_path, runner.Placement(cpus_per_run=64))
  with pytest.raises(UserError, match=r'--resources: each run asks for 1 TPU x 2 process'):
    runner.run_sweep([_run(0)], tmp_path, runner.Placement(resources=(('TPU', 1),),
                                                           processes_per_run=2))
  assert not list((tmp_path / 'runs').iterdir())


def _visible_gpus():
  return os.environ.get('CUDA_VISIBLE_DEVICES')


def test_a_run_that_asks_for_no_gpu_is_given_none():
  """Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a task that asks for no GPU; the runner's
  Ray sets it to '' (no GPU), as Ray did before."""
  with runner._ray(runner.Placement()) as ray:  # pylint: disable=protected-access
    assert ray.get(ray.remote(num_gpus=0)(_visible_gpus).remote()) == ''


def test_the_embedded_instance_starts_without_a_warning_on_the_study_s_console():
  """With RAY_AUTH_MODE unset, as a user runs a study, Ray chooses token authentication for the
  new local instance and says so on the console; the study's Ray starts, runs a task and keeps
  that line off the console."""
  code = ('from experiments import runner\n'
          'def one():\n  return 1\n'
          'with runner._ray(runner.Placement()) as ray:\n'
          '  assert ray.get(ray.remote(one).remote()) == 1\n')
  env = helpers.env(1)
  env.pop('RAY_AUTH_MODE', None)
  proc = subprocess.run([sys.executable, '-c', code], cwd=helpers.ROOT, env=env,
                        capture_output=True, text=True, timeout=helpers.HANG_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Token authentication' not in proc.stderr, proc.stderr[-3000:]


def test_a_run_that_a_trainer_outside_the_sweep_holds_is_reported_in_use_and_left_alone(
    tmp_path):
  """issue 21: the row says what the run's own state is (trained by another process now),
  not 'failed', and nothing in its workdir changes."""
  workdir = tmp_path / 'runs' / 'digits-s0'
  workdir.mkdir(parents=True)
  (workdir / 'metrics.jsonl').write_text('{"step": 1}\n')
  with workdir_lib.lock(str(workdir)):  # As `python -m resnet_jax.main --workdir=...` holds it.
    before = helpers.tree_digest(workdir)
    [row] = runner.run_sweep([_run(0)], tmp_path)
    assert helpers.tree_digest(workdir) == before
  assert row['status'].startswith(f'in use: --workdir={workdir} is in use by another run (pid '
                                  f'{os.getpid()} on '), row['status']


def test_print_commands_gives_a_self_contained_trainer_command_per_unfinished_run(tmp_path):
  runs = [_run(0, steps=10), _run(1, steps=10)]
  first, second = runner.commands(runs, tmp_path)
  assert ' && python -m resnet_jax.main --config=' in first and 'digits-s0' in first
  # The command, run as another scheduler would (from any directory), trains the run.
  done = subprocess.run(first.replace(' python ', f' {sys.executable} '), shell=True, cwd='/',
                        env=helpers.env(), capture_output=True, text=True, timeout=helpers.HANG_S)
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
  yield [nodes, worker]  # A test that replaces the worker node puts the new one here.
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


def _sweep_in_a_driver_process(results_dir, placement: str, steps: int, devices: int = 8):
  """A sweep of _run(0, steps) in a driver process of its own, as a study command is; Ray starts
  nodes only from a main thread, which the test keeps for that. Its row's numbers come back."""
  code = ('import json; from experiments import runner; from tests import test_runner_ray as t; '
          f'[row] = runner.run_sweep([t._run(0, steps={steps})], {str(results_dir)!r}, '
          f'runner.Placement({placement})); '
          'print(json.dumps({k: row[k] for k in ("status", *t.RESULT)}))')
  return subprocess.Popen([sys.executable, '-c', code], cwd=helpers.ROOT,
                          env=helpers.env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _kill_the_worker_node_at(checkpoint, nodes, worker, driver):
  """Removes the worker node once `checkpoint` is saved (its raylet and workers die, a run's
  process with them) and starts a new one, where Ray can place the run again."""
  deadline = time.time() + 600
  while (time.time() < deadline and not (checkpoint / '_CHECKPOINT_METADATA').exists()
         and driver.poll() is None):
    time.sleep(0.1)
  nodes.remove_node(worker)
  return nodes.add_node(**WORKER)


def _numbers(driver) -> dict:
  out, err = driver.communicate(timeout=helpers.HANG_S)
  assert driver.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_run_whose_node_dies_resumes_elsewhere_with_the_same_numbers(cluster, tmp_path):
  nodes, worker = cluster  # The module's last tests: they replace the worker node.
  # The run asks for the worker node's resource: it trains there, and after the kill on the
  # node that replaces it. It checkpoints at 50 and 100 steps; the node dies between them.
  driver = _sweep_in_a_driver_process(tmp_path / 'killed', f'cluster={nodes.address!r}, '
                                      "cpus_per_run=1, resources=(('worker_node', 1),)",
                                      steps=100)
  run_dir = tmp_path / 'killed' / 'runs' / 'digits-s0'
  cluster[1] = _kill_the_worker_node_at(run_dir / 'checkpoints' / '50', nodes, worker, driver)
  killed = _numbers(driver)
  assert killed['status'] == 'ok', killed
  log = (tmp_path / 'killed' / 'logs' / 'digits-s0.log').read_text()
  assert 'Resumed from' in log and 'at step 50.' in log  # The kill came mid-run.
  [whole] = runner.run_sweep([_run(0, steps=100)], tmp_path / 'whole')  # Without a break.
  assert {k: whole[k] for k in killed} == killed


@pytest.mark.slow
def test_a_two_process_run_that_loses_a_node_restarts_whole_and_ends_as_the_trainer_does(
    cluster, tmp_path):
  """One process on each node (STRICT_SPREAD), 2 CPU devices each, joined by jax.distributed:
  the worker node dies after the first checkpoint, the sweep stops the surviving process and
  starts both again from that checkpoint. The run ends with the state of the same two processes
  started by hand (test_multihost's launcher) and run without a break."""
  nodes, worker = cluster
  driver = _sweep_in_a_driver_process(
      tmp_path / 'killed', f'cluster={nodes.address!r}, cpus_per_run=1, processes_per_run=2',
      steps=100, devices=2)
  run_dir = tmp_path / 'killed' / 'runs' / 'digits-s0'
  cluster[1] = _kill_the_worker_node_at(run_dir / 'checkpoints' / '50', nodes, worker, driver)
  killed = _numbers(driver)
  assert killed['status'] == 'ok', killed
  log = (tmp_path / 'killed' / 'logs' / 'digits-s0.log').read_text()
  assert 'Resumed from' in log and 'at step 50.' in log
  assert 'process 0 of 2' in log and 'process 1 of 2' not in log  # Process 0 writes the log.
  by_hand = tmp_path / 'by_hand'
  [command] = runner.commands([_run(0, steps=100)], tmp_path / 'plain')
  config = os.path.join(helpers.ROOT, 'configs', 'from_json.py')
  helpers.run_distributed(by_hand, config=f'{config}:{command.split(":", 1)[1].split()[0]}')
  (step, state), (hand_step, hand_state) = helpers.final_params(run_dir), helpers.final_params(
      by_hand)
  assert step == hand_step == 100
  helpers.assert_trees_equal(state, hand_state)


def test_a_run_out_of_restarts_is_failed_with_its_log_s_last_line_not_stopped(tmp_path):
  """A multi-process run whose process was lost once too often: the sweep cancelled its other
  processes, but the row says it failed, and why, not 'stopped: cancelled'."""
  (tmp_path / 'logs').mkdir()
  (tmp_path / 'logs' / 'digits-s0.log').write_text('step 40\nthe last line\n\n')
  outcome = runner._outcome(ray, _run(0), [], str(tmp_path), 1.0,
                            lost=ray.exceptions.WorkerCrashedError())
  assert outcome['status'] == ('failed: WorkerCrashedError (after the retries of a lost '
                               'process); last log line: the last line')
