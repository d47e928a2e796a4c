"""scikit-learn's 8x8 digits as a random-access data source: real data that needs no download.

The 1,797 images are split by position, with no RNG involved, so the split never changes:
'train' is the first 1,437 (80%) and 'test' the last 360. The file lists the digits in a
near-cyclic class order, so both splits are balanced to within a few examples per class.
Split strings follow tfds's syntax ('train[:1000]', 'train[80%:]', 'train+test').
"""

import functools

import numpy as np
from sklearn import datasets as sklearn_datasets

from resnet_jax.data import datasets

RECORD = datasets.TABLE['digits']


@functools.cache
def _load():
  digits = sklearn_datasets.load_digits()
  # Pixel values are 0..16; scaling to 0..255 lets digits share the uint8 image path and
  # the pixel-unit mean/std of the other datasets. round() keeps the 17 levels distinct.
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  num_train = RECORD.splits['train']
  return {'train': (images[:num_train], labels[:num_train]),
          'test': (images[num_train:], labels[num_train:])}


class DigitsSource:
  """A split of the digits: `len()` and `[i]` -> {'image': uint8 (8, 8, 1), 'label': int32}."""

  num_classes, image_shape = RECORD.num_classes, RECORD.image_shape

  def __init__(self, split):
    self.split = split
    data = _load()
    sizes = {name: len(x) for name, (x, _) in data.items()}
    parts = [(i.splitname, np.arange(sizes[i.splitname])[i.from_:i.to])
             for i in datasets.read_instructions('digits', split, sizes)]
    if not sum(len(idx) for _, idx in parts):
      raise datasets.EmptySplit('digits', split, sizes)
    self._images = np.concatenate([data[name][0][idx] for name, idx in parts])
    self._labels = np.concatenate([data[name][1][idx] for name, idx in parts])

  def __len__(self):
    return len(self._labels)

  def __getitem__(self, index):
    return {'image': self._images[index], 'label': self._labels[index]}

  def __repr__(self):
    # grain checks this string when an iterator state is restored.
    return f'DigitsSource(split={self.split!r})'
