"""The unit fence (models.layers.fusion_fence) changes how XLA fuses a step, never its numbers."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import models
from resnet_jax.models import factory, layers
from tests.test_models_util import random_variables

SPECIAL = [0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.nan, 1e-40, 65504.0]


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize('first', [1.0, np.nan])  # Either branch of the conditional.
def test_fence_is_the_identity_bit_for_bit(dtype, first):
  x = jnp.asarray(np.array([first] + SPECIAL, np.float32).reshape(2, 5), dtype)
  bits = lambda a: np.asarray(a).view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)
  for f in (layers.fusion_fence, jax.jit(layers.fusion_fence)):
    y = f(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(bits(y), bits(x))
  np.testing.assert_array_equal(bits(jax.vmap(layers.fusion_fence)(x)), bits(x))
  cotangent = jnp.arange(10, dtype=jnp.float32).reshape(2, 5)
  grad = jax.grad(lambda v: (layers.fusion_fence(v) * cotangent).sum())(x.astype(jnp.float32))
  np.testing.assert_array_equal(grad, cotangent)


def test_fence_survives_xla():
  # JAX drops a cond whose branches are the same jaxpr, and XLA:CPU drops optimization barriers
  # before fusion: the fence is only a fence if the compiled step still holds its conditional.
  hlo = jax.jit(lambda x: jnp.sin(layers.fusion_fence(jnp.cos(x)))).lower(
      jnp.ones((4, 4))).compile().as_text()
  assert hlo.count('conditional(') == 1


def test_fence_by_default_on_cpu_for_float32_only(monkeypatch):
  assert factory.fence_by_default('cpu', jnp.float32)
  assert not factory.fence_by_default('cpu', jnp.bfloat16)
  assert not factory.fence_by_default('cpu', jnp.float16)
  assert not factory.fence_by_default('gpu', jnp.float32)
  assert not factory.fence_by_default('tpu', jnp.float32)
  assert jax.default_backend() == 'cpu'  # The tests run on CPU: the real backend decides here.
  assert models.create_model('cifar', 20).unit_fence
  assert not models.create_model('cifar', 20, dtype='bfloat16').unit_fence
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert not models.create_model('cifar', 20).unit_fence
  assert models.create_model('cifar', 20, unit_fence=True).unit_fence  # Explicit wins.
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert not models.create_model('cifar', 20, unit_fence=False).unit_fence


def test_a_bad_unit_fence_is_one_clear_error():
  with pytest.raises(ValueError, match=r"^unit_fence='yes' must be True or False or None$"):
    models.create_model('cifar', 20, unit_fence='yes')


def _step(model, variables, images, labels):
  """Loss, gradients and new BN statistics of one training forward and backward pass."""
  def loss_fn(params):
    logits, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                  images, train=True, mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates['batch_stats']
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables['params'])


def _largest_fusion(hlo: str) -> int:
  """The most operands any fusion of the compiled module reads."""
  return max(len(m.group(1).split(', '))
             for m in re.finditer(r' fusion\((.*?)\), kind=', hlo))


@pytest.mark.parametrize('placement', ['original', 'full_preact'])
def test_fenced_and_unfenced_nets_compute_the_same_bits(placement):
  fenced = models.create_model('cifar', 20, placement=placement, scan=False, unit_fence=True)
  plain = fenced.clone(unit_fence=False)
  shape = (8, 16, 16, 3)
  variables = random_variables(plain, shape)
  images = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
  labels = jnp.arange(8) % 10
  a, b = _step(fenced, variables, images, labels), _step(plain, variables, images, labels)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_the_fence_bounds_what_xla_fuses_into_the_backward_pass():
  # Unfenced, XLA:CPU fuses the recomputation of a stage's residual stream, back to its first
  # unit, into the backward pass's fusions, which then read the conv outputs and BN statistics
  # of every earlier unit; fenced, each reads one unit's worth (models.layers).
  fenced = models.create_model('cifar', 20, scan=False, unit_fence=True)
  plain = fenced.clone(unit_fence=False)
  shape = (8, 16, 16, 3)
  variables = random_variables(plain, shape)
  images, labels = jnp.zeros(shape), jnp.zeros((8,), jnp.int32)

  def hlo(model):
    def loss_fn(params):
      logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                              images, train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return jax.jit(jax.grad(loss_fn)).lower(variables['params']).compile().as_text()

  fenced_hlo, plain_hlo = hlo(fenced), hlo(plain)
  # A fence per unit forward, and its transpose in the backward pass.
  assert fenced_hlo.count('conditional(') >= 9 and plain_hlo.count('conditional(') == 0
  assert _largest_fusion(fenced_hlo) < _largest_fusion(plain_hlo), (
      _largest_fusion(fenced_hlo), _largest_fusion(plain_hlo))
