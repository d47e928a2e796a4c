"""The whole net: stem, stages of residual units (optionally under nn.scan), head; the depth tables.

Module names, which lesion and gradient-flow studies address units by:
  stem_conv (stem_conv1..3 with ResNet-D), stem_bn, stage{s}_unit{u} (1-based), final_bn, head.
Under scan, unit 1 of each stage stays unrolled as stage{s}_unit1 (its stride, width or shortcut
may differ) and units 2..n are one module stage{s}_scan whose variables carry a leading axis of
length n - 1: index i holds unit i + 2. `scan_to_unrolled` and `unrolled_to_scan` convert
variables between the two layouts, and `unit_names` lists the units in order.
"""

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models import layers, placements
from resnet_jax.models.units import ResidualUnit


@dataclasses.dataclass(frozen=True)
class Family:
  stem: str
  widths: tuple[int, ...]  # inner width of each stage; a bottleneck's output is 4x
  strides: tuple[int, ...]
  stem_width: int
  num_classes: int
  depths: dict[int, tuple[str, tuple[int, ...]]]  # depth -> (block, units per stage)


# He et al. 2015 Sec. 4.2: 6n+2 layers, n basic units per stage, widths 16/32/64.
# He et al. 2016 (Identity Mappings) Sec. 5: 9n+2 layers with bottleneck units (outputs 64/128/256).
CIFAR = Family(
    stem='cifar', widths=(16, 32, 64), strides=(1, 2, 2), stem_width=16, num_classes=10,
    depths={20: ('basic', (3,) * 3), 32: ('basic', (5,) * 3), 44: ('basic', (7,) * 3),
            56: ('basic', (9,) * 3), 110: ('basic', (18,) * 3), 1202: ('basic', (200,) * 3),
            164: ('bottleneck', (18,) * 3), 1001: ('bottleneck', (111,) * 3)})

# He et al. 2015 Table 1; ResNet-200 from Identity Mappings Table 5.
IMAGENET = Family(
    stem='imagenet', widths=(64, 128, 256, 512), strides=(1, 2, 2, 2), stem_width=64,
    num_classes=1000,
    depths={18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
            50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3)),
            152: ('bottleneck', (3, 8, 36, 3)), 200: ('bottleneck', (3, 24, 36, 3))})

FAMILIES = {'cifar': CIFAR, 'imagenet': IMAGENET}
SHORTCUTS = ('A', 'B', 'C', 'none')


def _scan_step(unit, x, per_unit):
  drop_rate, keep = per_unit
  return unit(x, drop_rate, keep), None


