"""The loss and metrics of the train and eval steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import schema
from resnet_jax import models, parallel
from resnet_jax.train import optim, step as step_lib
from resnet_jax.train.state import create_train_state


def test_cross_entropy_is_float32_even_for_bf16_logits():
  logits = jnp.array([[2.0, 0.5, -1.0]], jnp.bfloat16)
  loss = step_lib.cross_entropy(logits, jnp.array([0]))
  assert loss.dtype == jnp.float32
  expected = -jax.nn.log_softmax(logits.astype(jnp.float32))[0, 0]
  np.testing.assert_allclose(loss[0], expected, rtol=1e-6)


def test_label_smoothing_mixes_the_target_with_the_uniform_distribution():
  logits = jnp.array([[3.0, 1.0, 0.0, -2.0]])
  logp = jax.nn.log_softmax(logits)[0]
  eps = 0.1
  expected = -((1 - eps) * logp[2] + eps * logp.mean())
  np.testing.assert_allclose(step_lib.cross_entropy(logits, jnp.array([2]), eps)[0], expected,
                             rtol=1e-6)


@pytest.mark.parametrize('bad', [jnp.nan, jnp.inf, -jnp.inf])
def test_all_finite_finds_one_bad_element_in_any_leaf_of_any_tree(bad):
  grads = {'a': jnp.ones((3, 3)), 'b': {'c': jnp.zeros(4, jnp.bfloat16)}}
  stats = {'mean': jnp.ones(5), 'var': jnp.ones(5)}
  assert bool(step_lib.all_finite(grads, stats))
  assert not bool(step_lib.all_finite(grads, {**stats, 'var': stats['var'].at[3].set(bad)}))
  bad_grads = {**grads, 'b': {'c': grads['b']['c'].at[0].set(bad)}}
  assert not bool(jax.jit(step_lib.all_finite)(bad_grads, stats))
  assert bool(step_lib.all_finite({}, {}))


def test_top1_and_top5():
  logits = jnp.arange(10.0)[None].repeat(3, 0)  # Ranking 9, 8, 7, ... for every row.
  labels = jnp.array([9, 5, 4])
  np.testing.assert_array_equal(step_lib.correct_topk(logits, labels, 1), [1, 0, 0])
  np.testing.assert_array_equal(step_lib.correct_topk(logits, labels, 5), [1, 1, 0])


def test_eval_step_ignores_padding_and_train_step_is_pure():
  config = schema.get_config()
  par = parallel.DataParallel('shard_map', jax.devices()[:2])
  model = models.create_model('cifar', 20, placement='full_preact', dtype='bfloat16',
                              axis_name=parallel.AXIS)
  tx = optim.create_optimizer(config, optax.constant_schedule(0.1))
  state = par.init_replicated(functools.partial(create_train_state, model=model, tx=tx,
                                                image_shape=(8, 8, 3)),
                              jax.random.key_data(jax.random.key(0)))
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(4, 8, 8, 3)).astype(np.float32),
           'label': np.array([1, 2, 3, 4], np.int32),
           'mask': np.array([True, True, True, False])}
  metrics = par.host_value(par.map(step_lib.eval_step)(state, par.put_batch(batch)))
  assert metrics.accuracy.count == 3
  # The padded example changes nothing: replace it and the metrics are the same.
  batch2 = dict(batch, image=batch['image'].copy(), label=batch['label'].copy())
  batch2['image'][3] = 100.0
  batch2['label'][3] = 0
  metrics2 = par.host_value(par.map(step_lib.eval_step)(state, par.put_batch(batch2)))
  assert metrics2.loss.compute() == pytest.approx(metrics.loss.compute())
  # A pure step: the same inputs give the same outputs, and the input state is untouched.
  train = par.map(step_lib.train_step)
  train_batch = {k: batch[k] for k in ('image', 'label')}
  out1, m1 = train(state, par.put_batch(train_batch))
  out2, m2 = train(state, par.put_batch(train_batch))
  assert int(par.host_value(out1.step)) == 1 and int(par.host_value(state.step)) == 0
  assert par.host_value(m1).loss.compute() == par.host_value(m2).loss.compute()
  assert par.host_value(m1).loss.total.dtype == np.float32
