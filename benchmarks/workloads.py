"""The benchmarks' workloads: a config to time, prepared as the trainer prepares it, and presets.

benchmarks.throughput and benchmarks.op_profile take one from --config (with --config.KEY=VALUE
overrides) or name presets of WORKLOADS.
"""

import dataclasses
import pathlib
import sys

import jax

from resnet_jax import cli, xla_flags
from resnet_jax.train import optim

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The workloads of issue 8: config file, overrides. 'auto' batch: 256 on accelerators, 32 on CPU.
_FP32, _BF16 = {'model.dtype': 'float32'}, {'model.dtype': 'bfloat16'}
WORKLOADS = {
    'cifar_r20_fp32': ('configs/cifar10_resnet20.py', {'batch_size': 128, **_FP32}),
    'cifar_r20_bf16': ('configs/cifar10_resnet20.py', {'batch_size': 128, **_BF16}),
    'cifar_r56_fp32': ('configs/cifar10_resnet56.py', {'batch_size': 128, **_FP32}),
    'cifar_r56_bf16': ('configs/cifar10_resnet56.py', {'batch_size': 128, **_BF16}),
    'imagenet_r50_bf16': ('configs/imagenet_resnet50.py', {'batch_size': 'auto', **_BF16}),
}


@dataclasses.dataclass
class Workload:
  """One config to benchmark, prepared, with what the peers need to build the same step."""
  name: str
  config_file: str
  overrides: str
  prepared: object  # resnet_jax.train.run.Prepared
  data_problem: str | None  # Why the real data cannot be read; the step still runs.

  config = property(lambda self: self.prepared.config)
  image_shape = property(lambda self: self.prepared.image_shape)
  family = property(lambda self: self.config.model.family)
  depth = property(lambda self: self.config.model.depth)
  num_classes = property(lambda self: self.config.model.num_classes)
  dtype = property(lambda self: self.config.model.dtype)
  batch_size = property(lambda self: self.config.batch_size)
  momentum = property(lambda self: self.config.momentum)
  nesterov = property(lambda self: self.config.optimizer == 'nesterov')
  weight_decay = property(lambda self: self.config.weight_decay)

  @property
  def learning_rate(self) -> float:
    return optim.base_learning_rate(self.config)

  @property
  def data_pipeline(self) -> str:
    # config.data.pipeline ('grain' or 'device') where the loop has that choice; grain before.
    return str(self.config.data.pipeline) if 'pipeline' in self.config.data else 'grain'

  def torch_spec(self) -> dict:
    return {'family': self.family, 'depth': self.depth, 'num_classes': self.num_classes,
            'dtype': self.dtype, 'image_shape': list(self.image_shape),
            'batch_size': self.batch_size, 'learning_rate': self.learning_rate,
            'momentum': self.momentum, 'nesterov': self.nesterov,
            'weight_decay': self.weight_decay}


def _set(config, key: str, value) -> None:
  *parents, last = key.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[last] = value


def from_config(name: str, config_file: str, overrides: str, config) -> Workload:
  """The workload of `config`, prepared as the trainer prepares it; without its data, prepared
  from the dataset table, to time the step on synthetic batches."""
  from resnet_jax import data
  from resnet_jax.train import run
  try:
    return Workload(name, config_file, overrides, run.prepare(config), None)
  except data.DataError as e:  # No real data: the step still runs, on synthetic batches.
    return Workload(name, config_file, overrides, run.prepare(config, open_data=False), str(e))


def from_config_flag(flag) -> Workload:
  """The workload of a --config flag (cli.define_config_flag) and the --config.KEY=VALUE
  overrides on the command line, with its config.xla applied first, as the trainer does."""
  spec = flag.config_filename  # FILE or FILE:ARG, as given.
  config = flag.value.copy_and_resolve_references()
  xla_flags.apply(config)  # Before the workload starts JAX's backends.
  # absl's app.run hands main() only what its flags left over: the overrides are in sys.argv.
  overrides = ' '.join(a for a in sys.argv[1:] if a.startswith(('--config.', '-config.')))
  return from_config(pathlib.Path(spec.partition(':')[0]).stem, spec, overrides, config)


def preset(name: str) -> Workload:
  """The workload of preset `name` of WORKLOADS ('auto' batch: 32 on CPU, 256 elsewhere),
  with its config.xla applied before the 'auto' batch starts JAX's backends."""
  config_file, overrides = WORKLOADS[name]
  config = cli.load_config(str(ROOT / config_file))
  for key, value in overrides.items():
    if value != 'auto':
      _set(config, key, value)
  xla_flags.apply(config)
  if overrides.get('batch_size') == 'auto':
    config.batch_size = 32 if jax.default_backend() == 'cpu' else 256
  return from_config(name, config_file, ' '.join(
      f'--config.{k}={config.batch_size if v == "auto" else v}' for k, v in overrides.items()),
                     config)
