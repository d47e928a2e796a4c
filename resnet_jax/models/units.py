"""One residual unit: activation placement x shortcut x basic/bottleneck shape.

The placement (resnet_jax/models/placements.py, Identity Mappings Fig. 4) says where BN and ReLU
sit around the convs; with no shortcut (the 2015 paper's plain nets) the addition is skipped and
the rest stays.
"""

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models import layers, placements

# The shortcut of one unit. The net-level options A/B/C/none resolve to these unit by unit.
UNIT_SHORTCUTS = ('identity', 'A', 'projection', 'none')


class ResidualUnit(nn.Module):
  """One residual unit; `__call__(x, drop_rate=None, keep=None)`.

  Attributes:
    features: output channels (a bottleneck's inner width is features // 4).
    strides: the unit's spatial stride.
    bottleneck: 1x1-3x3-1x1 convs (expansion 4) instead of two 3x3 convs.
    placement: a name of placements.PLACEMENTS.
    shortcut: one of UNIT_SHORTCUTS.
    conv, norm: partials from `layers.layer_partials`.
    shared_preact: pre-activation units only. Pre-activate before the split, so that the shortcut
      also takes the pre-activated input: the paper's appendix does this for projection shortcuts
      and for the net's first unit (its pre-activation is the stem's activation).
    stride_in_3x3: bottleneck only. True strides the 3x3 (v1.5, torchvision); False strides the
      first 1x1 (v1: He et al. 2015, and resnet-1k-layers' CIFAR nets).
    avg_down: ResNet-D projection (He et al. 2019, "Bag of Tricks"): a 2x2 average pool does the
      striding, then a stride-1 1x1 conv, so the projection sees every pixel.
    zero_init_last: zero the branch's last scale, so that the unit starts as its shortcut
      (Goyal et al. 2017): the scale of the BN after the last conv where there is one, else
      that conv's kernel.
  """
  features: int
  strides: int
  bottleneck: bool
  placement: str
  shortcut: str
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  act: Callable = nn.relu
  shared_preact: bool = False
  stride_in_3x3: bool = True
  avg_down: bool = False
  zero_init_last: bool = False

  def branch_convs(self):
    """(kernel size, features, strides) of the residual branch's convs, in order."""
    if not self.bottleneck:
      return ((3, self.features, self.strides), (3, self.features, 1))
    inner = self.features // 4
    stride_1x1, stride_3x3 = (1, self.strides) if self.stride_in_3x3 else (self.strides, 1)
    return ((1, inner, stride_1x1), (3, inner, stride_3x3), (1, self.features, 1))

  @nn.compact
  def __call__(self, x, drop_rate=None, keep=None):
    """`drop_rate`: stochastic-depth rate (train only; needs the 'dropout' rng). `keep`: a
    scalar multiplying the branch; 0 deletes it (the lesion study of Veit et al. 2016)."""
    spec = placements.get(self.placement)
    convs = self.branch_convs()
    shortcut_in = y = x
    for i, (kernel, features, strides) in enumerate(convs, start=1):
      last = i == len(convs)
      # A BN is named after the conv it serves: bn{i} before conv{i} in (e), after it elsewhere.
      y = layers.apply_ops(spec.before_conv, y, self.norm, self.act, f'bn{i}')
      if i == 1 and self.shared_preact:
        shortcut_in = y
      zero_kernel = last and self.zero_init_last and not spec.last_conv_has_bn
      y = self.conv(features, kernel, strides, name=f'conv{i}',
                    **({'kernel_init': nn.initializers.zeros} if zero_kernel else {}))(y)
      y = layers.apply_ops(spec.after_last_conv if last else spec.after_conv, y, self.norm,
                           self.act, f'bn{i}', zero_scale=last and self.zero_init_last)

    if keep is not None:
      y = y * jnp.asarray(keep, y.dtype)
    if drop_rate is not None:
      y = layers.drop_path(y, drop_rate, self.make_rng('dropout'))
    if self.shortcut != 'none':
      y = y + self.project(shortcut_in, spec)
    return layers.apply_ops(spec.after_add, y, self.norm, self.act, 'bn_add')

  def project(self, x, spec):
    """The shortcut path: identity, option A, or a 1x1 projection (options B and C)."""
    if self.shortcut == 'identity':
      return x
    if self.shortcut == 'A':
      return layers.shortcut_a(x, self.features, self.strides)
    strides = self.strides
    if self.avg_down and strides > 1:
      x = nn.avg_pool(x, (strides, strides), (strides, strides), padding='SAME',
                      count_include_pad=False)
      strides = 1
    x = self.conv(self.features, 1, strides, name='proj_conv')(x)
    # A pre-activation projection takes an already normalised input and feeds an un-normalised sum,
    # so it is a bare conv (as in resnet-1k-layers, a Torch re-implementation of the 2016 nets);
    # post-activation nets add a BN (torchvision's downsample).
    if not spec.preact:
      x = self.norm(name='proj_bn')(x)
    return x
