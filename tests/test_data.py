"""The input pipeline's contract, on scikit-learn digits (real, offline, seconds).

The digits' 1,437 training images are all distinct, so a normalised image identifies its
record: that is how these tests follow examples through shuffling, sharding and padding.
"""

import json
import os
import subprocess
import sys
import textwrap

from absl import flags
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import quickstart
from resnet_jax import data, recipes
from resnet_jax.train import step as step_lib
from resnet_jax.data import digits
from tests import helpers

NUM_TRAIN, NUM_TEST = 1437, 360


def digits_config(**overrides):
  """config.data of configs/quickstart.py as a run finalises it (the statistics from the dataset
  table), without augmentation unless asked."""
  config = recipes.finalize(quickstart.get_config()).data
  config.augment = 'none'
  config.update(overrides)
  return config


def take(iterator, n):
  """n batches, copied out of grain's (possibly shared-memory) buffers."""
  return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(n)]


def ids(batch, where=None):
  images = batch['image'] if where is None else batch['image'][where]
  return [image.tobytes() for image in images]


def all_ids(split):
  batches = data.create_eval_iterator(digits_config(eval_split=split), global_batch_size=1000)
  return {i for b in batches for i in ids(b, b['mask'])}


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_dataset_info_gives_split_sizes_classes_and_model_input_shape():
  assert data.dataset_info(digits_config()) == data.DatasetInfo(
      num_classes=10, image_shape=(8, 8, 1), num_train=NUM_TRAIN, num_eval=NUM_TEST)
  assert data.dataset_info(digits_config(train_split='train[:1000]')).num_train == 1000


def test_digits_split_is_fixed_the_first_80_percent_train_the_last_20_percent_test():
  train, test = digits.DigitsSource('train'), digits.DigitsSource('test')
  assert (len(train), len(test)) == (NUM_TRAIN, NUM_TEST)
  assert np.array_equal(digits.DigitsSource('train+test')[NUM_TRAIN]['image'], test[0]['image'])
  # Balanced: every class has 141-146 training and 33-37 test examples.
  assert np.bincount([train[i]['label'] for i in range(NUM_TRAIN)]).min() >= 141
  assert np.bincount([test[i]['label'] for i in range(NUM_TEST)]).min() >= 33
  assert train[0]['image'].dtype == np.uint8 and train[0]['image'].max() <= 255


def test_train_batches_are_this_process_part_of_the_global_batch_of_pixels():
  iterator = data.create_train_iterator(
      digits_config(), global_batch_size=64, seed=0, process_index=1, process_count=2)
  batches = take(iterator, 40)
  batch = batches[0]
  # uint8 pixels: the step normalises them on the device.
  assert batch['image'].shape == (32, 8, 8, 1) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  # mean/std are the training set's (the values recommended for configs/quickstart.py).
  config = digits_config()
  images = np.asarray(step_lib.model_input(np.concatenate([b['image'] for b in batches]),
                                           config.mean, config.std))
  assert abs(images.mean()) < 0.05 and abs(images.std() - 1) < 0.05


def test_each_epoch_is_a_permutation_of_the_split_reshuffled_by_the_seed():
  # 1437 = 3 x 479, so every epoch is exactly 3 batches.
  stream = take(data.create_train_iterator(digits_config(), global_batch_size=479, seed=7), 6)
  epochs = [sum((ids(b) for b in stream[i:i + 3]), []) for i in (0, 3)]
  everything = all_ids('train')
  for epoch in epochs:
    assert len(epoch) == NUM_TRAIN and set(epoch) == everything
  assert epochs[0] != epochs[1]
  same = take(data.create_train_iterator(digits_config(), global_batch_size=479, seed=7), 6)
  assert_same_batches(stream, same)
  other = take(data.create_train_iterator(digits_config(), global_batch_size=479, seed=8), 1)
  assert ids(other[0]) != ids(stream[0])


def test_processes_read_disjoint_shards_of_equal_size():
  # Each of 2 processes owns 718 examples (one of the 1437 is dropped for equal shards).
  config = digits_config()
  shards = []
  for p in range(2):
    batches = take(data.create_train_iterator(
        config, global_batch_size=718, seed=0, process_index=p, process_count=2), 2)
    shard = ids(batches[0]) + ids(batches[1])
    assert len(set(shard)) == 718
    # The second epoch permutes the same shard.
    assert set(shard) == set(ids(batches[0]) + ids(batches[1]))
    shards.append(set(shard))
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] <= all_ids('train')


