"""The building blocks every unit shares: conv and norm partials, He init, shortcut A, drop path."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ModuleDef = Any

# He et al. 2015 initialise "as in [13]" (Delving Deep into Rectifiers), whose Eq. 10 keeps the
# forward variance: std = sqrt(2 / fan_in), untruncated normal. The later Torch
# re-implementations (fb.resnet.torch, resnet-1k-layers) and torchvision use fan_out instead; with
# BN after every conv the two train alike, and fan_in is what the paper's text prescribes.
he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')

# The classifier's initial weights (config.model.head_init); every choice starts the bias at 0.
# 'lecun_normal': flax's nn.Dense default, std sqrt(1 / fan_in). 'uniform': U(-1/sqrt(fan_in),
# 1/sqrt(fan_in)), torch.nn.Linear's default that fb.resnet.torch (a later Torch
# re-implementation) keeps for the classifier while zeroing its bias. 'zeros': a zero classifier,
# so every class starts at the same logit (big_vision's head_zeroinit). The papers do not say.
HEAD_INITS = {
    'lecun_normal': nn.initializers.lecun_normal(),
    'uniform': nn.initializers.variance_scaling(1.0 / 3, 'fan_in', 'uniform'),
    'zeros': nn.initializers.zeros,
}

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


# XLA:CPU runs a convolution on its fast library path (Eigen, or YNNPACK) only in the one layout
# those take: NHWC input, HWIO kernel, NHWC output. Outside loops its ConvCanonicalization pass
# transposes the operands of the gradient convolutions JAX emits (kernel 01oi for the input
# gradient, f01b_i01o->01bf for the filter gradient) into that layout; in a while loop's body (a
# scanned stage) it leaves them as they are, and they fall to the generic loop emitter, ~100x
# slower (measured: benchmarks/op_profile.py; ResNet-20 with scan=True, 28x slower per step).
# `canonical_grad_conv` is the same convolution with a custom VJP that writes both gradients in
# that layout, with the transposes spelled out, so a scanned stage keeps the fast path.
_NHWC = ('NHWC', 'HWIO', 'NHWC')


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_nhwc(x, w, padding, precision):
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_nhwc_fwd(x, w, padding, precision):
  return _conv_nhwc(x, w, padding, precision), (x, w)


def _conv_nhwc_bwd(padding, precision, residuals, dy):
  x, w = residuals
  kh, kw = w.shape[:2]
  (top, bottom), (left, right) = padding
  # Input gradient: dy convolved with the kernel flipped in space, in and out channels swapped.
  flipped = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
  dx = lax.conv_general_dilated(
      dy, flipped, (1, 1), ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)),
      dimension_numbers=_NHWC, precision=precision)
  # Filter gradient: a convolution whose batch is the input channels, whose features are the
  # examples, and whose kernel is dy: out [Cin, kh, kw, Cout].
  dw = lax.conv_general_dilated(
      jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1), padding,
      dimension_numbers=_NHWC, precision=precision)
  return dx.astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def canonical_grad_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                        dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` (Flax's `conv_general_dilated` hook), whose gradients XLA:CPU
  runs on its fast path inside loops too; computes the same function and gradients.

  Takes over the stride-1, undilated, ungrouped NHWC/HWIO convs with explicit padding (every
  conv of a scanned stage); any other conv is lax.conv_general_dilated's.
  """
  simple = (
      tuple(window_strides) == (1, 1) and feature_group_count == 1 and not kwargs
      and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
      and not isinstance(padding, str) and lhs.ndim == 4
      and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not simple:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision, **kwargs)
  return _conv_nhwc(lhs, rhs, tuple(tuple(int(p) for p in pair) for pair in padding), precision)


# Unrolled, XLA:CPU does not read a unit's stored output where the backward pass needs it: it
# fuses the recomputation of the residual stream (every BN, ReLU and addition back to the start
# of the stage) into each consumer, above all into the transposes that feed the filter-gradient
# convolutions, so that work grows with the square of the units per stage (float32 ResNet-56:
# 1.7 s of busy time a step; benchmarks/op_profile.py). A fence after each unit bounds the chain to
# one unit. lax.optimization_barrier is the API for it, but XLA:CPU expands its barriers before
# fusion (the compiled step is unchanged by them), and no XLA pass fuses across a conditional:
# so the fence is one, both of whose branches return x. Its predicate is read from x, so XLA
# cannot fold it away, and the second branch rounds x to its own precision (the identity, but
# not the same jaxpr: JAX drops a cond whose branches are identical). The same values, bit for
# bit. In bfloat16 the converts already materialise the stream, and the fence only costs
# (docs/benchmarks.md).


def fusion_fence(x):
  """x, through a conditional that XLA cannot fuse across (see above); the identity."""
  info = jnp.finfo(x.dtype)
  return lax.cond(jnp.isfinite(x.reshape(-1)[0]), lambda v: v,
                  lambda v: lax.reduce_precision(v, info.nexp, info.nmant), x)


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


def apply_ops(ops, x, norm, act, bn_name: str, zero_scale: bool = False):
  """A placement's `ops` ('bn', 'relu'; resnet_jax.models.placements) applied to x in order,
  inside the calling module; its BN is named bn_name, its scale zero-initialised if zero_scale."""
  for op in ops:
    if op == 'bn':
      x = norm(name=bn_name, **({'scale_init': nn.initializers.zeros} if zero_scale else {}))(x)
    else:
      x = act(x)
  return x


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
