"""The training state: everything a step reads and writes, and nothing else."""

from typing import Any

import jax
import jax.numpy as jnp
from flax.training import train_state


class TrainState(train_state.TrainState):
  """params, opt_state and step (from flax), plus BN running statistics and the run's RNG key.

  The key is never split in place: each step folds in its step number (and each device its index),
  so a resumed run draws exactly the numbers the uninterrupted run would have drawn.
  """
  batch_stats: Any
  rng: jax.Array


def create_train_state(rng: jax.Array, model, tx, image_shape) -> TrainState:
  """Initialises the model on a dummy batch of one image and wraps it with the optimiser."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables['params'],
                           batch_stats=variables.get('batch_stats', {}), tx=tx, rng=state_rng)
