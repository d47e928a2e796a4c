"""Precision, initialisation, stochastic depth, lesion masks and cross-device BN."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from resnet_jax import models
from resnet_jax.models import layers
from resnet_jax.summary import abstract_variables
from tests.test_models_util import random_variables


def _images(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _train_apply(model, variables, images, **kwargs):
  return model.apply(variables, images, train=True, mutable=['batch_stats'], **kwargs)


def _jit_train_apply(model):
  return jax.jit(lambda v, x, rngs=None: _train_apply(model, v, x, rngs=rngs))


def test_bfloat16_forward_gives_float32_logits_and_statistics():
  model = models.create_model('cifar', 20, placement='full_preact', dtype='bfloat16')
  reference = model.clone(dtype=jnp.float32)
  variables = random_variables(reference, (4, 8, 8, 3))
  images = _images((4, 8, 8, 3))
  logits, state = _jit_train_apply(model)(variables, images)
  assert logits.dtype == jnp.float32
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}
  expected, _ = _jit_train_apply(reference)(variables, images)
  assert float(jnp.abs(logits - expected).max()) < 0.05 * float(jnp.abs(expected).max())
  # BN computes in bfloat16 but reduces its statistics in float32.
  _, intermediates = jax.jit(lambda v, x: model.apply(
      v, x, train=False, capture_intermediates=True, mutable=['intermediates']))(variables, images)
  assert intermediates['intermediates']['stage1_unit2']['bn1']['__call__'][0].dtype == jnp.bfloat16


@pytest.mark.parametrize('dtype,param_dtype', [('float16', 'float32'), ('bfloat16', 'bfloat16')])
def test_parameter_and_statistics_dtypes(dtype, param_dtype):
  model = models.create_model('cifar', 20, dtype=dtype, param_dtype=param_dtype)
  variables = abstract_variables(model, (2, 8, 8, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables['params'])} == {jnp.dtype(param_dtype)}
  assert {leaf.dtype for leaf in jax.tree.leaves(variables['batch_stats'])} == {
      jnp.dtype(jnp.float32)}
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 8, 8, 3)), train=False),
                          variables)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)


def _unit(placement, zero_init_last=False, train=True):
  conv, norm = layers.layer_partials(train=train, dtype=jnp.float32, param_dtype=jnp.float32,
                                     axis_name=None, bn_momentum=0.9, bn_epsilon=1e-5)
  return models.ResidualUnit(features=32, strides=1, bottleneck=False, placement=placement,
                             shortcut='identity', conv=conv, norm=norm,
                             zero_init_last=zero_init_last)


def test_he_normal_initialisation():
  params = _unit('original').init(jax.random.key(0), jnp.zeros((1, 4, 4, 32)))['params']
  kernel = params['conv1']['kernel']
  assert kernel.shape == (3, 3, 32, 32)
  # Fan-in He init (He et al. 2015, [13] Eq. 10): std = sqrt(2 / (3 * 3 * 32)), untruncated.
  assert float(kernel.std()) == pytest.approx(np.sqrt(2 / 288), rel=0.03)
  assert float(jnp.abs(kernel).max()) > 2.5 * np.sqrt(2 / 288)
  assert np.all(params['bn1']['scale'] == 1) and np.all(params['bn1']['bias'] == 0)


@pytest.mark.parametrize('placement,zeroed', [
    ('original', ('bn2', 'scale')), ('bn_after_add', ('conv2', 'kernel')),
    ('relu_before_add', ('bn2', 'scale')), ('relu_only_preact', ('bn2', 'scale')),
    ('full_preact', ('conv2', 'kernel'))])
def test_zero_init_last_starts_each_unit_as_its_shortcut(placement, zeroed):
  unit = _unit(placement, zero_init_last=True)
  x = _images((4, 4, 4, 32))
  variables = unit.init(jax.random.key(0), x)
  module, name = zeroed
  assert np.all(variables['params'][module][name] == 0)
  others = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(variables['params'])
            if path[-1].key in ('kernel', 'scale') and tuple(p.key for p in path) != zeroed]
  assert all(np.any(leaf != 0) for leaf in others)
  # The branch adds nothing: the unit equals itself with the branch deleted.
  y, _ = unit.apply(variables, x, mutable=['batch_stats'])
  shortcut_only, _ = unit.apply(variables, x, keep=0.0, mutable=['batch_stats'])
  np.testing.assert_allclose(y, shortcut_only, atol=1e-6)


def test_create_model_passes_zero_init_last_to_every_unit():
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, models.ResidualUnit) and context.method_name == '__call__':
      seen.append(context.module.zero_init_last)
    return next_fun(*args, **kwargs)

  model = models.create_model('cifar', 20, zero_init_last=True, scan=False)
  with nn.intercept_methods(record):
    abstract_variables(model, (1, 8, 8, 3))
  assert seen == [True] * 9


@pytest.mark.parametrize('head_init', sorted(layers.HEAD_INITS))
def test_head_init_chooses_the_classifier_weights(head_init):
  model = models.create_model('cifar', 20, head_init=head_init, scan=False)
  head = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']['head']
  kernel = np.asarray(head['kernel'])  # (64, 10): fan_in 64
  assert np.all(np.asarray(head['bias']) == 0)
  if head_init == 'zeros':
    assert np.all(kernel == 0)
  elif head_init == 'uniform':  # torch.nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(kernel).max() <= 1 / 8 and np.abs(kernel).max() > 0.1
  else:  # flax's default: std 1/sqrt(fan_in), truncated normal
    assert 0.08 < kernel.std() < 0.17 and np.abs(kernel).max() > 1 / 8


def test_head_init_rejects_an_unknown_name():
  with pytest.raises(ValueError, match="head_init='he' is not allowed; allowed: 'lecun_normal'"):
    models.create_model('cifar', 20, head_init='he')


def test_stochastic_depth_follows_the_linear_rule():
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, models.ResidualUnit) and context.method_name == '__call__':
      rates.append(args[1])
    return next_fun(*args, **kwargs)

  model = models.create_model('cifar', 20, stochastic_depth=0.5, scan=False)
  variables = abstract_variables(model, (2, 8, 8, 3))
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v: _train_apply(model, v, jnp.zeros((2, 8, 8, 3)),
                                          rngs={'dropout': jax.random.key(0)}), variables)
  # Huang et al. 2016, Eq. 4: unit l of L = 9 drops with rate l / L * 0.5.
  np.testing.assert_allclose(rates, 0.5 * np.arange(1, 10) / 9)


def test_drop_path_drops_whole_examples_and_rescales():
  x = jnp.ones((4000, 2, 2, 3))
  y = layers.drop_path(x, 0.25, jax.random.key(0))
  per_example = np.asarray(y).reshape(4000, -1)
  assert np.all(per_example == per_example[:, :1])  # the same decision for a whole example
  assert set(np.unique(per_example)) == {0.0, np.float32(1 / 0.75)}
  assert np.mean(per_example[:, 0] == 0) == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize('scan', [False, True])
def test_stochastic_depth_needs_a_dropout_rng_only_when_on(scan):
  base = models.create_model('cifar', 20, scan=scan)
  model = base.clone(stochastic_depth=0.5)
  variables = random_variables(base, (4, 8, 8, 3))
  images = _images((4, 8, 8, 3))
  _jit_train_apply(base)(variables, images)  # no rng needed at 0
  with pytest.raises(Exception, match='dropout'):
    _jit_train_apply(model)(variables, images)
  train = _jit_train_apply(model)
  a, _ = train(variables, images, {'dropout': jax.random.key(0)})
  b, _ = train(variables, images, {'dropout': jax.random.key(1)})
  assert not np.allclose(a, b)
  # Evaluation is the deterministic net.
  evaluate = lambda m: jax.jit(lambda v: m.apply(v, images, train=False))(variables)
  np.testing.assert_array_equal(evaluate(model), evaluate(base))


def test_unit_mask_deletes_residual_branches():
  unrolled = models.create_model('cifar', 20, placement='full_preact', scan=False)
  scanned = unrolled.clone(scan=True)
  variables = random_variables(unrolled, (2, 8, 8, 3))
  stacked = models.unrolled_to_scan(variables, unrolled)
  images = _images((2, 8, 8, 3))
  names = models.unit_names(unrolled)
  apply_u = jax.jit(lambda v, m: unrolled.apply(v, images, train=False, unit_mask=m))
  apply_s = jax.jit(lambda v, m: scanned.apply(v, images, train=False, unit_mask=m))

  np.testing.assert_allclose(apply_u(variables, jnp.ones(9)),
                             unrolled.apply(variables, images, train=False), rtol=1e-5, atol=1e-4)
  mask = jnp.ones(9).at[names.index('stage2_unit2')].set(0.0)
  np.testing.assert_allclose(apply_u(variables, mask), apply_s(stacked, mask), rtol=1e-5,
                             atol=1e-5)
  # With its branch deleted, the output no longer depends on that unit's weights.
  perturbed = jax.tree.map(lambda x: x, variables)
  perturbed['params']['stage2_unit2'] = jax.tree.map(lambda x: 3 * x + 1,
                                                     variables['params']['stage2_unit2'])
  np.testing.assert_array_equal(apply_u(variables, mask), apply_u(perturbed, mask))
  assert not np.allclose(apply_u(variables, jnp.ones(9)), apply_u(perturbed, jnp.ones(9)))
  with pytest.raises(ValueError, match=r'unit_mask has shape \(8,\); expected \(9,\)'):
    unrolled.apply(variables, images, train=False, unit_mask=jnp.ones(8))


def _bn_sync_run(backend, model, variables, images, shards):
  fn = lambda v, x: _train_apply(model, v, x)
  if backend == 'vmap':
    split = images.reshape((shards, -1) + images.shape[1:])
    logits, state = jax.jit(jax.vmap(fn, in_axes=(None, 0), axis_name='batch'))(variables, split)
    return logits.reshape((-1,) + logits.shape[2:]), jax.tree.map(lambda s: s[0], state)
  if backend == 'pmap':
    split = images.reshape((shards, -1) + images.shape[1:])
    logits, state = jax.pmap(fn, axis_name='batch', in_axes=(None, 0),
                             devices=jax.devices()[:shards])(variables, split)
    return logits.reshape((-1,) + logits.shape[2:]), jax.tree.map(lambda s: s[0], state)
  mesh = Mesh(np.array(jax.devices()[:shards]), ('batch',))
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), P('batch')),
                               out_specs=(P('batch'), P())))(variables, images)


@pytest.mark.parametrize('backend', ['vmap', 'pmap', 'shard_map'])
def test_batch_norm_statistics_sync_over_the_named_axis(backend):
  """With axis_name, 4 shards of 2 images normalise as one batch of 8 (scanned units included)."""
  shards = 4
  if backend != 'vmap' and jax.device_count() < shards:
    pytest.skip(f'needs {shards} devices; tests/conftest.py asks XLA for 8 CPU devices')
  model = models.create_model('cifar', 20, placement='full_preact', shortcut='B', scan=True,
                              axis_name='batch')
  single = model.clone(axis_name=None)
  variables = random_variables(single, (8, 8, 8, 3))
  images = _images((8, 8, 8, 3))
  expected_logits, expected_state = _jit_train_apply(single)(variables, images)
  logits, state = _bn_sync_run(backend, model, variables, images, shards)
  np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               state, expected_state)
  if backend == 'vmap':  # Without the axis each shard normalises alone, and the outputs differ.
    unsynced, _ = _bn_sync_run(backend, single, variables, images, shards)
    assert not np.allclose(unsynced, expected_logits, atol=1e-3)
