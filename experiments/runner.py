"""Runs a study's training runs on Ray, resumably: one row per run.

Every run trains with resnet_jax.train.loop.train_and_evaluate in its own workdir,
DIR/runs/<name>. A rerun of the same sweep skips the runs that finished (summary.json) and
resumes the interrupted ones from their checkpoints, bit for bit, so a sweep killed at any
moment continues where it stopped.

Where the runs go (`Placement`): by default an embedded Ray instance sized to this machine,
started for the sweep and stopped after it; `cluster='auto'` or an address joins a running Ray
cluster. Ray Core, not Tune: a run here is one call of the trainer with a fixed config, which is
a Ray task with declared resources; Tune's trials, searchers and its own checkpoint and result
folders would duplicate what the trainer and this module already keep.

Each run is a task that asks for `cpus_per_run` CPUs and `gpus_per_run` GPUs (fractions share
a GPU; Ray sets CUDA_VISIBLE_DEVICES per task). A run of `processes_per_run` > 1 gets a placement
group of that many bundles, one process per bundle, joined by jax.distributed with the first
bundle's node as coordinator; only process 0 writes the run's logs, as the trainer does. A
one-process run whose worker or node dies is retried by Ray (`max_retries`); a multi-process
run that loses a process is stopped and submitted again whole. Either resumes from the run's
last checkpoint, so workdirs and the results dir must be on a filesystem that every node mounts
at the same path (the runner's own files, logs and locks need POSIX paths).
"""

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import signal
import socket
import sys
import time
import warnings

import ml_collections

