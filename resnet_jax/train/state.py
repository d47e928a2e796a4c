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


def init_variables(rng: jax.Array, model, image_shape) -> dict:
  """The model's initial variables, from the first half of the run's key, on a dummy image."""
  init_rng, _ = jax.random.split(rng)
  return model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def create_train_state(rng: jax.Array, model, tx, image_shape) -> TrainState:
  """The initial variables wrapped with the optimiser; the state's key is the second half."""
  variables = init_variables(rng, model, image_shape)
  return TrainState.create(apply_fn=model.apply, params=variables['params'],
                           batch_stats=variables.get('batch_stats', {}), tx=tx,
                           rng=jax.random.split(rng)[1])