@pytest.mark.parametrize('augment', ['shift', 'cifar'])
@pytest.mark.parametrize('process_index,process_count', [(0, 1), (1, 2)])
def test_resume_from_state_yields_the_uninterrupted_stream(augment, process_index,
                                                           process_count):
  """Exact resume, random augmentation included, across an epoch boundary (1437 / 100)."""
  def iterator():
    return data.create_train_iterator(
        digits_config(augment=augment), global_batch_size=100, seed=3,
        process_index=process_index, process_count=process_count)
  uninterrupted = take(iterator(), 25)
  first = iterator()
  take(first, 15)
  state = first.get_state()
  resumed = iterator()
  resumed.set_state(state)
  assert_same_batches(take(resumed, 10), uninterrupted[15:])
  # And the augmentation did change the images.
  plain = take(data.create_train_iterator(
      digits_config(), global_batch_size=100, seed=3, process_index=process_index,
      process_count=process_count), 1)
  assert np.array_equal(plain[0]['label'], uninterrupted[0]['label'])
  assert not np.array_equal(plain[0]['image'], uninterrupted[0]['image'])


def test_iterator_state_saves_and_restores_through_orbax(tmp_path):
  """The names the training loop checkpoints with: grain.checkpoint.CheckpointSave/Restore."""
  def iterator():
    return data.create_train_iterator(digits_config(augment='shift'), global_batch_size=64,
                                      seed=0)
  first = iterator()
  take(first, 30)
  with ocp.CheckpointManager(tmp_path, item_names=('data',)) as manager:
    manager.save(30, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(first)))
    manager.wait_until_finished()
    expected = take(first, 3)
    resumed = iterator()
    manager.restore(30, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert_same_batches(take(resumed, 3), expected)


@pytest.mark.parametrize('global_batch_size,process_count', [(64, 1), (64, 2), (100, 4),
                                                             (1000, 2)])
def test_eval_covers_every_example_exactly_once(global_batch_size, process_count):
  config = digits_config()
  num_batches = -(-NUM_TEST // global_batch_size)
  seen = []
  for p in range(process_count):
    batches = take(data.create_eval_iterator(
        config, global_batch_size=global_batch_size, process_index=p,
        process_count=process_count), num_batches)
    for b in batches:
      assert b['image'].shape == (global_batch_size // process_count, 8, 8, 1)
      assert b['mask'].dtype == bool
      seen += ids(b, b['mask'])
    # Every process runs the same number of steps.
    assert sum(1 for _ in data.create_eval_iterator(
        config, global_batch_size=global_batch_size, process_index=p,
        process_count=process_count)) == num_batches
  assert len(seen) == NUM_TEST and set(seen) == all_ids('test')


def test_eval_pads_only_the_end_of_the_split():
  batches = take(data.create_eval_iterator(digits_config(), global_batch_size=64), 6)
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks[:NUM_TEST].all() and not masks[NUM_TEST:].any()


def test_split_strings_make_a_validation_split_without_code():
  """The papers' 45k/5k split of CIFAR-10 is train[:45000] / train[45000:]; here 1000/437."""
  config = digits_config(train_split='train[:1000]', eval_split='train[1000:]')
  info = data.dataset_info(config)
  assert (info.num_train, info.num_eval) == (1000, 437)
  train = take(data.create_train_iterator(config, global_batch_size=1000, seed=0), 1)
  evaluated = all_ids('train[1000:]')
  assert len(evaluated) == 437 and not set(ids(train[0])) & evaluated
  assert set(ids(train[0])) | evaluated == all_ids('train')


@pytest.fixture
def absl_flags_parsed():
  # grain's worker processes read absl flags; the CLI parses them, pytest does not.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def test_a_worker_process_yields_the_in_process_stream_and_resumes_exactly(absl_flags_parsed):
  def iterator(worker_count):
    return data.create_train_iterator(digits_config(augment='cifar', worker_count=worker_count),
                                      global_batch_size=64, seed=1)
  expected = take(iterator(0), 9)
  first = iterator(1)
  assert_same_batches(take(first, 5), expected[:5])
  state = first.get_state()
  del first
  resumed = iterator(1)
  resumed.set_state(state)
  assert_same_batches(take(resumed, 4), expected[5:])


@pytest.mark.parametrize('batch_size', [64, 128, 360])  # 6, 3 and 1 batches over 2 workers.
def test_two_worker_processes_cover_the_eval_split_exactly_once(absl_flags_parsed, batch_size):
  batches = list(data.create_eval_iterator(digits_config(worker_count=2),
                                           global_batch_size=batch_size))
  assert len(batches) == -(-NUM_TEST // batch_size)
  seen = [i for b in batches for i in ids(b, b['mask'])]
  assert len(seen) == NUM_TEST and set(seen) == all_ids('test')


@pytest.mark.parametrize('overrides,kwargs,match', [
    ({}, dict(global_batch_size=63, process_count=2), 'multiple of the number of processes'),
    ({'dataset': 'no_such_dataset'}, {}, "Unknown dataset 'no_such_dataset'"),
    ({'augment': 'autoaugment'}, {}, 'Unknown config.data.augment'),
    ({'train_split': 'validation'}, {}, "Bad split 'validation'"),
    ({'train_split': 'train[:5000]'}, {}, 'incompatible with 1437 examples'),
    ({'mean': (0.5, 0.5, 0.5)}, {}, 'needs one value per image channel'),
    ({'image_size': 32}, {}, 'image_size=32'),
    ({'image_size': 32, 'augment': 'cifar'}, {}, 'image_size=32'),
])
def test_bad_configs_raise_data_error(overrides, kwargs, match):
  kwargs = {'global_batch_size': 64, 'process_index': 0, 'process_count': 1, **kwargs}
  with pytest.raises(data.DataError, match=match):
    data.create_train_iterator(digits_config(**overrides), seed=0, **kwargs)


MISSING_DATASET_HINTS = ('TFDS_DATA_DIR', '--config.data.data_dir', 'tfds build cifar100',
                         '--file_format=array_record', 'resnet_jax[prepare]')


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
  config = digits_config(dataset='cifar100', data_dir=str(tmp_path), image_size=32,
                         mean=(0,) * 3, std=(1,) * 3)
  with pytest.raises(data.DataError) as error:
    data.dataset_info(config)
  for part in ("'cifar100'", str(tmp_path), *MISSING_DATASET_HINTS):
    assert part in str(error.value)


def test_missing_dataset_in_tfds_data_dir_fails_fast_with_the_same_message(tmp_path):
  """With data_dir unset tfds fails another way (a KeyError). It reads TFDS_DATA_DIR when it is
  imported, hence the fresh process; the timeout checks that nothing hangs."""
  script = textwrap.dedent("""
      import ml_collections
      from resnet_jax import data
      config = ml_collections.ConfigDict(dict(dataset='cifar100', data_dir=None))
      try:
        data.open_source(config, 'train')
      except data.DataError as e:
        print(e)
      """)
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=helpers.HANG_S,
                          env={**os.environ, 'TFDS_DATA_DIR': str(tmp_path)})
  assert result.returncode == 0, result.stderr
  for part in ("'cifar100'", str(tmp_path), *MISSING_DATASET_HINTS):
    assert part in result.stdout


def test_tfrecord_only_dataset_says_how_to_rebuild_it_as_array_record(tmp_path):
  version_dir = tmp_path / 'cifar10' / '3.0.2'
  version_dir.mkdir(parents=True)
  (version_dir / 'dataset_info.json').write_text(json.dumps({
      'name': 'cifar10', 'version': '3.0.2', 'fileFormat': 'tfrecord',
      'moduleName': 'tensorflow_datasets.image_classification.cifar',
      'splits': [{'name': 'train', 'shardLengths': ['10'], 'numBytes': '100',
                  'filepathTemplate': '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'}]}))
  config = digits_config(dataset='cifar10', data_dir=str(tmp_path))
  with pytest.raises(data.DataError) as error:
    data.dataset_info(config)
  message = str(error.value)
  for part in ('tfrecord', str(version_dir), 'tfds convert_format', '--out_file_format=array_record',
               'tfds build cifar10', '--file_format=array_record'):
    assert part in message
