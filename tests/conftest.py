"""Test-wide setup: 8 fake CPU devices, one compilation cache, and the shared real data when it
is there."""

import importlib.util
import os
import pathlib
import shutil
import tempfile

# Before JAX is imported anywhere: the parallel tests need several devices, and the host platform
# can only be split at start-up.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

# Ray, where a test starts it: the driver and every node on the loopback interface, so no test
# traffic leaves this machine. Ray turns 127.0.0.1 into the machine's address unless its
# single-machine mode is on (this switch, named for the platforms where that mode is the default).
os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')
# One authentication mode for every Ray instance and node the tests start: left unset, the first
# ray.init() of an embedded instance switches this process to token mode, and a node started
# after it would refuse the nodes and GCS started before it (Unauthenticated).
os.environ.setdefault('RAY_AUTH_MODE', 'token')

_SHARED_TFDS = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'tfds'
if 'TFDS_DATA_DIR' not in os.environ and _SHARED_TFDS.is_dir():
  os.environ['TFDS_DATA_DIR'] = str(_SHARED_TFDS)

# One persistent XLA compilation cache for the whole run: the suite compiles the same few train
# and eval steps in dozens of processes (trainer subprocesses, Ray workers, both xdist workers),
# and on 2 cores compiling is much of its time. A cache hit returns the executable XLA built for
# the same program, flags and backend (JAX's cache key), so no result changes. pytest's main
# process makes the folder and removes it at the end; xdist's workers and every process they
# start inherit the variable. The size limit turns on JAX's file lock, so two processes never
# read an entry that another is still writing.
_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ and importlib.util.find_spec('filelock'):
  _OWN_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='resnet_jax-tests-xla-cache-')
  os.environ['JAX_COMPILATION_CACHE_MAX_SIZE'] = str(8 * 2**30)


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
