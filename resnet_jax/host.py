"""The machine a result was measured on, named the same way by the benchmarks and the experiments."""

import importlib.metadata
import os
import platform

# The libraries whose versions a measured result depends on.
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'tensorflow-datasets',
            'numpy', 'matplotlib')


def cpu_model() -> str:
  """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_count() -> int:
  """The cores this process may run on (its affinity), which is what JAX and PyTorch use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def versions(packages=PACKAGES) -> dict[str, str]:
  """Python and the installed version of each of `packages` (those not installed left out)."""
  found = {'python': platform.python_version()}
  for package in packages:
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def devices_line() -> str:
  """'cpu: <model> x2 cores, jax 0.10.2' or 'gpu: NVIDIA H200 x1, jax ...': the devices this
  process's JAX runs on (this starts JAX's backends)."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  if devices[0].platform == 'cpu':
    name = f'cpu: {cpu_model()} x{cpu_count()} cores'
  else:
    name = f'{devices[0].platform}: {devices[0].device_kind} x{len(devices)}'
  return f'{name}, jax {jax.__version__}'
