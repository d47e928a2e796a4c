"""The optimiser and schedules do what the papers' recipes say."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar10, schema, imagenet
from resnet_jax import recipes
from resnet_jax.train import optim


def test_2016_cifar_schedule_warms_up_at_001_then_divides_by_10_at_32k_and_48k():
  config = recipes.finalize(cifar10.get_config('depth=164,placement=full_preact'))
  schedule = optim.create_learning_rate_schedule(config, 64_000)
  lr = {s: float(schedule(s)) for s in (0, 399, 400, 31_999, 32_000, 47_999, 48_000, 63_999)}
  assert lr == pytest.approx({0: 0.01, 399: 0.01, 400: 0.1, 31_999: 0.1, 32_000: 0.01,
                              47_999: 0.01, 48_000: 0.001, 63_999: 0.001})


def test_2015_resnet20_has_no_warmup_and_resnet110_does():
  config = recipes.finalize(cifar10.get_config('depth=20'))
  assert config.warmup_steps == 0
  assert float(optim.create_learning_rate_schedule(config, 64_000)(0)) == pytest.approx(0.1)
  config = recipes.finalize(cifar10.get_config('depth=110'))
  assert (config.warmup_steps, config.warmup_mode, config.warmup_lr) == (400, 'constant', 0.01)


def test_imagenet_lr_scales_with_batch_and_follows_linear_warmup_then_cosine():
  config = recipes.finalize(imagenet.get_config('depth=50'))
  total = optim.num_train_steps(config, 1_281_167)
  assert total == 90 * 1_281_167 // 1024
  schedule = optim.create_learning_rate_schedule(config, total)
  peak = 0.1 * 1024 / 256
  w = config.warmup_steps
  assert float(schedule(0)) == 0.0
  assert float(schedule(w // 2)) == pytest.approx(peak / 2, rel=1e-3)
  assert float(schedule(w)) == pytest.approx(peak, rel=1e-6)
  assert float(schedule(w + (total - w) // 2)) == pytest.approx(peak / 2, rel=1e-3)
  assert float(schedule(total)) == pytest.approx(0.0, abs=1e-6)


def test_a_schedule_needs_the_finalised_config():
  # The warm-up of the 2015 recipe depends on the final depth; only finalize derives it.
  with pytest.raises(ValueError, match=r'config\.warmup_steps is None: .*recipes\.finalize'):
    optim.create_learning_rate_schedule(cifar10.get_config('depth=110'), 64_000)


def test_decay_mask_keeps_bn_and_biases_out():
  params = {'conv': {'kernel': 1.}, 'bn': {'scale': 1., 'bias': 1.}, 'head': {'kernel': 1., 'bias': 1.}}
  assert optim.decay_mask(params) == {'conv': {'kernel': True}, 'bn': {'scale': False, 'bias': False},
                                      'head': {'kernel': True, 'bias': False}}


def _one_update(weight_decay_type, decay_bn_and_bias=False):
  config = schema.get_config()
  config.weight_decay_type = weight_decay_type
  config.decay_bn_and_bias = decay_bn_and_bias
  config.weight_decay = 0.1
  tx = optim.create_optimizer(config, optax.constant_schedule(0.5))
  params = {'conv': {'kernel': jnp.full(2, 2.0)}, 'bn': {'scale': jnp.full(2, 2.0)}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  updates, _ = tx.update(grads, state, params)  # Second step: momentum now carries history.
  return jax.tree.map(np.asarray, updates)


def test_l2_decay_enters_momentum_and_decoupled_decay_does_not():
  # Step 2 with momentum 0.9, lr 0.5, wd 0.1, w = 2, g = 1.
  l2 = _one_update('l2')
  # L2: g' = g + wd w = 1.2; buffer = 1.2 + 0.9 * 1.2 = 2.28; update = -0.5 * 2.28.
  np.testing.assert_allclose(l2['conv']['kernel'], -0.5 * 2.28, rtol=1e-6)
  decoupled = _one_update('decoupled')
  # Decoupled: buffer = 1 + 0.9 = 1.9; update = -0.5 * (1.9 + 0.1 * 2).
  np.testing.assert_allclose(decoupled['conv']['kernel'], -0.5 * 2.1, rtol=1e-6)
  # BN scales get no decay unless asked for.
  np.testing.assert_allclose(l2['bn']['scale'], -0.5 * 1.9, rtol=1e-6)
  np.testing.assert_allclose(_one_update('l2', True)['bn']['scale'], -0.5 * 2.28, rtol=1e-6)


def test_nesterov_differs_from_heavy_ball():
  config = schema.get_config()
  grads = {'w': jnp.ones(1)}
  out = {}
  for name in optim.OPTIMIZERS:
    config.optimizer = name
    tx = optim.create_optimizer(config, optax.constant_schedule(1.0))
    out[name] = float(tx.update(grads, tx.init(grads), {'w': jnp.zeros(1)})[0]['w'][0])
  assert out['momentum'] == pytest.approx(-1.0)
  assert out['nesterov'] == pytest.approx(-1.9)


def test_num_epochs_wins_over_num_train_steps():
  config = schema.get_config()
  config.num_epochs = 2.0
  assert optim.num_train_steps(config, 50_000) == 2 * 50_000 // 128


def _warmup_by_error(errors, max_steps=400):
  """The lr of each update of SGD at lr 0.1 ending its warm-up by the training error."""
  schedule = optax.constant_schedule(0.1)
  tx = optax.chain(optax.sgd(schedule), optim.warmup_until_error(schedule, 0.01, 0.8, 4,
                                                                 max_steps))
  params = {'w': jnp.zeros(1)}
  state, lrs = tx.init(params), []
  for error in errors:
    updates, state = tx.update({'w': jnp.ones(1)}, state, params, train_error=error)
    lrs.append(round(-float(updates['w'][0]), 6))
  return lrs, state


def test_the_error_warmup_holds_warmup_lr_until_the_running_error_is_below_80_percent():
  # Running error (bias-corrected average over ~4 steps): 0.9 for five steps, then with 0.7s
  # 0.839 and 0.799: below 0.8 at the seventh update, and the warm-up never comes back.
  lrs, state = _warmup_by_error([0.9] * 5 + [0.7] * 5 + [0.95] * 5)
  assert lrs == [0.01] * 6 + [0.1] * 9 and bool(optim.warmup_done(state))
  # The first step's low error is not taken for a low running error (bias correction).
  assert _warmup_by_error([0.85, 0.1])[0] == [0.01, 0.1]
  # warmup_steps caps it: the update after max_steps updates is at the full lr.
  assert _warmup_by_error([0.99] * 6, max_steps=3)[0] == [0.01] * 3 + [0.1] * 3
  link = optim.warmup_until_error(optax.constant_schedule(0.1), 0.01, 0.8, 4, 9)
  with pytest.raises(ValueError, match='train_error'):  # A caller that does not pass it.
    link.update({'w': jnp.ones(1)}, link.init(None), None)


def test_the_error_warmup_is_a_config_choice_that_checks_its_keys():
  from resnet_jax import config_check
  config = cifar10.get_config('depth=110')
  config.warmup_rule = 'train_error'
  final = recipes.finalize(config)
  assert (final.warmup_steps, final.warmup_mode) == (400, 'constant')  # 400 is now a cap.
  schedule = optim.create_learning_rate_schedule(final, 64_000)
  # The warm-up lives in the optimiser; the boundaries stay absolute.
  lr = {s: float(schedule(s)) for s in (0, 31_999, 32_000, 48_000)}
  assert lr == pytest.approx({0: 0.1, 31_999: 0.1, 32_000: 0.01, 48_000: 0.001})
  assert optim.warmup_done(optim.create_optimizer(final, schedule).init({'w': jnp.ones(1)})) \
      is not None
  assert optim.warmup_done(optim.create_optimizer(
      recipes.finalize(cifar10.get_config('depth=110')), schedule).init({'w': jnp.ones(1)})) is None
  for key, value, message in (
      ('warmup_rule', 'loss', "config.warmup_rule='loss'"),
      ('warmup_error', 1.5, 'config.warmup_error=1.5: must be in (0, 1]'),
      ('warmup_mode', 'linear', "config.warmup_mode='linear': must be 'constant' with "
                                "warmup_rule='train_error'")):
    bad = cifar10.get_config('depth=110')
    bad.warmup_rule = 'train_error'
    bad[key] = value
    with pytest.raises(config_check.ConfigError, match=message.replace('(', r'\(').replace(
        ')', r'\)').replace('[', r'\[').replace(']', r'\]')):
      config_check.validate(bad)
  shallow = cifar10.get_config('depth=20')
  shallow.warmup_rule = 'train_error'
  with pytest.raises(config_check.ConfigError, match='would never warm up'):
    recipes.finalize(shallow)
