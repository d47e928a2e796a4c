"""imagenet2012 through the same pipeline, on tfds's mock data (ImageNet itself is absent).

`tfds.testing.mock_data` serves random images of random sizes with the real features
(1,000 classes) through `tfds.data_source`, offline.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import imagenet
from resnet_jax import data

NUM_EXAMPLES = 20


def imagenet_config(**overrides):
  """config.data as configs/imagenet.py sets it, at a small image size for speed."""
  config = imagenet.get_config().data
  config.update(dict(image_size=64, worker_count=0, **overrides))
  return config


@pytest.fixture(autouse=True)
def mock_imagenet():
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              num_examples=NUM_EXAMPLES):
    yield


def test_dataset_info():
  assert data.dataset_info(imagenet_config()) == data.DatasetInfo(
      num_classes=1000, image_shape=(64, 64, 3), num_train=NUM_EXAMPLES, num_eval=NUM_EXAMPLES)


def test_mock_images_vary_in_size():
  """So the crops below are really resizing, not passing images through."""
  source = data.open_source(imagenet_config(), 'train')
  assert len({source[i]['image'].shape for i in range(5)}) > 1


@pytest.mark.parametrize('augment', ['inception', 'none'])
def test_train_batches_are_cropped_to_image_size(augment):
  iterator = data.create_train_iterator(imagenet_config(augment=augment), global_batch_size=8,
                                        seed=0, process_index=0, process_count=2)
  for _ in range(3):
    batch = next(iterator)
    assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.uint8
    assert ((0 <= batch['label']) & (batch['label'] < 1000)).all()


def test_inception_crops_change_every_epoch_and_none_gives_the_eval_view():
  """Each epoch (one batch here) holds the same records; compare them as sets of pixel sums."""
  def epoch_sums(augment):
    iterator = data.create_train_iterator(
        imagenet_config(augment=augment), global_batch_size=NUM_EXAMPLES, seed=0)
    return [np.sort(next(iterator)['image'].sum((1, 2, 3))) for _ in range(2)]
  crops = epoch_sums('inception')
  assert not np.allclose(crops[0], crops[1], rtol=1e-3)
  views = epoch_sums('none')
  np.testing.assert_allclose(views[0], views[1], rtol=1e-5)
  (eval_batch,) = data.create_eval_iterator(imagenet_config(), global_batch_size=NUM_EXAMPLES)
  np.testing.assert_allclose(np.sort(eval_batch['image'].sum((1, 2, 3))), views[0], rtol=1e-5)


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_centre_crops_and_covers_each_example_once(process_count):
  global_batch_size = 8
  count, batches_per_process = 0, set()
  for p in range(process_count):
    batches = list(data.create_eval_iterator(
        imagenet_config(), global_batch_size=global_batch_size, process_index=p,
        process_count=process_count))
    batches_per_process.add(len(batches))
    for b in batches:
      assert b['image'].shape == (global_batch_size // process_count, 64, 64, 3)
      count += int(b['mask'].sum())
  assert batches_per_process == {3} and count == NUM_EXAMPLES


def test_pad_and_crop_augmentation_needs_fixed_size_images():
  with pytest.raises(data.DataError, match='vary in size'):
    data.create_train_iterator(imagenet_config(augment='cifar'), global_batch_size=8, seed=0)
