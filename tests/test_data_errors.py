"""Damaged data fails at start-up, in data.dataset_info, with a DataError that names the file and
says how to rebuild it: never a Riegeli or JSON traceback mid-run, never a run on part of a split.

Each test damages a copy of the real CIFAR-10 (../shared/data/tfds, via TFDS_DATA_DIR) made of
symbolic links in tmp_path, so only the damaged file is written.
"""

import json

import pytest

from configs import cifar10_resnet20, quickstart
from resnet_jax import data, recipes
from tests import helpers

SOURCE = helpers.shared_tfds_dataset()

TRAIN_SHARD = 'cifar10-train.array_record-00001-of-00004'
TEST_SHARD = 'cifar10-test.array_record-00003-of-00004'


@pytest.fixture
def copy(tmp_path):
  if SOURCE is None:
    pytest.skip('CIFAR-10 is not prepared in TFDS_DATA_DIR (../shared/data/tfds)')
  return helpers.tfds_copy(SOURCE, tmp_path / 'tfds')


def _config(copy, **data_keys):
  config = recipes.finalize(cifar10_resnet20.get_config()).data
  config.data_dir = str(copy.parents[1])
  config.update(data_keys)
  return config


def _error(config) -> str:
  with pytest.raises(data.DataError) as error:
    data.dataset_info(config)
  message = str(error.value)
  assert '\n' not in message
  return message


def _assert_says_how_to_rebuild(message, copy):
  for part in (f'tfds build cifar10 --data_dir={copy.parents[1]}', '--file_format=array_record',
               "pip install 'resnet_jax[prepare]'"):
    assert part in message, message


def test_an_intact_copy_passes_the_checks(copy):
  info = data.dataset_info(_config(copy))
  assert (info.num_train, info.num_eval, info.num_classes) == (50_000, 10_000, 10)


@pytest.mark.parametrize('shard', [TRAIN_SHARD, TEST_SHARD])
@pytest.mark.parametrize('kind, words', [
    ('truncate', ['cannot be read', 'not an ArrayRecord file']),
    ('garbage', ['cannot be read', 'not an ArrayRecord file']),
    ('empty', ['cannot be read', 'not an ArrayRecord file']),
    ('delete', ['is missing', "examples of split", 'does not train on part of a split']),
])
def test_a_damaged_shard_is_named_with_how_to_rebuild_it(copy, shard, kind, words):
  path = helpers.damage(copy, kind, shard)
  message = _error(_config(copy))
  assert message.startswith(str(path)), message
  for word in words:
    assert word in message, message
  _assert_says_how_to_rebuild(message, copy)


@pytest.mark.parametrize('shard', [TRAIN_SHARD, TEST_SHARD])
def test_a_corrupted_chunk_inside_a_shard_is_caught_before_the_first_step(copy, shard):
  """issue 20: the bytes in the middle of a shard inverted; its first and last records still
  read, so only reading every record (the eval split, and CIFAR's small training split) finds
  it, before anything trains."""
  path = helpers.damage(copy, 'corrupt', shard)
  message = _error(_config(copy))
  assert message.startswith(f'{path} cannot be read: it is truncated, corrupted'), message
  _assert_says_how_to_rebuild(message, copy)


def test_a_shard_from_another_build_is_caught_by_its_record_count(copy):
  (copy / TRAIN_SHARD).unlink()
  (copy / TRAIN_SHARD).symlink_to(SOURCE / 'cifar10-test.array_record-00000-of-00004')
  message = _error(_config(copy))
  assert f'{copy / TRAIN_SHARD} holds 2500 records, but dataset_info.json records 12500' in message
  _assert_says_how_to_rebuild(message, copy)


def _rewrite_dataset_info(copy, edit):
  info = json.loads((copy / 'dataset_info.json').read_text())
  edit(info)
  (copy / 'dataset_info.json').unlink()
  (copy / 'dataset_info.json').write_text(json.dumps(info))