class ResNet(nn.Module):
  """A residual network; build it with `resnet_jax.models.create_model`, which validates.

  `__call__(images, train, unit_mask=None)`: NHWC images; float32 logits. `unit_mask`, if given,
  has one entry per unit (in `unit_names` order) multiplying that unit's residual branch: 0
  deletes the branch and keeps the shortcut, as in the lesion study of Veit et al. 2016.
  With stochastic_depth > 0, train=True needs an rng named 'dropout'.
  """
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  strides: Sequence[int]
  bottleneck: bool
  stem: str
  stem_width: int
  num_classes: int
  placement: str = 'original'
  shortcut: str = 'B'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan: bool = False
  scan_unroll: int = 1
  remat: bool = False
  canonical_conv_grads: bool = False
  unit_fence: bool = False
  zero_init_last: bool = False
  stochastic_depth: float = 0.0
  resnet_d: bool = False
  stride_in_3x3: bool = True
  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  head_init: str = 'lecun_normal'

  @nn.compact
  def __call__(self, images, train: bool, unit_mask=None):
    conv, norm = layers.layer_partials(
        train=train, dtype=self.dtype, param_dtype=self.param_dtype, axis_name=self.axis_name,
        bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    spec = placements.get(self.placement)
    x = self._stem(jnp.asarray(images, self.dtype), conv, norm, spec)

    num_units = sum(self.stage_sizes)
    rates = keeps = None
    if train and self.stochastic_depth > 0:
      # The linear rule of Huang et al. 2016 (Eq. 4): unit l of L is dropped with rate l/L * p_L.
      rates = self.stochastic_depth * np.arange(1, num_units + 1) / num_units
    if unit_mask is not None:
      keeps = jnp.asarray(unit_mask, jnp.float32)
      if keeps.shape != (num_units,):
        raise ValueError(f'unit_mask has shape {keeps.shape}; expected ({num_units},), one '
                         'entry per unit')

    unit = nn.remat(ResidualUnit) if self.remat else ResidualUnit
    # Inside scan the loop already keeps XLA from merging the recomputation away, so the
    # barriers of prevent_cse would only cost speed (flax's nn.remat docs).
    scanned_unit = nn.remat(ResidualUnit, prevent_cse=False) if self.remat else ResidualUnit
    j = 0  # index of the unit over the whole net
    for s, (size, width, stride) in enumerate(zip(self.stage_sizes, self.widths, self.strides), 1):
      features = 4 * width if self.bottleneck else width
      for u in range(1, size + 1):
        kind = self._unit_shortcut(
            changes_shape=u == 1 and (stride != 1 or x.shape[-1] != features))
        kwargs = dict(
            features=features, strides=stride if u == 1 else 1, bottleneck=self.bottleneck,
            placement=self.placement, shortcut=kind, conv=conv, norm=norm,
            shared_preact=spec.preact and (kind not in ('identity', 'none') or j == 0),
            stride_in_3x3=self.stride_in_3x3, avg_down=self.resnet_d,
            zero_init_last=self.zero_init_last)
        if self.scan and u == 2:
          n = size - 1
          per_unit = (None if rates is None else jnp.asarray(rates[j:j + n], jnp.float32),
                      None if keeps is None else keeps[j:j + n])
          if self.canonical_conv_grads:
            kwargs['conv'] = functools.partial(
                conv, conv_general_dilated=layers.canonical_grad_conv)
          stack = nn.scan(_scan_step, variable_axes={'params': 0, 'batch_stats': 0},
                          split_rngs={'params': True, 'dropout': True}, length=n,
                          unroll=min(self.scan_unroll, n))
          x, _ = stack(scanned_unit(**kwargs, name=f'stage{s}_scan'), x, per_unit)
          j += n
          break
        x = unit(**kwargs, name=f'stage{s}_unit{u}')(
            x, None if rates is None else float(rates[j]), None if keeps is None else keeps[j])
        if self.unit_fence and train:  # It serves the backward pass (layers.fusion_fence).
          x = layers.fusion_fence(x)
        j += 1

    x = layers.apply_ops(spec.end, x, norm, nn.relu, 'final_bn')
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    # The head runs in float32: it is tiny, and the logits feed a float32 loss.
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype,
                    kernel_init=layers.HEAD_INITS[self.head_init], name='head')(x)

  def _unit_shortcut(self, changes_shape):
    if self.shortcut == 'none':
      return 'none'
    if self.shortcut == 'C':
      return 'projection'
    if not changes_shape:
      return 'identity'
    return 'A' if self.shortcut == 'A' else 'projection'

  def _stem(self, x, conv, norm, spec):
    w = self.stem_width
    if self.stem == 'cifar':
      x = conv(w, 3, name='stem_conv')(x)
    elif self.resnet_d:
      # ResNet-C/D stem (He et al. 2019, "Bag of Tricks"; timm's resnet50d): three 3x3 convs
      # of widths w/2, w/2, w instead of one 7x7.
      x = nn.relu(norm(name='stem_bn1')(conv(w // 2, 3, 2, name='stem_conv1')(x)))
      x = nn.relu(norm(name='stem_bn2')(conv(w // 2, 3, name='stem_conv2')(x)))
      x = conv(w, 3, name='stem_conv3')(x)
    else:
      x = conv(w, 7, 2, name='stem_conv')(x)
    x = layers.apply_ops(spec.stem, x, norm, nn.relu, 'stem_bn')
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    return x


def abstract_variables(model, input_shape) -> dict:
  """The variables' shapes and dtypes for inputs of `input_shape` (N, H, W, C), from
  jax.eval_shape: nothing is initialised."""
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, model.dtype), train=False))


def unit_names(model):
  """Names of the units in order: stage{s}_unit{u}; `unit_mask[j]` acts on unit_names(model)[j]."""
  return [f'stage{s}_unit{u}' for s, size in enumerate(model.stage_sizes, 1)
          for u in range(1, size + 1)]


def unrolled_to_scan(variables, model):
  """Stacks units 2..n of each stage into stage{s}_scan (the layout of scan=True)."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    for s, size in enumerate(model.stage_sizes, 1):
      if size > 1:
        units = [tree.pop(f'stage{s}_unit{u}') for u in range(2, size + 1)]
        tree[f'stage{s}_scan'] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *units)
    out[collection] = tree
  return out


def scan_to_unrolled(variables, model):
  """Splits each stage{s}_scan back into stage{s}_unit2 .. stage{s}_unit{n}."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    for s, size in enumerate(model.stage_sizes, 1):
      if size > 1:
        stack = tree.pop(f'stage{s}_scan')
        for u in range(2, size + 1):
          tree[f'stage{s}_unit{u}'] = jax.tree.map(lambda leaf, i=u - 2: leaf[i], stack)
    out[collection] = tree
  return out
