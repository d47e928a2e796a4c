"""The datasets a run can name in config.data.dataset: one record each.

Every other module reads a dataset's facts here: its classes, image shape, split sizes, the
normalisation statistics and which input pipelines serve it. A config names only the dataset;
resnet_jax.recipes.finalize fills config.data.mean, .std, .image_size and config.model.num_classes
from its record when they are left at None. Any other tfds dataset (prepared as ArrayRecord) can
be read too, with those keys set in its config.
"""

import dataclasses
import functools

from resnet_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset.

  image_shape: (H, W, C) as stored; H and W are None where the images vary in size.
  splits: examples in each named split; tfds split strings ('train[:45000]') select from these.
  mean, std: per-channel statistics of the training split, in [0, 255] pixel units.
  pipelines: the config.data.pipeline values that serve it ('device' keeps the whole train split
    on every device, so only small datasets of fixed-size images allow it).
  source: 'tfds' (tfds.data_source over ArrayRecord files) or 'sklearn' (resnet_jax/data/digits.py).
  class_names: None where tfds's metadata has them.
  """
  name: str
  num_classes: int
  image_shape: tuple[int | None, int | None, int]
  splits: dict[str, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  pipelines: tuple[str, ...]
  source: str = 'tfds'
  class_names: tuple[str, ...] | None = None

  @property
  def fixed_size(self) -> bool:
    return None not in self.image_shape[:2]


TABLE = {d.name: d for d in (
    Dataset('cifar10', 10, (32, 32, 3), {'train': 50_000, 'test': 10_000},
            mean=(125.31, 122.95, 113.87), std=(62.99, 62.09, 66.70),
            pipelines=('grain', 'device')),
    Dataset('cifar100', 100, (32, 32, 3), {'train': 50_000, 'test': 10_000},
            mean=(129.30, 124.07, 112.43), std=(68.17, 65.39, 70.42),
            pipelines=('grain', 'device')),
    # torchvision's statistics (its ImageNet models' preprocessing).
    Dataset('imagenet2012', 1000, (None, None, 3), {'train': 1_281_167, 'validation': 50_000},
            mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), pipelines=('grain',)),
    # scikit-learn's 8x8 digits scaled to 0..255: real data with no download (the quickstart).
    Dataset('digits', 10, (8, 8, 1), {'train': 1437, 'test': 360}, mean=(77.89,),
            std=(95.71,), pipelines=('grain', 'device'), source='sklearn',
            class_names=tuple(str(i) for i in range(10))),
)}
PIPELINES = ('grain', 'device')


def get(name: str) -> Dataset | None:
  """The record of `name`, or None for a tfds dataset that is not in the table."""
  return TABLE.get(name)


class EmptySplit(DataError):
  """A split string that selects no example; `sizes`: examples in each named split. Whoever
  knows where the string came from (a config key, a flag) names it."""

  def __init__(self, name: str, split: str, sizes: dict):
    super().__init__(f'Split {split!r} of dataset {name!r} selects 0 examples (the splits hold '
                     f'{", ".join(f"{n!r}: {k}" for n, k in sizes.items())}).')


def read_instructions(name: str, split: str, sizes: dict[str, int]):
  """tfds's absolute read instructions of the split string `split`, given the named splits'
  sizes: DataError for a string that tfds cannot parse or that names no split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  infos = {n: tfds.core.SplitInfo(name=n, shard_lengths=[k], num_bytes=0)
           for n, k in sizes.items()}
  try:
    return tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
  except (ValueError, AssertionError, KeyError) as e:
    raise DataError(f'Bad split {split!r} for dataset {name!r} (splits: '
                    f'{", ".join(map(repr, sizes))}): {" ".join(str(e).split())}') from None


@functools.cache
def split_size(name: str, split: str) -> int | None:
  """Examples that `split` selects of a dataset in the table, from its recorded split sizes and
  tfds's split syntax; None for a dataset outside the table."""
  record = get(name)
  if record is None:
    return None
  return sum(len(range(record.splits[i.splitname])[i.from_:i.to])
             for i in read_instructions(name, split, record.splits))
