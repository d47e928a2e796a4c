"""A short ResNet-20 run on the real CIFAR-10 learns: 250 steps (0.64 epoch) of the 2015 recipe.

Skipped, with the reason, when CIFAR-10 is not prepared in TFDS_DATA_DIR.
"""

import os
import pathlib

import jax
import pytest

from configs import cifar10_resnet20
from resnet_jax.train import loop

pytestmark = pytest.mark.slow


def _cifar10_prepared():
  root = os.environ.get('TFDS_DATA_DIR')
  return bool(root) and (pathlib.Path(root) / 'cifar10' / '3.0.2').is_dir()


@pytest.mark.skipif(not _cifar10_prepared(),
                    reason='CIFAR-10 (tfds array_record) not found under $TFDS_DATA_DIR; '
                           'see ../shared/data/README.md')
def test_resnet20_reaches_40_percent_test_accuracy_in_250_steps(tmp_path):
  config = cifar10_resnet20.get_config()
  config.num_train_steps = 250
  config.lr_boundaries = (200,)
  config.log_every_steps = 50
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 250
  summary = loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  assert summary['eval/num_examples'] == 10_000
  # Measured: 45.5% (seed 0, CPU). Chance is 10%.
  assert summary['eval/accuracy'] >= 0.40, summary
