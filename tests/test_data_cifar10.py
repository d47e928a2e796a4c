"""The pipeline on the real CIFAR-10 (tfds array_record), where it is available offline.

The data is looked for in $TFDS_DATA_DIR, then in ../shared/data/tfds beside the repository;
without it these tests are skipped, with that reason.
"""

import collections
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import cifar10
from resnet_jax import data, recipes
from resnet_jax.train import optim, run
from resnet_jax.train import step as step_lib
from tests import helpers


def _find_cifar10():
  candidates = [os.environ.get('TFDS_DATA_DIR'),
                pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'tfds']
  for directory in candidates:
    if directory and (pathlib.Path(directory) / 'cifar10').is_dir():
      return str(directory)
  return None


DATA_DIR = _find_cifar10()
pytestmark = pytest.mark.skipif(
    DATA_DIR is None,
    reason='real CIFAR-10 (tfds cifar10, array_record) is in neither $TFDS_DATA_DIR nor '
    '../shared/data/tfds; nothing is downloaded in tests')


def cifar10_config(**overrides):
  """config.data of configs/cifar10.py as a run finalises it, with the data directory found
  above."""
  config = recipes.finalize(cifar10.get_config()).data
  config.data_dir = DATA_DIR
  config.update(overrides)
  return config


def test_splits_have_50000_training_and_10000_test_examples():
  info = data.dataset_info(cifar10_config())
  assert info == data.DatasetInfo(num_classes=10, image_shape=(32, 32, 3), num_train=50_000,
                                  num_eval=10_000)


def test_the_papers_45k_5k_validation_split_is_two_split_strings():
  info = data.dataset_info(cifar10_config(train_split='train[:45000]',
                                          eval_split='train[45000:]'))
  assert (info.num_train, info.num_eval) == (45_000, 5_000)


def test_a_run_on_the_45k_split_counts_its_epochs_in_45k_examples():
  config = cifar10.get_config()
  config.data.update(data_dir=DATA_DIR, train_split='train[:45000]', eval_split='train[45000:]')
  config.update(num_epochs=2.0, warmup_epochs=1.0, eval_every_epochs=0.5)
  prepared = run.prepare(config)
  assert prepared.info.num_train == prepared.num_train == 45_000
  final = prepared.config
  assert (final.warmup_steps, final.eval_every_steps) == (45_000 // 128, 22_500 // 128)
  assert optim.num_train_steps(final, prepared.num_train) == 2 * 45_000 // 128


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_counts_exactly_the_10000_test_images_1000_per_class(process_count):
  """Batch 384 does not divide 10,000: 27 batches per process, the last one padded."""
  labels, steps = [], set()
  for p in range(process_count):
    batches = list(data.create_eval_iterator(cifar10_config(), global_batch_size=384,
                                             process_index=p, process_count=process_count))
    steps.add(len(batches))
    for b in batches:
      assert b['image'].shape == (384 // process_count, 32, 32, 3)
      labels.append(b['label'][b['mask']])
  labels = np.concatenate(labels)
  assert steps == {27} and len(labels) == 10_000
  assert collections.Counter(labels.tolist()) == {c: 1000 for c in range(10)}


@pytest.mark.slow
def test_a_pass_over_the_training_split_yields_50000_examples_5000_per_class():
  batches = data.create_eval_iterator(cifar10_config(eval_split='train', augment='none'),
                                      global_batch_size=1000)
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  assert collections.Counter(labels.tolist()) == {c: 5000 for c in range(10)}


def test_normalisation_uses_the_training_set_statistics():
  """Without augmentation the normalised training images have mean 0 and std 1 per channel."""
  config = cifar10_config(augment='none')
  iterator = data.create_train_iterator(config, global_batch_size=500, seed=0)
  pixels = np.concatenate([next(iterator)['image'] for _ in range(4)])
  images = np.asarray(step_lib.model_input(pixels, config.mean, config.std))
  np.testing.assert_allclose(images.mean((0, 1, 2)), 0, atol=0.05)
  np.testing.assert_allclose(images.std((0, 1, 2)), 1, atol=0.05)


def test_cifar_augmentation_pads_crops_and_flips():
  """Every augmented image is a shifted window of a stored one, some of them mirrored."""
  config = cifar10_config(train_split='train[:64]')
  plain = next(data.create_train_iterator(cifar10_config(train_split='train[:64]',
                                                         augment='none'),
                                          global_batch_size=64, seed=0))
  augmented = next(data.create_train_iterator(config, global_batch_size=64, seed=0))
  flips = 0
  for image, original in zip(augmented['image'], plain['image']):
    padded = np.zeros((40, 40, 3), np.uint8)  # Zero pixels: the padding is black.
    padded[4:36, 4:36] = original
    windows = {(t, l, f) for t in range(9) for l in range(9) for f in (0, 1)
               if np.array_equal((image[:, ::-1] if f else image), padded[t:t + 32, l:l + 32])}
    assert windows, 'not a window of the padded image'
    flips += min(f for _, _, f in windows)
  assert 10 < flips < 54


def test_resume_with_augmentation_yields_the_uninterrupted_stream():
  def iterator():
    return data.create_train_iterator(cifar10_config(), global_batch_size=64, seed=5,
                                      process_index=1, process_count=2)
  uninterrupted = iterator()
  for _ in range(6):
    next(uninterrupted)
  state = uninterrupted.get_state()
  expected = [next(uninterrupted) for _ in range(3)]
  resumed = iterator()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])


def test_pipeline_never_imports_tensorflow():
  script = textwrap.dedent(f"""
      import sys
      import ml_collections
      from resnet_jax import data, recipes
      config = ml_collections.ConfigDict({cifar10_config().to_dict()!r})
      data.dataset_info(config)
      train = data.create_train_iterator(config, global_batch_size=128, seed=0)
      for _ in range(3):
        next(train)
      next(iter(data.create_eval_iterator(config, global_batch_size=500)))
      loaded = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.'))
      assert not loaded, loaded
      print('ok')
      """)
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=helpers.HANG_S)
  assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr
