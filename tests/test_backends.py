"""shard_map and pmap train the same net: every step of a 100-step quickstart run, compared.

Free-running runs cannot be compared for long: training the quickstart (ResNet-20 with BN on the
digits, lr 0.1) is chaotic, and float32 rounding differences grow by orders of magnitude within
a few steps, whatever their source. Measured on 8 CPU devices over 100 steps of
configs/quickstart.py (max |parameter difference| after steps 5, 10, 20 and 100; test error after
step 100):

  1 vs 8 devices, shard_map                 1.2e-7  2.8e-4  1.1e-2  0.23   19.72% vs  7.78%
  1 vs 8 devices, pmap                      2.2e-6  6.0e-4  1.5e-2  0.28   19.72% vs 14.44%
  shard_map vs pmap, 8 devices              2.2e-6  6.7e-4  1.9e-2  0.32    7.78% vs 14.44%
  1 device, initial weights x (1 + 1e-7 n)  3.6e-7  2.5e-4  1.3e-2  0.35   19.72% vs 18.61%

Rounding alone moves the test error at step 100 between 8% and 20%, so it cannot tell two
backends apart. (In float64 the two backends stay equal, to float32 precision, for all 100 steps
and end at the same 15.28%.) This test removes the amplification instead: at every step of the run
both backends start from the same state and take one step, which must agree; any real
difference (how a batch is split over the devices, BN sync, RNG folding, the weight-decay mask)
shows at the step where it acts.

Measured one-step differences over the 100 steps: shard_map vs pmap at most 1.2e-7 in the
parameters and 8.2e-8 in the momentum, BN statistics and loss identical (with stochastic depth
0.1, as here: 1.2e-7 and 6.3e-8). For scale, 1 vs 8 devices (the same maths in another reduction
order) differ by 1.2e-7 on most steps and up to 2.8e-5 (parameters) and 9.7e-4 (momentum) on a
few ill-conditioned ones. The tolerance, 1e-6, is 8x the largest backend difference and far below
what a real difference makes at the first step, measured by changing the pmap side only: a
weight-decay mask that also decays the BN scales moves the momentum by wd * |scale| = 1e-4, and
another split of the batch over the devices moves it by 0.08 (and the loss by 1.4e-3).
"""

import functools

import jax
import numpy as np
import pytest

from configs import quickstart
from resnet_jax import data, parallel, recipes
from resnet_jax.train import loop, optim, run, step as step_lib
from resnet_jax.train.state import create_train_state

pytestmark = pytest.mark.slow

STEPS = 100
TOLERANCE = 1e-6


def _config():
  config = quickstart.get_config()
  config.num_train_steps = STEPS
  # Stochastic depth makes the steps draw random numbers, so RNG folding is compared too.
  config.model.stochastic_depth = 0.1
  return recipes.finalize(config)


def _max_difference(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_shard_map_and_pmap_take_the_same_step_at_every_step_of_a_run():
  assert jax.device_count() >= 8
  config = _config()
  info = data.dataset_info(config.data)
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, STEPS))
  model = run.model(config, config.parallel.sync_batch_stats)
  init = functools.partial(create_train_state, model=model, tx=tx, image_shape=info.image_shape)
  pars = {b: parallel.DataParallel(b, jax.devices()[:8]) for b in parallel.BACKENDS}
  initial = {b: jax.device_get(p.host_value(p.init_replicated(
      init, jax.random.key_data(jax.random.key(config.seed))))) for b, p in pars.items()}
  assert _max_difference(*initial.values()) == 0
  steps = {b: p.map(step_lib.configured_train_step(config)) for b, p in pars.items()}

  def place(backend, host_state):
    par = pars[backend]
    return par.to_backend(jax.device_put(host_state, par.replicated))

  state = initial['shard_map']
  batches = data.create_train_iterator(config.data, global_batch_size=config.batch_size,
                                       seed=config.seed)
  worst = {'params': 0.0, 'opt_state': 0.0, 'batch_stats': 0.0, 'loss': 0.0}
  for step in range(1, STEPS + 1):
    batch = next(batches)
    out = {}
    for b, par in pars.items():
      new, metrics = steps[b](place(b, state), par.put_batch(batch))
      out[b] = jax.device_get(par.host_value(new)), float(par.host_value(metrics).loss.compute())
    (a, loss_a), (b, loss_b) = out['shard_map'], out['pmap']
    differences = {'params': _max_difference(a.params, b.params),
                   'opt_state': _max_difference(a.opt_state, b.opt_state),
                   'batch_stats': _max_difference(a.batch_stats, b.batch_stats),
                   'loss': abs(loss_a - loss_b)}
    assert max(differences.values()) <= TOLERANCE, (step, differences)
    assert int(a.step) == int(b.step) == step and np.array_equal(a.rng, b.rng)
    worst = {k: max(worst[k], v) for k, v in differences.items()}
    state = a
  print(f'largest one-step differences over {STEPS} steps: {worst}')
  assert out['shard_map'][1] < 0.5  # It learned, so the steps compared were real ones.

  # The final test error is the same, example for example, on either backend.
  accuracies = [loop.evaluate_split(par.map(step_lib.configured_eval_step(config)), place(b, state),
                                    config.data, config.eval_batch_size, par)
                for b, par in pars.items()]
  assert accuracies[0]['eval/accuracy'] == accuracies[1]['eval/accuracy']