from benchmarks import hardware
from resnet_jax import xla_flags
from resnet_jax.errors import RunError, UserError
from resnet_jax.metrics import best_eval_step, duration, read_metrics
from resnet_jax.train import optim
from resnet_jax.train import run as run_lib
from resnet_jax.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Run:
  name: str                            # unique and filesystem-safe, e.g. 'full_preact-d20-s0'
  config: ml_collections.ConfigDict    # the complete config of the run
  meta: dict                           # the study's columns, e.g. {'placement': ..., 'depth': 20}
  # If set, the checkpoint with the best accuracy on the config's eval split (a validation
  # split) is evaluated on this split at the end, and that is the row's test error.
  report_split: str | None = None


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where and with what each run of a sweep trains."""
  cluster: str = 'local'        # 'local' (embedded instance), 'auto' or a Ray address
  jobs: int = 1                 # local only: runs at once (each gets 1/jobs of the cores)
  cpus_per_run: float | None = None   # None: local, cores / jobs; a cluster, 1
  gpus_per_run: float | None = None   # fractions share a GPU; None: see resolve()
  processes_per_run: int = 1    # > 1: one jax.distributed process per placement-group bundle
  resources: tuple = ()         # custom Ray resources each process asks for, ((name, n), ...)
  max_retries: int = 3          # of a run whose worker or node died


def _total_steps(config) -> int:
  try:
    prepared = run_lib.prepare(config, open_data=False)
    return optim.num_train_steps(prepared.config, prepared.num_train)
  except UserError:  # The run reports it itself, in its row; the ETA only counts its steps.
    return int(config.num_train_steps)


def _steps_done(workdir: str) -> int:
  try:
    return max((int(r['step']) for r in read_metrics(workdir)), default=0)
  except Exception:  # A torn or foreign file: progress only, never fatal.
    return 0


def _sidecar_path(results_dir: str, name: str) -> str:
  return os.path.join(results_dir, 'runs', f'{name}.sweep.json')


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, value) -> None:
  workdir_lib.write_atomic(path, json.dumps(value, indent=2))


def _flat(config) -> dict:
  return workdir_lib.flatten(workdir_lib.as_dict(config))


def varying_keys(runs: list[Run]) -> list[str]:
  """The config keys whose values differ between the runs (the CSV has one column for each)."""
  flats = [_flat(run.config) for run in runs]
  keys = sorted(set().union(*flats)) if flats else []
  return [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]


def _row(run: Run, workdir: str, summary: dict | None, status: str, side: dict,
         varying: list[str]) -> dict:
  flat = _flat(run.config)
  row = dict(run.meta)
  row.setdefault('seed', run.config.seed)
  for key in varying:
    row[f'config.{key}'] = flat.get(key)
  ok = summary is not None and 'eval/accuracy' in summary
  row['train_error'] = (round(100 * (1 - float(summary['train/accuracy'])), 4)
                        if ok and 'train/accuracy' in summary else None)
  row['test_error'] = round(100 * (1 - float(summary['eval/accuracy'])), 4) if ok else None
  row['eval_examples'] = int(summary['eval/num_examples']) if ok else None
  row['steps'] = int(summary['step']) if summary else None
  report = side.get('report') if ok else None
  if report:  # Selected on the eval split, reported on another.
    row.update(selected_step=report['step'],
               val_error=round(100 * (1 - report['val_accuracy']), 4),
               test_error=round(100 * (1 - report['accuracy']), 4),
               eval_examples=report['num_examples'])
  row['wall_s'] = round(side.get('wall_s', 0.0), 1)
  row['hardware'] = side.get('hardware')
  row['workdir'] = workdir
  row['status'] = status
  return row


def run_one(config, workdir: str, report_split: str | None = None
            ) -> tuple[dict | None, str, str]:
  """Trains one run in this process: (summary or None, status, hardware). With report_split,
  the summary's 'report' is the best checkpoint's accuracy there (Run.report_split)."""
  from resnet_jax.train import loop, trained
  hw = hardware.devices_line()
  try:
    summary = loop.train_and_evaluate(config, workdir)
    if report_split and not summary.get('stopped'):
      weights = trained.open_weights(workdir, checkpoint='best')
      result = loop.evaluate_weights(weights, report_split, config.eval_batch_size)
      _, val_accuracy = best_eval_step(read_metrics(workdir), {weights.step})
      summary['report'] = {'split': report_split, 'step': weights.step,
                           'val_accuracy': float(val_accuracy),
                           'accuracy': result['eval/accuracy'],
                           'num_examples': result['eval/num_examples']}
  except workdir_lib.WorkdirInUse as e:
    # The run's state: another process (a trainer started by hand, say) is training it now.
    return None, f'in use: {e}', hw
  except (UserError, RunError) as e:
    return None, f'failed: {e}', hw
  if summary.get('stopped'):
    return summary, f'stopped: signal {summary.get("signal")}', hw
  return summary, 'ok', hw


@contextlib.contextmanager
def _log_to(path: str | None):
  """Sends the trainer's log lines of one run to `path`; None: nowhere (a process other than a
  distributed run's first)."""
  root = logging.getLogger()
  handler = logging.FileHandler(path) if path else logging.NullHandler()
  handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
  levels = [(root, root.level)] + [(h, h.level) for h in root.handlers]
  # Ray's own console handlers keep warnings only: the run's INFO lines go to its log.
  for console, level in levels[1:]:
    console.setLevel(max(level, logging.WARNING))
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  try:
    yield
  finally:
    root.removeHandler(handler)
    for thing, level in levels:
      thing.setLevel(level)
    handler.close()


