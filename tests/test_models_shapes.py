"""Output and stage shapes for every placement x family x several depths (abstract evaluation)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from resnet_jax import models
from resnet_jax.summary import abstract_variables

# (family, depth, input size, spatial size after each stage). ImageNet nets take 64x64 here: the
# stem divides by 4, each later stage by 2, and the head pools whatever is left.
NETS = [
    ('cifar', 20, 32, (32, 16, 8)),
    ('cifar', 164, 32, (32, 16, 8)),
    ('cifar', 1001, 32, (32, 16, 8)),
    ('imagenet', 18, 64, (16, 8, 4, 2)),
    ('imagenet', 50, 64, (16, 8, 4, 2)),
    ('imagenet', 200, 64, (16, 8, 4, 2)),
]


def _shapes(model, size, batch=2):
  """Logits, and the output of each stage's last unit (seen inside scan too, by interception)."""
  variables = abstract_variables(model, (1, size, size, 3))
  stage_outputs = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, models.ResidualUnit) and context.method_name == '__call__':
      stage_outputs[context.module.path[0].split('_')[0]] = out.shape
    return out

  with nn.intercept_methods(record):
    logits, _ = jax.eval_shape(lambda v: model.apply(
        v, jnp.zeros((batch, size, size, 3)), train=True, mutable=['batch_stats']), variables)
  return logits, [stage_outputs[f'stage{s}'] for s in range(1, len(model.stage_sizes) + 1)]


@pytest.mark.parametrize('placement', models.PLACEMENTS)
@pytest.mark.parametrize('family,depth,size,spatial', NETS,
                         ids=[f'{f}-{d}' for f, d, _, _ in NETS])
def test_output_and_stage_shapes(placement, family, depth, size, spatial):
  model = models.create_model(family, depth, placement=placement)
  logits, stages = _shapes(model, size)
  assert logits.shape == (2, models.FAMILIES[family].num_classes)
  assert logits.dtype == jnp.float32
  widths = models.FAMILIES[family].widths
  channels = [4 * w if model.bottleneck else w for w in widths]
  assert stages == [(2, h, h, c) for h, c in zip(spatial, channels)]


@pytest.mark.parametrize('shortcut', models.SHORTCUTS)
@pytest.mark.parametrize('family,depth,size', [('cifar', 56, 32), ('imagenet', 34, 64)])
def test_every_shortcut_option_builds(shortcut, family, depth, size):
  model = models.create_model(family, depth, shortcut=shortcut)
  logits, stages = _shapes(model, size)
  assert logits.shape == (2, models.FAMILIES[family].num_classes)


@pytest.mark.parametrize('kwargs', [
    dict(resnet_d=True), dict(stride_in_3x3=False), dict(width=0.5, num_classes=7),
    dict(resnet_d=True, placement='full_preact', shortcut='C')])
def test_imagenet_variants_build(kwargs):
  model = models.create_model('imagenet', 50, **kwargs)
  logits, stages = _shapes(model, 64)
  assert logits.shape == (2, kwargs.get('num_classes', 1000))
  width = kwargs.get('width', 1)
  assert stages[-1] == (2, 2, 2, int(2048 * width))


def test_small_and_non_square_inputs():
  # The digits quickstart feeds 8x8 grey images; any HxW works.
  model = models.create_model('cifar', 20, placement='full_preact')
  variables = abstract_variables(model, (1, 8, 8, 1))
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((3, 8, 12, 1)), train=False),
                          variables)
  assert logits.shape == (3, 10)
