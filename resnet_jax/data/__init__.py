"""Input pipelines: tfds data_source + grain for CIFAR and ImageNet, scikit-learn digits offline.

  info = data.dataset_info(config.data)
  train_iter = data.create_train_iterator(config.data, global_batch_size=..., seed=...)
  for batch in data.create_eval_iterator(config.data, global_batch_size=...): ...

The device data path (config.data.pipeline='device') is `data.device`; the facts of each dataset
are in `data.datasets`.
"""

from resnet_jax.data import datasets
from resnet_jax.data import device
from resnet_jax.data.errors import DataError
from resnet_jax.data.pipeline import AUGMENTATIONS
from resnet_jax.data.pipeline import create_eval_iterator
from resnet_jax.data.pipeline import create_train_iterator
from resnet_jax.data.pipeline import dataset_info
from resnet_jax.data.pipeline import DatasetInfo
from resnet_jax.data.pipeline import open_source

__all__ = [
    'AUGMENTATIONS',
    'DataError',
    'DatasetInfo',
    'create_eval_iterator',
    'create_train_iterator',
    'dataset_info',
    'datasets',
    'device',
    'open_source',
]