def train_task(spec: dict, coordinator: str | None = None) -> dict:
  """One process of one run, on a Ray worker: its outcome (summary, status, hardware, seconds).

  The trainer saves a checkpoint and returns 'stopped' on SIGTERM, which Ray sends when the
  sweep is cancelled. A distributed run's process joins jax.distributed first (in a worker of
  its own: a process joins once)."""
  config = spec['config']
  started = time.perf_counter()
  with _log_to(spec['log']):
    try:
      xla_flags.apply(config)  # Before the run starts JAX's backends, in a fresh worker.
      if spec.get('distributed'):
        from resnet_jax import parallel  # pylint: disable=g-import-not-at-top
        config = config.copy_and_resolve_references()
        config.distributed.update(spec['distributed'], initialize='on',
                                  coordinator_address=coordinator)
        parallel.initialize_distributed(config.distributed)
    except (UserError, RunError) as e:
      return {'summary': None, 'status': f'failed: {e}', 'hardware': None, 'seconds': 0.0}
    summary, status, hw = run_one(config, spec['workdir'], spec.get('report_split'))
  import ray  # pylint: disable=g-import-not-at-top
  return {'summary': summary, 'status': status, 'hardware': hw,
          'seconds': time.perf_counter() - started,
          'node': ray.get_runtime_context().get_node_id()}


def _free_address() -> str:
  """HOST:PORT of this node with a port free now: the coordinator of a distributed run."""
  import ray  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('', 0))
    port = s.getsockname()[1]
  return f'{ray.util.get_node_ip_address()}:{port}'


class _Progress:
  """One line per run: which run, how far the sweep is (in steps), and the sweep's ETA."""

  def __init__(self, runs, results_dir):
    self.total = {r.name: _total_steps(r.config) for r in runs}
    self.done = {r.name: min(self.total[r.name], _steps_done(os.path.join(results_dir, 'runs',
                                                                           r.name)))
                 for r in runs}
    self.start_done = sum(self.done.values())
    self.started = time.perf_counter()
    self.count = len(runs)
    self.index = {r.name: i + 1 for i, r in enumerate(runs)}

  def line(self, name: str, what: str) -> None:
    total = sum(self.total.values())
    done = sum(self.done.values())
    trained = done - self.start_done
    elapsed = time.perf_counter() - self.started
    if done >= total:
      eta = 'ETA 0 s'
    elif trained > 0:
      eta = f'ETA {duration(elapsed / trained * (total - done))}'
    else:
      eta = 'ETA unknown'
    print(f'[{self.index[name]}/{self.count}] {name}: {what} | sweep {done}/{total} steps '
          f'({100 * done / max(total, 1):.0f}%), {duration(elapsed)} elapsed, {eta}', flush=True)


def _describe(summary, status) -> str:
  if status == 'ok' and summary and 'eval/accuracy' in summary:
    train = summary.get('train/accuracy')
    train = f'train error {100 * (1 - train):.2f}%, ' if train is not None else ''
    return f'done at step {summary["step"]}: {train}test error {100 * (1 - summary["eval/accuracy"]):.2f}%'
  return status


def check_placement(placement: Placement) -> None:
  """UserError naming the flag for a placement that cannot work."""
  if placement.jobs < 1:
    raise UserError(f'--jobs={placement.jobs} must be at least 1.')
  if placement.cpus_per_run is not None and placement.cpus_per_run <= 0:
    raise UserError(f'--cpus_per_run={placement.cpus_per_run} must be positive.')
  if placement.gpus_per_run is not None and placement.gpus_per_run < 0:
    raise UserError(f'--gpus_per_run={placement.gpus_per_run} must be 0 or more.')
  if placement.gpus_per_run is not None and placement.gpus_per_run > 1 and (
      placement.gpus_per_run != int(placement.gpus_per_run)):
    raise UserError(f'--gpus_per_run={placement.gpus_per_run:g}: above 1, Ray gives whole GPUs '
                    'only; ask for a fraction of one GPU or a whole number.')
  if placement.processes_per_run < 1:
    raise UserError(f'--processes_per_run={placement.processes_per_run} must be at least 1.')
  if placement.cluster != 'local' and placement.jobs != 1:
    raise UserError('--jobs applies to the embedded local instance only; on a cluster, size the '
                    'runs with --cpus_per_run and --gpus_per_run and Ray places them.')
  if placement.cluster != 'local':
    _check_reachable(placement.cluster)
  else:  # The CPUs now, before the study measures or writes anything; the rest once Ray is up.
    _check_fits(placement, {'CPU': hardware.cpu_count()}, only=('CPU',))


