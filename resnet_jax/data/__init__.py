"""Input pipelines: tfds data_source + grain for CIFAR and ImageNet, scikit-learn digits offline.

  info = data.dataset_info(config.data)
  train_iter = data.create_train_iterator(config.data, global_batch_size=..., seed=...)
  for batch in data.create_eval_iterator(config.data, global_batch_size=...): ...

The device data path (config.data.pipeline='device') is `data.device`; the facts of each dataset
are in `data.datasets`.
"""

from resnet_jax.data import datasets, device
from resnet_jax.data.pipeline import (AUGMENTATIONS, DatasetInfo, create_eval_iterator,
                                      create_train_iterator, dataset_info, open_source)
from resnet_jax.errors import DataError

__all__ = ['AUGMENTATIONS', 'DataError', 'DatasetInfo', 'create_eval_iterator',
           'create_train_iterator', 'dataset_info', 'datasets', 'device', 'open_source']
