"""scikit-learn's 8x8 digits as a random-access data source: real data that needs no download.

The 1,797 images are split by position, with no RNG involved, so the split never changes:
'train' is the first 1,437 (80%) and 'test' the last 360. The file lists the digits in a
near-cyclic class order, so both splits are balanced to within a few examples per class.
Split strings follow tfds's syntax ('train[:1000]', 'train[80%:]', 'train+test').
"""

import functools

import numpy as np
from sklearn import datasets
import tensorflow_datasets as tfds

from resnet_jax.data.errors import DataError, empty_split_message

NUM_TRAIN = 1437
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


@functools.cache
def _load():
  digits = datasets.load_digits()
  # Pixel values are 0..16; scaling to 0..255 lets digits share the uint8 image path and
  # the pixel-unit mean/std of the other datasets. round() keeps the 17 levels distinct.
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  return {
      'train': (images[:NUM_TRAIN], labels[:NUM_TRAIN]),
      'test': (images[NUM_TRAIN:], labels[NUM_TRAIN:]),
  }


def _split_indices(split, sizes):
  """Positions selected by a tfds split string, given the size of each named split."""
  infos = {
      name: tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
      for name, n in sizes.items()
  }
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
  except (ValueError, AssertionError) as e:
    raise DataError(
        f"Bad split {split!r} for dataset 'digits' (splits: 'train', 'test'): {e}"
    ) from None
  return [
      (inst.splitname, np.arange(sizes[inst.splitname])[inst.from_:inst.to])
      for inst in instructions
  ]


class DigitsSource:
  """A split of the digits: `len()` and `[i]` -> {'image': uint8 (8, 8, 1), 'label': int32}."""

  def __init__(self, split):
    self.split = split
    data = _load()
    sizes = {name: len(x) for name, (x, _) in data.items()}
    parts = _split_indices(split, sizes)
    if not sum(len(idx) for _, idx in parts):
      raise DataError(empty_split_message('digits', split, sizes))
    self._images = np.concatenate([data[name][0][idx] for name, idx in parts])
    self._labels = np.concatenate([data[name][1][idx] for name, idx in parts])

  def __len__(self):
    return len(self._labels)

  def __getitem__(self, index):
    return {'image': self._images[index], 'label': self._labels[index]}

  def __repr__(self):
    # grain checks this string when an iterator state is restored.
    return f'DigitsSource(split={self.split!r})'
