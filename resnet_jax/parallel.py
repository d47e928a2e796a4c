"""Data parallelism over every device of every process.

The train and eval steps are written once, with per-device semantics on the named axis `AXIS`:
they see one device's slice of the global batch and reduce explicitly (`lax.pmean`, `lax.psum`).
This module maps such a function over the devices with one of two interchangeable backends:

* `shard_map` (default): `jax.jit(jax.shard_map(...))` over a 1-D `Mesh`. State lives as global
  `jax.Array`s replicated over the mesh and batches as global arrays sharded along `AXIS`. This is
  the form the JAX team recommends now that `pmap` is in maintenance mode.
* `pmap`: `jax.pmap(..., axis_name=AXIS)`. State carries a leading axis of local devices.

Checkpoints always hold the `shard_map` form (replicated global arrays), so either backend can
resume the other's run.
"""

import collections
import itertools
import logging
import os
from typing import Any, Callable, Iterable, Iterator

import flax.jax_utils
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax.errors import RunError, UserError

AXIS = 'batch'
BACKENDS = ('shard_map', 'pmap')
INITIALIZE = ('auto', 'on', 'off')  # config.distributed.initialize


class ParallelError(UserError, ValueError):
  """A data-parallel setting that cannot work, e.g. a batch that does not split over the devices."""


# Where one of these is set, jax.distributed.initialize() finds the coordinator, the process count
# and this process's id by itself (Cloud TPU pods, SLURM, an explicit JAX_COORDINATOR_ADDRESS).
CLUSTER_ENV_VARS = ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS', 'SLURM_JOB_ID',
                    'JAX_COORDINATOR_ADDRESS')
_HOW = ('set --config.distributed.coordinator_address=HOST:PORT (process 0\'s) with '
        '--config.distributed.num_processes=N and --config.distributed.process_id=I on each '
        'process, or run inside a Cloud TPU pod or SLURM job, which configure themselves')


def _should_initialize(cfg, cluster_env: bool) -> bool:
  """Whether to initialise jax.distributed; raises ParallelError for settings that cannot work,
  before jax.distributed would fail on them with a traceback or wait for processes that never
  come."""
  def fail(message):
    raise ParallelError(f'config.distributed: {message}.')

  if cfg.initialize not in INITIALIZE:
    fail(f'initialize={cfg.initialize!r} is not allowed; choose one of {INITIALIZE}')
  given = {k: cfg[k] for k in ('coordinator_address', 'num_processes', 'process_id')
           if cfg[k] is not None}
  if cfg.initialize == 'off':
    if given:
      fail(f"initialize='off' contradicts {', '.join(f'{k}={v!r}' for k, v in given.items())}; "
           "unset those or set initialize='auto'")
    return False
  if not given and not cluster_env:
    if cfg.initialize == 'on':
      fail(f"initialize='on' needs a coordinator, but none is configured and this is no cluster "
           f"environment (none of {', '.join(CLUSTER_ENV_VARS)} is set); {_HOW}")
    return False
  address, count, index = cfg.coordinator_address, cfg.num_processes, cfg.process_id
  if address is not None:
    host, _, port = address.rpartition(':')
    if not host or not port.isdigit():
      fail(f'coordinator_address={address!r} is not HOST:PORT, e.g. host0:1234')
  if not cluster_env and (address is None or count is None or index is None):
    missing = [k for k in ('coordinator_address', 'num_processes', 'process_id') if k not in given]
    fail(f'{", ".join(missing)} missing: outside a cluster environment give all three; {_HOW}')
  if count is not None and count < 1:
    fail(f'num_processes={count} must be >= 1')
  if index is not None and count is None:
    fail(f'process_id={index} is given without num_processes; give both')
  if index is not None and not 0 <= index < count:
    fail(f'process_id={index} is not in [0, num_processes={count}); number the processes 0 to '
         f'{count - 1}')
  return True


def initialize_distributed(cfg) -> None:
  """Starts `jax.distributed` when the config or the environment asks for it.

  cfg is `config.distributed`. 'on' always initialises; 'auto' does when a coordinator address is
  configured or the environment is a Cloud TPU pod or a SLURM job (which
  `jax.distributed.initialize()` then configures by itself). It must run before anything touches
  a device. Settings that cannot work raise ParallelError before anything waits on them, and a
  failed start a RunError; both name the keys.
  """
  cluster_env = any(k in os.environ for k in CLUSTER_ENV_VARS)
  if not _should_initialize(cfg, cluster_env):
    return
  explicit = cfg.coordinator_address is not None
  if jax.config.jax_platforms in (None, '', 'cpu') and explicit:
    # CPU processes need a collectives implementation to talk to each other (used by the tests).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {k: cfg[k] for k in ('coordinator_address', 'num_processes', 'process_id')
            if cfg[k] is not None}
  # Said before the wait: a process whose peers never join is ended by JAX itself (a C++ abort
  # after its initialization timeout, 300 s by default), which no Python code can turn into a line.
  logging.info('jax.distributed: joining %s at %s as process %s; JAX ends this process if the '
               'others have not joined within its timeout (300 s by default).',
               f'{cfg.num_processes} processes' if cfg.num_processes else 'the processes',
               cfg.coordinator_address or 'the address the environment gives',
               cfg.process_id if cfg.process_id is not None else '(from the environment)')
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    arguments = ', '.join(f'{k}={v!r}' for k, v in kwargs.items())
    raise RunError(f'jax.distributed.initialize({arguments}) failed: {" ".join(str(e).split())}. '
                   'Check that every process runs the same command and that process 0 can be '
                   'reached at the coordinator address.') from e
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def check_batch_size(name: str, global_batch: int, num_devices: int) -> int:
  """Returns the per-device batch size, or raises ParallelError naming the key."""
  if global_batch <= 0 or global_batch % num_devices:
    raise ParallelError(
        f'config.{name}={global_batch} does not divide over {num_devices} devices; the global '
        f'batch must be a positive multiple of the device count (e.g. '
        f'{max(1, global_batch // num_devices) * num_devices} or '
        f'{(global_batch // num_devices + 1) * num_devices}).')
  return global_batch // num_devices


