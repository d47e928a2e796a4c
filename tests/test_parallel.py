"""Data parallelism: 8 devices train exactly like 1 device at the same global batch.

Runs on 8 fake CPU devices (tests/conftest.py). With BN statistics synced across devices, a step
on 8 devices computes the same function as on 1 device, so the two trajectories differ only by
float32 reduction order: losses agree to 1e-5 relative and parameters to 1e-5 absolute after
every step.
"""

import functools

import jax
import numpy as np
import pytest

from configs import schema
from resnet_jax import models, parallel, recipes
from resnet_jax.train import optim, step as step_lib
from resnet_jax.train.state import create_train_state

STEPS = 4
GLOBAL_BATCH = 32
IMAGE_SHAPE = (8, 8, 3)


def _batches():
  """One fixed batch, again and again: a few steps must visibly fit it."""
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(GLOBAL_BATCH, *IMAGE_SHAPE)).astype(np.float32),
           'label': rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)}
  for _ in range(STEPS):
    yield batch


def _train(backend, num_devices, sync_batch_stats=True):
  """Losses and final parameters of a few steps of a pre-activation ResNet-20."""
  config = schema.get_config()
  # A moderate step keeps float32 reduction-order noise from being amplified through BN's
  # backward pass over a few steps; the comparison then holds to a tight tolerance.
  config.learning_rate = 0.02
  config = recipes.finalize(config)
  par = parallel.DataParallel(backend, jax.devices()[:num_devices])
  model = models.create_model('cifar', 20, placement='full_preact',
                              axis_name=parallel.AXIS if sync_batch_stats else None)
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 100))
  state = par.init_replicated(functools.partial(
      create_train_state, model=model, tx=tx, image_shape=IMAGE_SHAPE), jax.random.key_data(
          jax.random.key(0)))
  p_step = par.map(functools.partial(step_lib.train_step, sync_batch_stats=sync_batch_stats),
                   donate_state=True)
  losses = []
  for batch in par.prefetch(_batches(), 2):
    state, metrics = p_step(state, batch)
    losses.append(float(par.host_value(metrics).loss.compute()))
  return np.array(losses), par.host_value(state.params)


@pytest.fixture(scope='module')
def one_device():
  return _train('shard_map', 1)


@pytest.mark.parametrize('backend', parallel.BACKENDS)
def test_eight_devices_follow_the_one_device_trajectory(backend, one_device):
  assert jax.device_count() >= 8
  losses1, params1 = one_device
  losses8, params8 = _train(backend, 8)
  assert losses1[-1] < losses1[0]  # It trains, so the comparison means something.
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5), params8, params1)


def test_per_device_batch_stats_change_the_trajectory(one_device):
  # The switch is real: BN over 4 examples per device is not BN over 32.
  losses, _ = _train('shard_map', 8, sync_batch_stats=False)
  assert not np.allclose(losses, one_device[0], rtol=1e-3)


def test_a_global_batch_that_does_not_split_over_the_devices_is_a_clear_error():
  with pytest.raises(parallel.ParallelError, match=r'config.batch_size=100 .* 8 devices'):
    parallel.check_batch_size('batch_size', 100, 8)


def test_unknown_backend_is_a_clear_error():
  with pytest.raises(parallel.ParallelError, match=r"config.parallel.backend='tpu_magic'"):
    parallel.DataParallel('tpu_magic')