def _finished(runs, results_dir, varying, progress) -> tuple[dict, list[Run]]:
  """Rows of the runs that finished before, and the runs still to train."""
  rows, todo = {}, []
  for run in runs:
    workdir = os.path.join(results_dir, 'runs', run.name)
    summary = _read_json(os.path.join(workdir, workdir_lib.SUMMARY_FILE))
    if summary is None:
      todo.append(run)
      continue
    side = _read_json(_sidecar_path(results_dir, run.name)) or {}
    try:  # A finished run of another config is not this run's result.
      workdir_lib.check_same_run(workdir, run_lib.prepare(run.config, open_data=False).config)
    except UserError as e:
      rows[run.name] = _row(run, workdir, None, f'failed: {e}', side, varying)
      progress.line(run.name, f'failed: {e}')
      continue
    rows[run.name] = _row(run, workdir, summary, 'ok', side, varying)
    progress.done[run.name] = progress.total[run.name]
    progress.line(run.name, f'finished before, skipped ({_describe(summary, "ok")})')
  return rows, todo


def _check_names(runs) -> None:
  names = [run.name for run in runs]
  if len(set(names)) != len(names):
    raise UserError(f'run names must be unique; repeated: '
                    f'{sorted({n for n in names if names.count(n) > 1})}')


def run_sweep(runs: list[Run], results_dir: str, placement: Placement = Placement()
              ) -> list[dict]:
  """Trains every run that has not finished, on Ray; one row per run, in the order of `runs`.

  A run that raises UserError or RunError gets 'status': 'failed: <message>' and the sweep goes
  on. The caller holds the results dir's lock (study.results_lock), so no second sweep writes
  there. SIGTERM or SIGINT stops the running runs, which save their checkpoints, and exits (code
  128 + signal); rerunning the command resumes them.
  """
  _check_names(runs)
  check_placement(placement)
  results_dir = os.path.abspath(results_dir)
  workdir_lib.check_writable(results_dir, flag='--results_dir')
  for sub in ('runs', 'logs'):
    os.makedirs(os.path.join(results_dir, sub), exist_ok=True)
  varying = varying_keys(runs)
  progress = _Progress(runs, results_dir)
  rows, todo = _finished(runs, results_dir, varying, progress)
  if todo:
    with _ray(placement) as ray:
      placement = resolve(placement, ray.cluster_resources())
      print(f'Ray ({placement.cluster}: {_describe_resources(ray.cluster_resources())}): each '
            f'run asks for {_describe_resources(_bundle(placement))} x '
            f'{placement.processes_per_run} process(es).', flush=True)
      _check_fits(placement, ray.cluster_resources())
      rows.update(_train_on_ray(todo, results_dir, placement, varying, progress))
  return [rows[run.name] for run in runs]


class _DropPrefix(logging.Filter):
  def __init__(self, prefix: str):
    super().__init__()
    self.prefix = prefix

  def filter(self, record):
    return not record.getMessage().startswith(self.prefix)


def _quiet(logger: logging.Logger, prefix: str) -> None:
  """Drops `logger`'s records that start with `prefix` (once installed, for the process).

  Used for Ray's notice that a new local instance uses token authentication, its default where
  RAY_AUTH_MODE is unset: it reads as a problem on the study's console and asks nothing of the
  user. Setting RAY_AUTH_MODE instead would not do: Ray reads it when it is imported."""
  if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
    logger.addFilter(_DropPrefix(prefix))


