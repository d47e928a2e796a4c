"""The trainer end to end on the offline digits: it learns, logs, checkpoints and recovers."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import quickstart
from resnet_jax.metrics import read_metrics
from resnet_jax.train import loop, run
from resnet_jax.train import workdir
from resnet_jax.train.checkpoint import Checkpointer


def _short_quickstart(steps=150, **overrides):
  config = quickstart.get_config()
  config.num_train_steps = steps
  config.lr_boundaries = (steps - 30,)
  config.log_every_steps = 25
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 50
  config.keep_checkpoints = 1
  for k, v in overrides.items():
    config[k] = v
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('quickstart')
  summary = loop.train_and_evaluate(_short_quickstart(), str(workdir), devices=jax.devices()[:1])
  return workdir, summary


def test_a_short_run_learns_the_digits(trained):
  _, summary = trained
  assert summary['step'] == 150
  assert summary['eval/accuracy'] > 0.85
  # Every test digit counted once: eval pads and masks, it does not drop.
  assert summary['eval/num_examples'] == 360


def test_metrics_jsonl_has_train_eval_and_lr_records(trained):
  workdir, _ = trained
  records = read_metrics(str(workdir))
  train = [r for r in records if 'train/loss' in r]
  evals = [r for r in records if 'eval/accuracy' in r]
  assert [r['step'] for r in train] == [25, 50, 75, 100, 125, 150]
  assert [r['step'] for r in evals] == [50, 100, 150]
  assert {'train/loss', 'train/accuracy', 'train/top5_accuracy', 'lr'} <= set(train[0])
  assert {'eval/loss', 'eval/accuracy', 'eval/top5_accuracy'} <= set(evals[0])
  assert train[-1]['train/loss'] < train[0]['train/loss']
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['num_train_steps'] == 150 and saved['model']['placement'] == 'full_preact'
  assert json.loads((workdir / 'summary.json').read_text())['step'] == 150


def test_keeps_the_latest_and_the_best_checkpoint(trained):
  workdir, _ = trained
  evals = [r for r in read_metrics(str(workdir)) if 'eval/accuracy' in r]
  best = max(evals, key=lambda r: r['eval/accuracy'])['step']
  kept = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert kept == sorted({150, best})


def test_rerunning_a_finished_run_changes_nothing(trained):
  workdir, summary = trained
  before = (workdir / 'metrics.jsonl').read_text()
  again = loop.train_and_evaluate(_short_quickstart(), str(workdir), devices=jax.devices()[:1])
  assert again['eval/accuracy'] == summary['eval/accuracy']
  assert (workdir / 'metrics.jsonl').read_text() == before


def test_the_run_records_its_layout_and_a_resume_with_scan_none_keeps_it(tmp_path):
  """config.json records the scan layout the net was built with (readers build the same net),
  and a rerun whose config leaves scan at None resumes in the recorded layout, whichever this
  backend would pick (a scanned run from an accelerator resumes on a CPU)."""
  config = _short_quickstart(steps=4, checkpoint_every_steps=2, eval_every_steps=2,
                             log_every_steps=2, keep_checkpoints=3, lr_boundaries=(),
                             warmup_steps=0)
  assert config.model.scan is None
  loop.train_and_evaluate(config, str(tmp_path / 'unrolled'), devices=jax.devices()[:1])
  assert json.loads((tmp_path / 'unrolled' / 'config.json').read_text())['model']['scan'] is False
  scanned = config.copy_and_resolve_references()
  scanned.model.scan = True  # Not what the CPU picks for ResNet-20.
  first = loop.train_and_evaluate(scanned, str(tmp_path / 'scanned'), devices=jax.devices()[:1])
  (tmp_path / 'scanned' / 'summary.json').unlink()
  shutil.rmtree(tmp_path / 'scanned' / 'checkpoints' / '4')  # As if killed after step 2's save.
  resumed = loop.train_and_evaluate(config, str(tmp_path / 'scanned'), devices=jax.devices()[:1])
  assert resumed['eval/accuracy'] == first['eval/accuracy']
  assert resumed['train/loss'] == first['train/loss']
  assert json.loads((tmp_path / 'scanned' / 'config.json').read_text())['model']['scan'] is True


def test_an_unreadable_checkpoint_falls_back_to_an_older_one(tmp_path):
  config = _short_quickstart(steps=4, checkpoint_every_steps=2, eval_every_steps=4,
                             log_every_steps=2, keep_checkpoints=3, lr_boundaries=(),
                             warmup_steps=0)
  loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  # Damage every data file of the newest checkpoint's state, as a crash mid-write on a
  # filesystem without atomic renames would.
  for f in (tmp_path / 'checkpoints' / '4' / 'state').rglob('*'):
    if f.is_file():
      f.write_bytes(b'\0garbage')
  ckpt = Checkpointer(str(tmp_path / 'checkpoints'))
  from resnet_jax import data, parallel
  # The state and the iterator as the trainer builds them, to restore into.
  built = run.build(run.prepare(config), parallel.DataParallel('shard_map', jax.devices()[:1]))
  it = loop.ConsumedIterator(data.create_train_iterator(built.config.data, global_batch_size=128,
                                                        seed=0))
  step, _, _ = ckpt.restore(built.state, it, workdir.as_dict(built.config))
  ckpt.close()
  assert step == 2
  # Nothing was deleted: the unreadable one was moved aside, so step 4 can be saved again.
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2', 'corrupt-4']


@pytest.mark.slow
def test_the_quickstart_as_shipped_reaches_95_percent(tmp_path):
  summary = loop.train_and_evaluate(quickstart.get_config(), str(tmp_path),
                                    devices=jax.devices()[:1])
  assert summary['step'] == 600
  assert summary['eval/accuracy'] >= 0.95, summary
  # It checkpoints several times during the run, not only at the end.
  from tests import helpers
  assert helpers.checkpoint_steps(tmp_path) == [200, 400, 600]


def test_the_imagenet_config_trains_end_to_end_on_mock_imagenet(tmp_path):
  # ImageNet is absent here: tfds's mock data serves random images with the real features.
  import tensorflow_datasets as tfds
  from configs import imagenet_resnet50
  config = imagenet_resnet50.get_config()
  config.model.depth = 18
  config.data.image_size = 64
  config.data.worker_count = 0
  config.batch_size = config.eval_batch_size = 8
  config.num_epochs = 0.0
  config.num_train_steps = 2
  config.warmup_steps = 1
  config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=20):
    summary = loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2])
  assert summary['step'] == 2 and summary['eval/num_examples'] == 20
  assert np.isfinite(summary['train/loss'])


def test_the_error_warmup_logs_its_lr_and_a_resumed_run_continues_it_exactly(tmp_path):
  """warmup_rule='train_error': warmup_lr until the running training error is below 80%, then
  the schedule; the rule's state is in the optimiser state, so a run resumed from a checkpoint
  taken during the warm-up ends exactly where an uninterrupted one does."""
  from tests import helpers
  config = _short_quickstart(steps=40, warmup_rule='train_error', warmup_steps=30,
                             warmup_mode='constant', log_every_steps=2, eval_every_steps=40,
                             checkpoint_every_steps=4, keep_checkpoints=20,
                             keep_best_checkpoint=False, lr_boundaries=(35,))
  whole = tmp_path / 'whole'
  loop.train_and_evaluate(config, str(whole), devices=jax.devices()[:1])
  lrs = [(r['step'], r['lr']) for r in read_metrics(str(whole)) if 'lr' in r]
  switch = next(step for step, lr in lrs if lr != config.warmup_lr)
  assert 2 < switch < 30, lrs  # Digits fall below 80% error well before the cap.
  assert all(lr == config.warmup_lr for step, lr in lrs if step < switch)
  assert all(lr == pytest.approx(config.learning_rate) for step, lr in lrs if switch <= step <= 35)
  resumed = tmp_path / 'resumed'
  shutil.copytree(whole, resumed)
  during = max(s for s in helpers.checkpoint_steps(resumed) if s < switch)
  for step in helpers.checkpoint_steps(resumed):
    if step > during:
      shutil.rmtree(resumed / 'checkpoints' / str(step))
  (resumed / 'summary.json').unlink()
  loop.train_and_evaluate(config, str(resumed), devices=jax.devices()[:1])
  assert [r for r in read_metrics(str(resumed)) if 'lr' in r] == [
      r for r in read_metrics(str(whole)) if 'lr' in r]
  helpers.assert_trees_equal(helpers.final_params(resumed)[1], helpers.final_params(whole)[1])