class DataParallel:
  """Places state and batches on the devices and maps per-device functions over them."""

  def __init__(self, backend: str = 'shard_map', devices=None):
    if backend not in BACKENDS:
      raise ParallelError(f'config.parallel.backend={backend!r} is not one of {BACKENDS}.')
    self.backend = backend
    devices = list(jax.devices() if devices is None else devices)
    self.mesh = Mesh(np.array(devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))
    self.local_devices = [d for d in devices if d.process_index == jax.process_index()]
    # pmap's layout: a leading axis of local devices (what flax.jax_utils.replicate produces).
    self._pmap_stacked = NamedSharding(Mesh(np.array(self.local_devices), ('local',)), P('local'))

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def map(self, fn: Callable, donate_state: bool = False, replicated_args: int = 0) -> Callable:
    """Maps `fn(state, batch, *replicated) -> outputs` over the devices.

    The state is replicated, the batch split along `AXIS`, and every output replicated: `fn` must
    reduce over `AXIS` itself before returning. `replicated_args` more arguments may follow the
    batch, replicated like the state and placed by `replicate` (the device data path's dataset).
    """
    donate = (0,) if donate_state else ()
    if self.backend == 'pmap':
      return jax.pmap(fn, axis_name=AXIS, devices=self.local_devices, donate_argnums=donate)
    mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)) + (P(),) * replicated_args,
                           out_specs=P())
    return jax.jit(mapped, donate_argnums=donate)

  def replicate(self, tree: Any) -> Any:
    """Host NumPy arrays -> a copy on every device, in this backend's layout.

    Each process places the copies on its own devices from its own host arrays, which must hold
    the same values on every process; nothing is broadcast or stacked on the host.
    """
    if self.backend == 'pmap':
      def place(x):
        x = np.asarray(x)[None]
        shards = [jax.device_put(x, d) for d in self.local_devices]
        return jax.make_array_from_single_device_arrays(
            (len(shards),) + x.shape[1:], self._pmap_stacked, shards)
    else:
      def place(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
    return jax.tree.map(place, tree)

  def init_replicated(self, init_fn: Callable, *args) -> Any:
    """Runs `init_fn(*args)` so its result is replicated over the devices in this backend's layout.

    Under jit with replicated out_shardings every process computes the same values, which is how
    multi-host runs agree on the initial weights without a broadcast.
    """
    state = jax.jit(init_fn, out_shardings=self.replicated)(*args)
    return self.to_backend(state)

  def to_backend(self, state: Any) -> Any:
    """Replicated global arrays (the checkpoint layout) -> this backend's layout."""
    if self.backend == 'shard_map':
      return state
    return flax.jax_utils.replicate(jax.device_get(state), self.local_devices)

  def to_global(self, state: Any) -> Any:
    """This backend's layout -> replicated global arrays (the checkpoint layout)."""
    if self.backend == 'shard_map':
      return state
    first = jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], state)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, x),
                        first)

  def host_value(self, tree: Any) -> Any:
    """A replicated output (metrics, state) as NumPy on the host."""
    if self.backend == 'pmap':
      return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)

  def put_batch(self, local_batch: dict) -> dict:
    """This process's part of a global batch (NumPy) -> device arrays in this backend's layout."""
    if self.backend == 'pmap':
      n = len(self.local_devices)
      def split(x):
        if x.shape[0] % n:
          raise ParallelError(f'a local batch of {x.shape[0]} does not split over {n} local devices.')
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])
      return jax.device_put({k: split(v) for k, v in local_batch.items()}, self._pmap_stacked)
    return {k: jax.make_array_from_process_local_data(self.sharded, v)
            for k, v in local_batch.items()}

  def prefetch(self, items: Iterable, size: int, place: Callable | None = None) -> Iterator:
    """Stages `size` items on the devices ahead of the step that consumes them.

    `place` puts one item on the devices (default: `put_batch`). Transfers are asynchronous, so
    the copy of batch t+1 overlaps the compute of batch t, as flax.jax_utils.prefetch_to_device
    does for pmap; this does it for both backends.
    """
    place = place or self.put_batch
    queue = collections.deque()
    items = iter(items)
    def enqueue(n):
      for item in itertools.islice(items, n):
        queue.append(place(item))
    enqueue(max(size, 1))
    while queue:
      yield queue.popleft()
      enqueue(1)