@contextlib.contextmanager
def _ray(placement: Placement):
  """Ray, connected: an embedded instance for 'local' (stopped at the end), else the cluster."""
  import ray  # pylint: disable=g-import-not-at-top
  # A run's environment, the same on every worker: this checkout on the path, the driver's
  # XLA and data settings.
  env = {k: v for k, v in os.environ.items()
         if k in ('XLA_FLAGS', 'TFDS_DATA_DIR', 'JAX_PLATFORMS', 'JAX_ENABLE_X64')
         or k.startswith('XLA_PYTHON_CLIENT_')}
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')]))
  # A run gets only the accelerators it asks for. Since 2026 Ray leaves every GPU visible to a task
  # that asks for none (ray-project/ray#54868), and that run's JAX would take 75% of each GPU's
  # memory beside the runs Ray placed there; '1' restores Ray's CUDA_VISIBLE_DEVICES='' for it.
  env['RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO'] = os.environ.get('RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO',
                                                             '1')
  runtime_env = {'env_vars': env}
  kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False,
                runtime_env=runtime_env)
  if placement.cluster == 'local':
    # address='local' starts a new instance even where a cluster runs (RAY_ADDRESS, or one
    # started on this machine), which ray.init() alone would join.
    kwargs.update(address='local', num_cpus=hardware.cpu_count(),
                  # The object store holds only the runs' small outcomes.
                  object_store_memory=80 * 2**20)
  else:
    kwargs['address'] = placement.cluster
  started = not ray.is_initialized()
  if started:
    _quiet(logging.getLogger('ray._private.authentication.authentication_token_setup'),
           'Token authentication is enabled for this Ray cluster')
    try:
      with warnings.catch_warnings():
        # Ray starts its processes with fork-exec, which the warning (meant for a fork that
        # goes on running Python beside JAX's threads) does not concern.
        warnings.filterwarnings('ignore', message=r'os\.fork\(\) was called',
                                category=RuntimeWarning)
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
      raise RunError(f'--cluster={placement.cluster}: Ray could not start or connect: '
                     f'{" ".join(str(e).split())[:300]}') from None
  try:
    yield ray
  finally:
    if started:
      ray.shutdown()


def _check_fits(placement: Placement, have: dict, only=None) -> None:
  """UserError for a run that the embedded instance, which has `have` (Ray's resources), can
  never place (Ray would wait for ever); `only`: the resources to check (default: all asked for).

  A cluster is not checked: its autoscaler may add the nodes a run asks for."""
  if placement.cluster != 'local':
    return
  n = placement.processes_per_run
  flags = {'CPU': '--cpus_per_run', 'GPU': '--gpus_per_run'}
  for name, each in _bundle(placement).items():
    if each is None or (only is not None and name not in only):
      continue
    flag = flags.get(name, '--resources')
    if each * n > have.get(name, 0) + 1e-9:
      raise UserError(f'{flag}: each run asks for {each:g} {name} x {n} process(es), but this '
                      f'machine has {have.get(name, 0):g}; ask for less, or use --cluster.')


def _check_reachable(address: str) -> None:
  """UserError for a HOST:PORT that nothing answers at: ray.init would retry it for minutes."""
  host, sep, port = address.rpartition(':')
  if not sep or not port.isdigit() or '://' in address:
    return  # 'auto', or a ray:// client address: Ray resolves and reports these itself.
  try:
    socket.create_connection((host.strip('[]'), int(port)), timeout=10).close()
  except OSError as e:
    raise UserError(f'--cluster={address}: no Ray cluster answers there ({e.strerror or e}); '
                    'start one (`ray start --head`), give its head\'s HOST:PORT, or use '
                    '--cluster=local.') from None