def test_shard_lengths_that_disagree_with_the_files_are_caught(copy):
  def shorten(info):
    info['splits'][0]['shardLengths'][0] = '12000'
  _rewrite_dataset_info(copy, shorten)
  message = _error(_config(copy))
  assert 'cifar10-train.array_record-00000-of-00004 holds 12500 records, but dataset_info.json ' \
         'records 12000' in message


def test_a_shard_that_dataset_info_records_but_the_disk_lacks_is_missing(copy):
  def add_shard(info):
    info['splits'][0]['shardLengths'].append('1')
  _rewrite_dataset_info(copy, add_shard)
  message = _error(_config(copy))
  assert 'cifar10-train.array_record-00000-of-00005 is missing' in message


@pytest.mark.parametrize('content, words', [
    (b'{"name": "cifar10", garbage', ['cannot be read', 'JSONDecodeError']),
    (None, ['cannot be read', 'JSONDecodeError']),  # Cut off half-way.
    (b'\xff\xfe\x00garbage', ['cannot be read', 'UnicodeDecodeError']),
    (b'{"name": "cifar10"}', ['cannot be read', "KeyError: 'splits'"]),
    (b'{"name": "cifar10", "splits": []}', ['records no splits']),
])
def test_a_garbage_dataset_info_json_is_named_with_how_to_rebuild_it(copy, content, words):
  path = copy / 'dataset_info.json'
  original = path.read_bytes()
  path.unlink()
  path.write_bytes(original[:len(original) // 2] if content is None else content)
  message = _error(_config(copy))
  assert message.startswith(str(path)), message
  for word in words:
    assert word in message, message
  _assert_says_how_to_rebuild(message, copy)


def test_an_unreadable_dataset_info_json_is_named(copy):
  path = copy / 'dataset_info.json'
  path.unlink()
  path.mkdir()  # Unreadable whoever runs the test, root included.
  message = _error(_config(copy))
  assert message.startswith(f'{path} cannot be read (IsADirectoryError'), message


def test_a_missing_dataset_info_json_says_the_dataset_is_not_fully_prepared(copy):
  (copy / 'dataset_info.json').unlink()
  message = _error(_config(copy))
  assert message.startswith(f'{copy / "dataset_info.json"} is missing'), message
  _assert_says_how_to_rebuild(message, copy)


def test_a_dataset_info_json_that_tfds_rejects_names_the_directory(copy):
  _rewrite_dataset_info(copy, lambda info: info.update(noSuchField=1))
  message = _error(_config(copy))
  assert f"Cannot open dataset 'cifar10' in {copy}" in message and 'noSuchField' in message
  _assert_says_how_to_rebuild(message, copy)


def test_only_the_shards_of_the_configured_splits_are_checked(copy):
  # The paper's 45k/5k split reads the train shards only; a damaged test shard is no concern.
  helpers.damage(copy, 'garbage', TEST_SHARD)
  info = data.dataset_info(_config(copy, train_split='train[:45000]', eval_split='train[45000:]'))
  assert (info.num_train, info.num_eval) == (45_000, 5_000)
  helpers.damage(copy, 'truncate', 'cifar10-train.array_record-00003-of-00004')
  message = _error(_config(copy, train_split='train[:45000]', eval_split='train[45000:]'))
  assert 'cifar10-train.array_record-00003-of-00004 cannot be read' in message


@pytest.mark.parametrize('key, split', [('train_split', 'train[:0]'),
                                        ('eval_split', 'test[10000:]')])
def test_an_empty_split_names_the_split_and_the_sizes(copy, key, split):
  message = _error(_config(copy, **{key: split}))
  assert f"Split {split!r} of dataset 'cifar10' selects 0 examples" in message
  assert "'train': 50000, 'test': 10000" in message and f'config.data.{key}' in message


@pytest.mark.parametrize('key, split', [('train_split', 'train[:0]'), ('eval_split', 'test[:0]')])
def test_an_empty_digits_split_names_the_split_and_the_sizes(key, split):
  config = recipes.finalize(quickstart.get_config()).data
  config[key] = split
  message = _error(config)
  assert f"Split {split!r} of dataset 'digits' selects 0 examples" in message
  assert "'train': 1437, 'test': 360" in message
