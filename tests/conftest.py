"""Test-wide setup: 8 fake CPU devices, and the shared real data when it is there."""

import os
import pathlib

# Before JAX is imported anywhere: the parallel tests need several devices, and the host platform
# can only be split at start-up.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

_SHARED_TFDS = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'tfds'
if 'TFDS_DATA_DIR' not in os.environ and _SHARED_TFDS.is_dir():
  os.environ['TFDS_DATA_DIR'] = str(_SHARED_TFDS)