def resolve(placement: Placement, have: dict) -> Placement:
  """The placement with each None resolved from the resources Ray has (`have`).

  CPUs: on the embedded instance each process gets its share of the cores (--jobs runs at once),
  on a cluster 1. GPUs: on a machine or cluster with GPUs each process gets its share of them
  (local: GPUs / (jobs x processes), whole GPUs where that is 1 or more, as Ray needs) or 1 on a
  cluster, else 0. A run that asks for no GPU is given none (see _ray), so without this default
  a sweep on a GPU machine would train on its CPUs."""
  per_machine = placement.jobs * placement.processes_per_run
  local = placement.cluster == 'local'
  cpus, gpus = placement.cpus_per_run, placement.gpus_per_run
  if cpus is None:
    cpus = have.get('CPU', 1) / per_machine if local else 1
  if gpus is None:
    share = have.get('GPU', 0) / per_machine if local else min(1.0, have.get('GPU', 0))
    gpus = float(int(share)) if share >= 1 else share
  return dataclasses.replace(placement, cpus_per_run=cpus, gpus_per_run=gpus)


def _bundle(placement: Placement) -> dict:
  """What each process of a run asks Ray for (placement resolved): {resource: amount}."""
  return {'CPU': placement.cpus_per_run,
          **({'GPU': placement.gpus_per_run} if placement.gpus_per_run else {}),
          **dict(placement.resources)}


def _describe_resources(amounts: dict) -> str:
  """'16 CPU, 1 GPU': Ray's resources without its bookkeeping ones (memory, node:IP, ...)."""
  hidden = ('node:', 'memory', 'object_store_memory', 'accelerator_type:')
  return ', '.join(f'{v:g} {k}' for k, v in sorted(amounts.items()) if not k.startswith(hidden))


def accelerator_env(placement: Placement, environ) -> dict:
  """What a run's process gets in its environment for the accelerators it asked for (placement
  resolved), on top of the sweep's (_ray); a variable you set is left as it is.

  A run that shares a GPU (0 < gpus_per_run < 1) gets JAX's 75% of the GPU's memory times its
  share: Ray divides GPUs but not their memory, and JAX takes 75% of a GPU at its start, so the
  second run on a GPU found none. A run that asks for no GPU and no TPU trains on the CPU
  (JAX_PLATFORMS=cpu), rather than probing the GPUs hidden from it, which logged a traceback."""
  gpus = placement.gpus_per_run or 0.0
  env = {}
  if 0 < gpus < 1 and not any(k in environ for k in (
      'XLA_PYTHON_CLIENT_MEM_FRACTION', 'XLA_PYTHON_CLIENT_PREALLOCATE',
      'XLA_PYTHON_CLIENT_ALLOCATOR')):
    env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{0.75 * gpus:.4f}'
  if not gpus and 'TPU' not in dict(placement.resources) and 'JAX_PLATFORMS' not in environ:
    env['JAX_PLATFORMS'] = 'cpu'
  return env


def _submit(ray, run: Run, results_dir: str, placement: Placement, fresh_worker: bool):
  """(refs of the run's processes, placement group or None); the first ref is process 0's.

  Nothing here waits: the processes of a multi-process run start once Ray has reserved their
  placement group, and each receives the coordinator address that a task on the first bundle
  picked (a free port on its node), so runs queued behind others do not hold up the sweep."""
  spec = {'config': run.config, 'workdir': os.path.join(results_dir, 'runs', run.name),
          'log': os.path.join(results_dir, 'logs', f'{run.name}.log'),
          'report_split': run.report_split}
  n = placement.processes_per_run
  # max_calls belongs to the remote function (options cannot set it): 1 gives each run a fresh
  # worker, 0 reuses workers.
  task = ray.remote(max_calls=1 if fresh_worker or n > 1 else 0)(train_task)
  # A lost process of a one-process run is retried by Ray; a multi-process run is restarted
  # whole by the sweep (_train_on_ray), since its other processes cannot go on alone.
  options = dict(num_cpus=placement.cpus_per_run, num_gpus=placement.gpus_per_run,
                 resources=dict(placement.resources),
                 # Set when the worker starts: JAX reads JAX_PLATFORMS when it is imported.
                 runtime_env={'env_vars': accelerator_env(placement, os.environ)},
                 max_retries=placement.max_retries if n == 1 else 0, name=run.name)
  if n == 1:
    return [task.options(**options).remote(spec)], None
  from ray.util import placement_group  # pylint: disable=g-import-not-at-top
  from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # pylint: disable=g-import-not-at-top
  bundle = _bundle(placement)
  # On a cluster one process per node (a pod slice's hosts); the embedded instance is one node.
  group = placement_group([bundle] * n,
                          strategy='PACK' if placement.cluster == 'local' else 'STRICT_SPREAD')
  at = lambda i: PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)
  address = ray.remote(_free_address).options(num_cpus=0, scheduling_strategy=at(0)).remote()
  refs = []
  for i in range(n):
    process = dict(spec, log=spec['log'] if i == 0 else None,
                   distributed={'num_processes': n, 'process_id': i})
    refs.append(task.options(**options, scheduling_strategy=at(i)).remote(process, address))
  return refs, group


