"""What a measurement ran on: the CPU or accelerator, library versions, and the devices' peak
FLOP/s; the benchmarks and the experiments name the machine through this module.

Imports neither JAX nor PyTorch at import time.
"""

import dataclasses
import importlib.metadata
import os
import platform

LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'torch', 'torchvision')
# The libraries whose versions a study's result depends on.
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


def package_versions(packages=PACKAGES) -> dict[str, str]:
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


@dataclasses.dataclass(frozen=True)
class Peak:
  """Dense (no structured sparsity) peak FLOP/s of one JAX device, by compute dtype."""
  bfloat16: float
  float32: float | None  # What a float32 convolution runs at by default; None if unpublished.
  source: str


# Matched in order against jax's `device.device_kind`, as a substring: the more specific first;
# None marks variants whose peak differs and is not tabled here (give --peak_flops).
# NVIDIA's datasheets quote tensor-core figures with 2:4 sparsity; these are half of those.
# float32 on Ampere and Hopper is the TF32 tensor-core peak: XLA runs float32 convolutions and
# dots as TF32 there by default (JAX's "Matmul precision" docs), as cuDNN does for PyTorch's
# convolutions (torch.backends.cudnn.allow_tf32 is True by default). On TPU, float32 convolutions
# run as bfloat16 passes by default, so they are held to the bfloat16 peak.
_H100_SXM = 'NVIDIA H100 SXM datasheet (bf16 989, TF32 495 dense)'
PEAKS = (
    ('NVL', None),
    ('H100 PCIe', Peak(756e12, 378e12, 'NVIDIA H100 PCIe datasheet (bf16 756, TF32 378 dense)')),
    ('H100 80GB HBM3', Peak(989.4e12, 494.7e12, _H100_SXM)),
    ('H100 SXM', Peak(989.4e12, 494.7e12, _H100_SXM)),
    ('H200', Peak(989.4e12, 494.7e12, 'NVIDIA H200 SXM datasheet (bf16 989, TF32 495 dense)')),
    ('A100', Peak(312e12, 156e12, 'NVIDIA A100 datasheet (bf16 312, TF32 156 dense)')),
    ('TPU v4 lite', None),
    ('TPU v4', Peak(275e12, 275e12, 'Google Cloud TPU v4 docs (bf16 275 per chip)')),
    ('TPU v5 lite', Peak(197e12, 197e12, 'Google Cloud TPU v5e docs (bf16 197 per chip)')),
    ('TPU v5e', Peak(197e12, 197e12, 'Google Cloud TPU v5e docs (bf16 197 per chip)')),
    ('TPU v5p', Peak(459e12, 459e12, 'Google Cloud TPU v5p docs (bf16 459 per chip)')),
    ('TPU v5', Peak(459e12, 459e12, 'Google Cloud TPU v5p docs (bf16 459 per chip)')),
    ('TPU v6 lite', Peak(918e12, 918e12, 'Google Cloud TPU v6e docs (bf16 918 per chip)')),
    ('TPU v6e', Peak(918e12, 918e12, 'Google Cloud TPU v6e docs (bf16 918 per chip)')),
)


def peak_flops(device_kind: str, dtype: str,
               override: float | None = None) -> tuple[float | None, str]:
  """The peak FLOP/s of one device of `device_kind` computing in `dtype`, and where it is from.

  `override` (the --peak_flops flag) wins. (None, why) where no peak is known, e.g. on CPUs.
  """
  if override:
    return override, '--peak_flops'
  for name, peak in PEAKS:
    if name.lower() not in device_kind.lower():
      continue
    if peak is None:
      break
    value = peak.bfloat16 if dtype in ('bfloat16', 'float16') else peak.float32
    if value is None:
      return None, f'no published {dtype} peak for {device_kind}; give --peak_flops'
    return value, f'{peak.source}, TFLOP/s'
  return None, f'no peak tabled for {device_kind!r} (benchmarks/hardware.py); give --peak_flops'


def versions() -> dict[str, str]:
  """The installed version of each of LIBRARIES; '' for those not installed."""
  found = package_versions(LIBRARIES)
  return {name: found.get(name, '') for name in LIBRARIES}


def describe(devices) -> dict:
  """The hardware a run used: `devices` are the JAX devices the project's step runs on."""
  device = devices[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'device_count': len(devices), 'cpu_model': cpu_model(),
          'cpu_count': cpu_count(),
          'load_avg_1m': round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else '',
          'xla_flags': os.environ.get('XLA_FLAGS', '')}  # XLA switches change the figures.


def summary_line(hardware: dict) -> str:
  cpu = f'{hardware["cpu_model"]}, {hardware["cpu_count"]} cores'
  xla = f'; XLA_FLAGS={hardware["xla_flags"]}' if hardware.get('xla_flags') else ''
  if hardware['platform'] == 'cpu':
    return f'cpu: {cpu} (1-minute load average {hardware["load_avg_1m"]} at the start){xla}'
  return (f'{hardware["platform"]}: {hardware["device_count"]} x {hardware["device_kind"]} '
          f'(host: {cpu}){xla}')


def peak_memory_bytes(device) -> int | None:
  """The device's peak memory in use so far, where the backend reports it (not on CPU)."""
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return int(stats['peak_bytes_in_use'])
