"""Test-wide setup: 8 fake CPU devices, and the shared real data when it is there."""

import os
import pathlib

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