@dataclasses.dataclass
class _Running:
  """A run's processes on Ray, from its (latest) submission."""
  run: Run
  refs: list
  group: object            # its placement group, or None for a one-process run
  started: float
  restarts: int = 0        # of a multi-process run whose process was lost


def _train_on_ray(todo, results_dir, placement, varying, progress) -> dict:
  import ray  # pylint: disable=g-import-not-at-top
  # Runs that ask for other XLA flags than a reused worker started with, GPUs, or
  # jax.distributed each need a fresh worker; else workers are reused and JAX imports once.
  asks = {tuple(xla_flags.wanted(run.config)) for run in todo}
  fresh = len(asks) > 1 or placement.gpus_per_run > 0
  running: dict[str, _Running] = {}
  ready = set()  # refs that finished, of runs whose other processes still run
  rows = {}
  stop = {'signum': None}

  def forward(signum, frame):
    del frame
    stop['signum'] = stop['signum'] or signum
    for entry in running.values():
      for ref in entry.refs:
        ray.cancel(ref)  # SIGINT in the worker: the trainer saves and returns 'stopped'.

  def submit(run):
    refs, group = _submit(ray, run, results_dir, placement, fresh)
    return _Running(run, refs, group, time.perf_counter())

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    for run in todo:
      running[run.name] = submit(run)
      progress.line(run.name, f'submitted ({progress.done[run.name]}/'
                              f'{progress.total[run.name]} steps done before), log in '
                              f'logs/{run.name}.log')
    while running:
      waiting = [ref for entry in running.values() for ref in entry.refs if ref not in ready]
      ready.update(ray.wait(waiting, num_returns=1, timeout=5.0)[0])
      for name, entry in list(running.items()):
        done = [ref for ref in entry.refs if ref in ready]
        lost = _lost(ray, done)
        if lost is None and len(done) < len(entry.refs):
          continue  # Still training.
        if lost is not None and len(entry.refs) > 1:
          # One process of a jax.distributed run is gone: its peers cannot go on without it.
          for ref in entry.refs:
            ray.cancel(ref, force=True)
          ray.util.remove_placement_group(entry.group)
          if entry.restarts < placement.max_retries and stop['signum'] is None:
            running[name] = dataclasses.replace(submit(entry.run), started=entry.started,
                                                restarts=entry.restarts + 1)
            progress.line(name, f'a process was lost ({type(lost).__name__}); restarted '
                                f'({entry.restarts + 1} of {placement.max_retries}), resuming '
                                'from its last checkpoint')
            continue
        del running[name]
        ready.difference_update(entry.refs)
        outcome = _outcome(ray, entry.run, entry.refs, results_dir,
                           time.perf_counter() - entry.started, lost)
        if entry.group is not None and lost is None:
          ray.util.remove_placement_group(entry.group)
        rows[name] = _finish(entry.run, results_dir, varying, progress, outcome)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if stop['signum'] is not None:
    print(f'Sweep stopped by {signal.Signals(stop["signum"]).name}; the runs saved checkpoints. '
          'Rerun the same command to resume.', file=sys.stderr, flush=True)
    raise SystemExit(128 + stop['signum'])
  return rows


