"""One residual unit: activation placement x shortcut x basic/bottleneck shape.

The five placements are Fig. 4 (a)-(e) of He et al. 2016, "Identity Mappings in Deep Residual
Networks" (arXiv 1603.05027); Table 2 of that paper compares them. Written out for a basic unit
(a bottleneck unit has three convs, 1x1-3x3-1x1, and repeats the middle pattern once more):

  original          (a)  conv-BN-ReLU-conv-BN, add, ReLU
  bn_after_add      (b)  conv-BN-ReLU-conv, add, BN-ReLU
  relu_before_add   (c)  conv-BN-ReLU-conv-BN-ReLU, add
  relu_only_preact  (d)  ReLU-conv-BN-ReLU-conv-BN, add
  full_preact       (e)  BN-ReLU-conv-BN-ReLU-conv, add

With no shortcut (the 2015 paper's plain nets) the addition is skipped and the rest stays.
"""

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models import layers

PLACEMENTS = ('original', 'bn_after_add', 'relu_before_add', 'relu_only_preact', 'full_preact')
PREACT_PLACEMENTS = ('relu_only_preact', 'full_preact')
# The shortcut of one unit. The net-level options A/B/C/none resolve to these unit by unit.
UNIT_SHORTCUTS = ('identity', 'A', 'projection', 'none')


class ResidualUnit(nn.Module):
  """One residual unit; `__call__(x, drop_rate=None, keep=None)`.

  Attributes:
    features: output channels (a bottleneck's inner width is features // 4).
    strides: the unit's spatial stride.
    bottleneck: 1x1-3x3-1x1 convs (expansion 4) instead of two 3x3 convs.
    placement: one of PLACEMENTS.
    shortcut: one of UNIT_SHORTCUTS.
    conv, norm: partials from `layers.layer_partials`.
    shared_preact: pre-activation units only. Pre-activate before the split, so that the shortcut
      also takes the pre-activated input: the paper's appendix does this for projection shortcuts
      and for the net's first unit (its pre-activation is the stem's activation).
    stride_in_3x3: bottleneck only. True strides the 3x3 (v1.5, torchvision); False strides the
      first 1x1 (v1: He et al. 2015 and the authors' resnet-1k-layers code).
    avg_down: ResNet-D projection (He et al. 2019, "Bag of Tricks"): a 2x2 average pool does the
      striding, then a stride-1 1x1 conv, so the projection sees every pixel.
    zero_init_last: zero the branch's last scale, so that the unit starts as its shortcut
      (Goyal et al. 2017). That is the last BN's scale where the branch ends in a BN (a, c, d);
      otherwise (b, e) the branch ends in a conv, and that conv's kernel is zeroed.
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
    preact = self.placement in PREACT_PLACEMENTS
    ends_in_bn = self.placement in ('original', 'relu_before_add', 'relu_only_preact')
    zeros = nn.initializers.zeros
    convs = self.branch_convs()

    shortcut_in = y = x
    for i, (kernel, features, strides) in enumerate(convs, start=1):
      last = i == len(convs)
      if preact:
        # (d) and (e): the activation comes before each conv; BN{i} precedes conv{i} in (e).
        if self.placement == 'full_preact':
          y = self.norm(name=f'bn{i}')(y)
        y = self.act(y)
        if i == 1 and self.shared_preact:
          shortcut_in = y
      conv_init = {'kernel_init': zeros} if last and self.zero_init_last and not ends_in_bn else {}
      y = self.conv(features, kernel, strides, name=f'conv{i}', **conv_init)(y)
      if self.placement == 'full_preact' or (last and self.placement == 'bn_after_add'):
        continue  # (e) has no BN after a conv; (b) moves the branch's last BN after the addition.
      bn_init = {'scale_init': zeros} if last and self.zero_init_last else {}
      y = self.norm(name=f'bn{i}', **bn_init)(y)
      if not preact and (not last or self.placement == 'relu_before_add'):
        y = self.act(y)

    if keep is not None:
      y = y * jnp.asarray(keep, y.dtype)
    if drop_rate is not None:
      y = layers.drop_path(y, drop_rate, self.make_rng('dropout'))
    if self.shortcut != 'none':
      y = y + self.project(shortcut_in)
    if self.placement == 'original':
      y = self.act(y)
    elif self.placement == 'bn_after_add':
      y = self.act(self.norm(name='bn_add')(y))
    return y

  def project(self, x):
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
    # so it is a bare conv (the authors' resnet-1k-layers code); post-activation nets add a BN
    # (torchvision's downsample).
    if self.placement not in PREACT_PLACEMENTS:
      x = self.norm(name='proj_bn')(x)
    return x
