"""The device data path: a train split small enough to live on the devices, augmented there.

CIFAR-10/100 (150 MB as uint8) and the digits fit in device memory many times over, so instead
of decoding, augmenting and copying a batch on the host every step (the grain path,
pipeline.py), the split is decoded once into a uint8 array that every device holds, and each
step gathers its batch by index and pads, crops and flips it inside the jitted step (which then
normalises it, as it does the grain path's uint8 batches).
Per step only the batch's record indices and stream positions cross to the devices.

What a step reads is a pure function of (seed, step), so a resumed run needs no iterator state:
* the record order is grain's global shuffle of the split (`MapDataset.shuffle`), reshuffled every
  epoch and read as one stream, so a batch may span an epoch boundary and no example is skipped
  (with one process it is the order the grain path reads); every process computes the same stream
  and takes its own part of each global batch;
* an example's crop and flip are drawn from `fold_in(key, its position in that stream)`, so they
  depend neither on the device count nor on how the batch is split over devices and processes.

The draws follow augment.py's distributions (RandomPadCrop, RandomFlip) and the same draw gives
the same image; the random numbers themselves differ (jax.random, not NumPy's Philox).
"""

import logging
import time
from typing import Callable, Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from resnet_jax.data import pipeline

# Keeps the augmentation stream apart from the streams that jax.random.key(seed) itself starts
# (the initial weights, stochastic depth).
_AUGMENT_STREAM = 0x61756731
# The augmentations `augment` implements inside the jitted step.
AUGMENTATIONS = ('cifar', 'shift', 'none')


def load_split(config, key: str) -> dict[str, np.ndarray]:
  """Decodes every example of the configured split config.<key> once: {'image': uint8
  [N, H, W, C], 'label': int32 [N]}."""
  source = pipeline.open_split(config, key)
  pipeline._check(config, source)  # pylint: disable=protected-access
  started = time.perf_counter()
  n, shape = len(source), tuple(source.image_shape)
  images, labels = np.empty((n, *shape), np.uint8), np.empty((n,), np.int32)
  for i in range(n):
    record = pipeline.read_example(config, source, i)
    images[i], labels[i] = record['image'], record['label']
  logging.info('Decoded the %d examples of %s %r into %.0f MB of uint8 in %.1f s.', n,
               config.dataset, config[key], images.nbytes / 2**20, time.perf_counter() - started)
  return {'image': images, 'label': labels}


class Stream:
  """Which records each step reads, and where they stand in the stream, as a function of the step.

  `stream(step)` is this process's part of the global batch of `step`:
  {'index': int32 record indices, 'position': uint32 stream positions} (positions wrap at 2**32
  examples, 86,000 CIFAR epochs).
  """

  def __init__(self, num_records: int, *, global_batch_size: int, seed: int,
               process_index: int | None = None, process_count: int | None = None):
    # The grain path's checks of the process split; process_index and process_count default to
    # jax.process_index() and jax.process_count().
    shard = pipeline._shard_options(  # pylint: disable=protected-access
        global_batch_size, process_index, process_count)
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // shard.shard_count
    self._offset = shard.shard_index * self.local_batch_size
    # Indexing past the end of the split reads the next epoch's permutation.
    self._order = grain.MapDataset.range(num_records).shuffle(seed=seed)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    start = step * self.global_batch_size + self._offset
    positions = range(start, start + self.local_batch_size)
    return {'index': np.array([self._order[p] for p in positions], np.int32),
            'position': np.array([p % 2**32 for p in positions], np.uint32)}

  def from_step(self, step: int) -> Iterator[dict[str, np.ndarray]]:
    while True:
      yield self(step)
      step += 1


def augment_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM)


def _augment_key_data(seed: int) -> np.ndarray:
  # Host data, so that the jitted step closes over a constant rather than an array committed to
  # one device (a multi-process step spans devices this process does not hold).
  return np.asarray(jax.random.key_data(augment_key(seed)))


def draw(key: jax.Array, positions: jax.Array, pad: int):
  """Each example's crop corner in the padded image, (top, left) in [0, 2 * pad], and its flip."""
  def one(position):
    crop_key, flip_key = jax.random.split(jax.random.fold_in(key, position))
    top, left = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
    return top, left, jax.random.bernoulli(flip_key)
  return jax.vmap(one)(positions)


def crop_and_flip(image: jax.Array, top, left, flip, pad: int) -> jax.Array:
  """augment.RandomPadCrop then RandomFlip with their draws given: zero-pad `pad` pixels, crop at
  (top, left) of the padded image, mirror left-right if `flip`."""
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  out = lax.dynamic_slice(padded, (top, left, 0), image.shape)
  return jnp.where(flip, out[:, ::-1], out)


def augment(images: jax.Array, positions: jax.Array, *, key: jax.Array, mode: str,
            pad: int) -> jax.Array:
  """uint8 [B, H, W, C] -> the uint8 views that `mode` draws for these positions."""
  if mode in ('cifar', 'shift'):
    top, left, flip = draw(key, positions, pad)
    if mode == 'shift':  # Pad and crop without the flip (a mirrored digit is another glyph).
      flip = jnp.zeros_like(flip)
    images = jax.vmap(crop_and_flip, in_axes=(0, 0, 0, 0, None))(images, top, left, flip, pad)
  elif mode not in AUGMENTATIONS:
    raise ValueError(f'the device data path does not implement augment={mode!r}')
  return images


def gathered(step_fn: Callable, config, seed: int) -> Callable:
  """`step_fn(state, batch)` as `fn(state, indices, dataset)`, for the device path.

  `indices` is a `Stream` item (this device's part), `dataset` the split from `load_split` on
  the devices; the batch that `step_fn` sees is the grain path's {'image': uint8, 'label'}, and
  `step_fn` normalises it (resnet_jax.train.step.configured_train_step).
  """
  key_data = _augment_key_data(seed)
  options = dict(mode=config.augment, pad=config.pad)

  def fn(state, indices, dataset):
    key = jax.random.wrap_key_data(key_data)
    images = augment(dataset['image'][indices['index']], indices['position'], key=key, **options)
    return step_fn(state, {'image': images, 'label': dataset['label'][indices['index']]})
  return fn