def _lost(ray, refs):
  """The Ray error of the first of `refs` (finished) whose process was lost, else None.

  A process that returned, failed in Python or was cancelled was not lost."""
  from ray import exceptions as ray_errors  # pylint: disable=g-import-not-at-top
  for ref in refs:
    try:
      ray.get(ref, timeout=0)
    except (ray_errors.TaskCancelledError, ray_errors.RayTaskError):
      continue
    except ray_errors.RayError as e:
      return e
  return None


def _outcome(ray, run, refs, results_dir, seconds, lost=None) -> dict:
  """Process 0's outcome of a finished run, or a failed one naming the log's last line.

  `lost`: the error of a process that was lost (a multi-process run out of restarts, whose other
  processes the sweep cancelled): the run failed, it was not stopped."""
  from ray import exceptions as ray_errors  # pylint: disable=g-import-not-at-top
  try:
    if lost is not None:
      raise lost
    outcome = ray.get(refs[0])
    ray.get(refs[1:])  # The other processes of a distributed run end with it.
    return outcome
  except ray_errors.TaskCancelledError:
    return {'summary': None, 'status': 'stopped: cancelled', 'hardware': None,
            'seconds': seconds}
  except ray_errors.RayError as e:
    last = _last_line(os.path.join(results_dir, 'logs', f'{run.name}.log'))
    return {'summary': None, 'hardware': None, 'seconds': seconds,
            'status': f'failed: {type(e).__name__} (after the retries of a lost process); '
                      f'last log line: {last or "(empty)"}'}


def _last_line(path: str) -> str:
  try:
    with open(path, errors='replace') as f:
      lines = [l.strip() for l in f if l.strip()]
    return lines[-1][:300] if lines else ''
  except OSError:
    return ''


def _finish(run, results_dir, varying, progress, outcome) -> dict:
  workdir = os.path.join(results_dir, 'runs', run.name)
  side_path = _sidecar_path(results_dir, run.name)
  side = _read_json(side_path) or {}
  summary, status = outcome['summary'], outcome['status']
  side = {'wall_s': side.get('wall_s', 0.0) + outcome['seconds'],
          'hardware': outcome['hardware'] or side.get('hardware'),
          'node': outcome.get('node') or side.get('node'),  # Ray's id of process 0's node.
          'attempts': side.get('attempts', 0) + 1,
          'report': (summary or {}).get('report', side.get('report'))}
  _write_json(side_path, side)
  if status == 'ok':
    progress.done[run.name] = progress.total[run.name]
  else:
    progress.done[run.name] = min(progress.total[run.name], _steps_done(workdir))
  progress.line(run.name, _describe(summary, status))
  return _row(run, workdir, summary if status == 'ok' else None, status, side, varying)


def commands(runs: list[Run], results_dir: str) -> list[str]:
  """One self-contained `python -m resnet_jax.main` command per run that has not finished: for
  SLURM arrays, XManager or `gcloud ... --worker=all`. Each run's complete config is written to
  DIR/configs/<name>.json, which configs/from_json.py reads."""
  _check_names(runs)
  results_dir = os.path.abspath(results_dir)
  os.makedirs(os.path.join(results_dir, 'configs'), exist_ok=True)
  lines = []
  for run in runs:
    workdir = os.path.join(results_dir, 'runs', run.name)
    if os.path.exists(os.path.join(workdir, workdir_lib.SUMMARY_FILE)):
      continue
    path = os.path.join(results_dir, 'configs', f'{run.name}.json')
    _write_json(path, workdir_lib.as_dict(run.config))
    config_flag = shlex.quote(f'{os.path.join(ROOT, "configs", "from_json.py")}:{path}')
    lines.append(f'cd {shlex.quote(ROOT)} && python -m resnet_jax.main --config={config_flag} '
                 f'--workdir={shlex.quote(workdir)}')
  return lines
