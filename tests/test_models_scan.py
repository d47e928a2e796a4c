"""nn.scan and nn.remat change how a net compiles, never what it computes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import models
from resnet_jax.models import layers
from resnet_jax.summary import abstract_variables
from tests.test_models_util import random_variables


def _images(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _assert_trees_close(a, b, rtol=1e-4):
  # Relative to each leaf's largest entry: a BN over a handful of values (batch 4 at 1x1 spatial)
  # amplifies float32 rounding in single small entries.
  def close(x, y):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.abs(x).max()) + 1e-7)
  jax.tree.map(close, a, b)


def _train_forward(model, variables, images):
  return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, images)


def _grads(model, variables, images, labels):
  def loss_fn(params):
    logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                            images, train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return jax.jit(jax.value_and_grad(loss_fn))(variables['params'])


@pytest.mark.parametrize('family,depth,placement,shortcut', [
    ('cifar', 20, 'original', 'A'),
    ('cifar', 20, 'relu_before_add', 'C'),
    ('imagenet', 50, 'bn_after_add', 'B'),
    ('imagenet', 18, 'relu_only_preact', 'none'),
])
def test_scanned_and_unrolled_nets_compute_the_same_function(family, depth, placement, shortcut):
  unrolled = models.create_model(family, depth, placement=placement, shortcut=shortcut, scan=False)
  scanned = unrolled.clone(scan=True)
  shape = (4, 8, 8, 3) if family == 'cifar' else (4, 32, 32, 3)
  variables = random_variables(unrolled, shape)
  stacked = models.unrolled_to_scan(variables, unrolled)
  images = _images(shape)

  eval_u = jax.jit(lambda v, x: unrolled.apply(v, x, train=False))(variables, images)
  eval_s = jax.jit(lambda v, x: scanned.apply(v, x, train=False))(stacked, images)
  _assert_trees_close(eval_u, eval_s, rtol=1e-5)
  logits_u, state_u = _train_forward(unrolled, variables, images)
  logits_s, state_s = _train_forward(scanned, stacked, images)
  _assert_trees_close(logits_u, logits_s, rtol=1e-5)
  _assert_trees_close(state_u, models.scan_to_unrolled(state_s, unrolled), rtol=1e-5)


def test_scan_and_remat_give_the_same_gradients():
  reference = models.create_model('cifar', 20, placement='full_preact', shortcut='B', scan=False)
  shape = (4, 8, 8, 3)
  variables = random_variables(reference, shape)
  images, labels = _images(shape), jnp.array([0, 1, 2, 3])
  loss, grads = _grads(reference, variables, images, labels)
  # ResNet-20 scans units 2-3 of each stage: scan_unroll 2 runs both in one loop iteration, 5 is
  # more than the stage has (capped to 2).
  for scan, remat, unroll in ((True, True, 1), (False, True, 1), (True, False, 2),
                              (True, True, 5)):
    model = reference.clone(scan=scan, remat=remat, scan_unroll=unroll)
    v = models.unrolled_to_scan(variables, model) if scan else variables
    loss_m, grads_m = _grads(model, v, images, labels)
    np.testing.assert_allclose(loss, loss_m, rtol=1e-6)
    _assert_trees_close(grads, models.scan_to_unrolled({'params': grads_m}, model)['params']
                        if scan else grads_m)


@pytest.mark.parametrize('family,depth', [('cifar', 164), ('imagenet', 152)])
def test_scan_layout_is_the_stacked_unrolled_layout(family, depth):
  scanned = models.create_model(family, depth, placement='full_preact', scan=True)
  shape = (1, 32, 32, 3)
  stacked = abstract_variables(scanned, shape)
  unrolled = abstract_variables(scanned.clone(scan=False), shape)
  shapes = lambda tree: jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), tree)
  restacked = jax.eval_shape(lambda v: models.unrolled_to_scan(v, scanned), unrolled)
  assert shapes(stacked) == shapes(restacked)
  assert set(stacked['params']) >= {'stage1_unit1', 'stage1_scan'}
  first_scanned = stacked['params']['stage3_scan']['conv2']['kernel']
  assert first_scanned.shape[0] == scanned.stage_sizes[2] - 1


def test_layout_conversion_round_trips():
  model = models.create_model('cifar', 20, placement='bn_after_add', shortcut='C')
  variables = random_variables(model, (1, 8, 8, 3))
  back = models.scan_to_unrolled(models.unrolled_to_scan(variables, model), model)
  jax.tree.map(np.testing.assert_array_equal, variables, back)


def test_unit_names_address_every_unit():
  model = models.create_model('cifar', 164, placement='full_preact')
  names = models.unit_names(model)
  assert len(names) == 54 and names[0] == 'stage1_unit1' and names[-1] == 'stage3_unit18'
  assert len(models.unit_names(models.create_model('cifar', 1001))) == 333
  unrolled = abstract_variables(model.clone(scan=False), (1, 32, 32, 3))['params']
  assert set(names) == {k for k in unrolled if k.startswith('stage')}


def _auto_scanned(backend, monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  return [(f, d) for f, family in models.FAMILIES.items() for d in family.depths
          if models.create_model(f, d).scan]


def test_on_cpu_scan_turns_on_only_where_unrolling_takes_minutes_to_compile(monkeypatch):
  # Unrolled nets train faster on XLA:CPU in both dtypes (float32 ones with the unit fence), so
  # the CPU scans only stages of 50+ repeated units (CPU_SCAN_AUTO_MIN_REPEATS; models.factory).
  assert jax.default_backend() == 'cpu'  # The tests run on CPU: the real backend decides here.
  assert not models.create_model('cifar', 110).scan
  assert models.create_model('cifar', 1001).scan
  assert _auto_scanned('cpu', monkeypatch) == [('cifar', 1202), ('cifar', 1001)]
  # The dtype does not decide it.
  assert not models.create_model('cifar', 110, dtype='bfloat16').scan
  assert models.create_model('cifar', 1202, dtype='bfloat16').scan


def test_on_accelerators_scan_turns_on_for_deep_nets(monkeypatch):
  # On when a stage has more than 8 identical units (SCAN_AUTO_MIN_REPEATS = 9).
  for backend in ('gpu', 'tpu'):
    assert _auto_scanned(backend, monkeypatch) == [
        ('cifar', 110), ('cifar', 1202), ('cifar', 164), ('cifar', 1001),
        ('imagenet', 101), ('imagenet', 152), ('imagenet', 200)]


@pytest.mark.parametrize('backend', ['cpu', 'gpu', 'tpu'])
def test_explicit_scan_always_wins(backend, monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  for depth in (20, 110, 1001, 1202):
    assert models.create_model('cifar', depth, scan=True).scan
    assert not models.create_model('cifar', depth, scan=False).scan


@pytest.mark.parametrize('kernel,padding,dtype', [
    (3, ((1, 1), (1, 1)), jnp.float32), (1, ((0, 0), (0, 0)), jnp.float32),
    (3, ((0, 2), (2, 0)), jnp.float32), (3, ((1, 1), (1, 1)), jnp.bfloat16)])
def test_canonical_grad_conv_has_lax_convs_value_and_gradients(kernel, padding, dtype):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 6, 5, 3)), dtype)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 2)), dtype)
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))

  def loss(conv):
    def f(x, w):
      y = conv(x, w, (1, 1), padding, dimension_numbers=numbers)
      return jnp.sum(jnp.sin(y.astype(jnp.float32)))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, w)

  (value, grads), (expected, expected_grads) = (loss(layers.canonical_grad_conv),
                                                loss(jax.lax.conv_general_dilated))
  rtol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
  np.testing.assert_allclose(value, expected, rtol=rtol)
  for g, e in zip(grads, expected_grads):
    assert g.dtype == e.dtype == dtype
    _assert_trees_close(g.astype(jnp.float32), e.astype(jnp.float32), rtol=rtol)


def test_canonical_grad_conv_leaves_strided_convs_to_lax():
  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))
  jaxpr = jax.make_jaxpr(lambda x, w: layers.canonical_grad_conv(
      x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=numbers))(x, w)
  assert 'custom_vjp' not in str(jaxpr)


def test_a_scanned_stage_keeps_the_fast_conv_path_on_cpu():
  # XLA:CPU leaves JAX's gradient convs in a loop body in layouts its fast path does not take;
  # the scanned units' convs write theirs in the one it does (models.layers).
  model = models.create_model('cifar', 20, scan=True)
  assert model.canonical_conv_grads == (jax.default_backend() == 'cpu')
  shape = (2, 32, 32, 3)  # Stage 3 at 8x8: XLA rewrites a 3x3 conv of a 2x2 input otherwise.
  variables = models.unrolled_to_scan(random_variables(model.clone(scan=False), shape), model)
  labels = jnp.array([0, 1])
  hlo = jax.jit(jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({'params': p, 'batch_stats': variables['batch_stats']}, _images(shape),
                  train=True, mutable=['batch_stats'])[0], labels).mean())).lower(
                      variables['params']).compile().as_text()
  labels_seen = set(re.findall(r'convolution\(.*dim_labels=([\w>-]+)', hlo))
  assert labels_seen == {'b01f_01io->b01f'}, labels_seen
