"""The building blocks every unit shares: conv and norm partials, He init, shortcut A, drop path."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

# He et al. 2015 initialise "as in [13]" (Delving Deep into Rectifiers), whose Eq. 10 keeps the
# forward variance: std = sqrt(2 / fan_in), untruncated normal. The authors' released Torch code
# and torchvision use fan_out instead; with BN after every conv the two train alike, and fan_in is
# what the paper's text prescribes.
he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def resolve_dtype(value, argument):
  """Maps 'bfloat16' or jnp.bfloat16 (or np.dtype) to a jnp scalar type; rejects anything else."""
  try:
    name = jnp.dtype(value).name
  except TypeError:
    name = None
  if name not in DTYPES:
    raise ValueError(f'{argument}={value!r} is not supported; allowed: {", ".join(DTYPES)}')
  return DTYPES[name]


def conv(features, kernel, strides=1, **kwargs):
  """A bias-free conv with torch-style symmetric padding k//2 (torchvision's layout).

  Flax's 'SAME' pads stride-2 convs asymmetrically; symmetric padding keeps the receptive fields
  (and pretrained-weight ports) identical to the reference nets.
  """
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), (strides, strides), padding=((pad, pad), (pad, pad)),
                 use_bias=False, **kwargs)


def layer_partials(*, train, dtype, param_dtype, axis_name, bn_momentum, bn_epsilon):
  """The conv and norm partials that units and stems build their layers from (Flax imagenet style).

  BN statistics: flax reduces in at least float32 whatever `dtype` is, and keeps the running
  averages in float32, so a bfloat16 net still has float32 batch statistics. `axis_name` makes
  BN average the batch statistics over that named axis (pmap or shard_map): this is where
  cross-device BN sync happens.
  """
  conv_def = functools.partial(conv, dtype=dtype, param_dtype=param_dtype, kernel_init=he_normal)
  norm_def = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=bn_momentum,
                               epsilon=bn_epsilon, dtype=dtype, param_dtype=param_dtype,
                               axis_name=axis_name)
  return conv_def, norm_def


def shortcut_a(x, features, strides):
  """Option A of He et al. 2015 (Sec. 4.2): subsample by the stride, zero-pad the new channels."""
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  extra = features - x.shape[-1]
  if extra < 0:
    raise ValueError(f'shortcut A cannot shrink {x.shape[-1]} channels to {features}')
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))


def drop_path(x, rate, rng):
  """Stochastic depth (Huang et al. 2016): drop the whole branch per example with prob `rate`.

  Kept branches are scaled by 1 / (1 - rate) during training (as timm does) so that evaluation
  is the plain deterministic net.
  """
  keep_prob = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * (mask / keep_prob).astype(x.dtype)
