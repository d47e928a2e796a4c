"""torchvision's ResNet-18/34/50/101/152 weights in this project's nets, in NumPy (no torch).

torchvision's ResNets are He et al. 2015's ImageNet nets with the stride of a bottleneck on its
3x3 conv (v1.5, stride_in_3x3=True), projection shortcuts where the shape changes (option B: a
1x1 conv and a BN, its `downsample`), symmetric padding k // 2 (resnet_jax.models.layers.conv) and
BN epsilon 1e-5. So the port is a renaming (`torch_name`: layer{s}.{u-1}.conv{i} is
stage{s}_unit{u}/conv{i}, downsample.0 and .1 are proj_conv and proj_bn, fc is head) and a
transposition of the kernels (conv OIHW to HWIO, dense (out, in) to (in, out)), nothing else;
num_batches_tracked is dropped.

One difference remains in training mode: PyTorch updates running_var with the unbiased batch
variance (n / (n - 1) times the biased one that normalises the batch), Flax with the biased one.
Eval-mode outputs, which use the running statistics, are the same.
"""

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models.factory import create_model
from resnet_jax.models.resnet import abstract_variables
from resnet_jax.models.weight_file import describe, differences, flatten, unflatten

ARCHS = {'resnet18': 18, 'resnet34': 34, 'resnet50': 50, 'resnet101': 101, 'resnet152': 152}


def model_config(arch: str, num_classes: int = 1000) -> dict:
  """create_model's keyword arguments for torchvision's `arch`."""
  return dict(family='imagenet', depth=ARCHS[arch], placement='original', shortcut='B',
              num_classes=num_classes, width=1.0, dtype='float32', param_dtype='float32',
              scan=None, remat=False, zero_init_last=False, stochastic_depth=0.0,
              resnet_d=False, stride_in_3x3=True, bn_momentum=0.9, bn_epsilon=1e-5)


_MODULES = {'stem_conv': 'conv1', 'stem_bn': 'bn1', 'head': 'fc', 'proj_conv': 'downsample.0',
            'proj_bn': 'downsample.1'}
_LEAVES = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
           ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
           ('batch_stats', 'var'): 'running_var'}


def torch_name(name: str) -> str:
  """'params/stage2_unit1/proj_conv/kernel' -> 'layer2.0.downsample.0.weight'."""
  collection, *modules, leaf = name.split('/')
  parts = []
  for module in modules:
    if module.startswith('stage'):
      stage, unit = module[len('stage'):].split('_unit')
      parts.append(f'layer{stage}.{int(unit) - 1}')
    else:
      parts.append(_MODULES.get(module, module))
  return '.'.join(parts + [_LEAVES[collection, leaf]])


def _to_flax(name: str, value: np.ndarray) -> np.ndarray:
  if name.endswith('/kernel'):
    # conv OIHW -> HWIO; dense (out, in) -> (in, out).
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def _to_torch(name: str, value: np.ndarray) -> np.ndarray:
  if name.endswith('/kernel'):
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def _torch_shape(name: str, shape) -> tuple:
  return tuple(_to_torch(name, np.empty(shape, np.bool_)).shape)


def from_torchvision(state_dict: dict, arch: str) -> tuple[dict, dict]:
  """(model_config, variables) from torchvision's `state_dict` of `arch` (NumPy arrays, or
  anything np.asarray takes). Raises ValueError naming the first differences, in torchvision's
  names and layouts, if the state dict is not one of `arch`."""
  if arch not in ARCHS:
    raise ValueError(f'arch={arch!r} is not one of {", ".join(ARCHS)}')
  given = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  fc = given.get('fc.weight')
  config = model_config(arch, num_classes=int(fc.shape[0]) if fc is not None and fc.ndim == 2
                        else 1000)
  model = create_model(config['family'], config['depth'], scan=False,
                       num_classes=config['num_classes'])
  shapes = abstract_variables(model, (1, 64, 64, 3))
  flax_shapes = flatten({c: shapes[c] for c in ('params', 'batch_stats')})
  names = {torch_name(n): n for n in flax_shapes}
  wanted = {t: jax.ShapeDtypeStruct(_torch_shape(n, flax_shapes[n].shape), jnp.float32)
            for t, n in names.items()}
  problems = differences(given, wanted, net=f"torchvision's {arch}")
  if problems:
    raise ValueError(f"the weights are not those of torchvision's {arch} ({describe(problems)})")
  variables = unflatten({n: np.asarray(_to_flax(n, given[t]), np.float32)
                         for t, n in names.items()})
  return config, variables


def to_torchvision(variables: dict) -> dict:
  """The inverse of from_torchvision's variables: unrolled variables -> torchvision's names."""
  return {torch_name(name): _to_torch(name, np.asarray(value))
          for name, value in flatten(variables).items()}
