"""The host a result was measured on, named the same way by the benchmarks and the experiments."""

import os
import platform


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
