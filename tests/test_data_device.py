"""The device data path (config.data.pipeline='device'): the grain path's augmentations drawn
inside the jitted step, batches that are a function of (seed, step), and exact resume without
any iterator state.

Runs on 8 fake CPU devices (tests/conftest.py). The trainings are on the offline digits, but the
accuracy comparison, which runs on real CIFAR-10 and skips with the reason where it is absent.
"""

import functools
import signal

from absl import flags
import grain
import jax
import numpy as np
import pytest

from configs import cifar10_resnet20, quickstart
from resnet_jax import config_check, parallel, recipes
from resnet_jax.data import augment, datasets, device
from resnet_jax.train import loop, optim, run, step as step_lib
from resnet_jax.train.state import create_train_state
from tests import helpers

CIFAR_SHAPE, PAD = (32, 32, 3), 4


class _Draw:
  """Stands for the NumPy generator that grain hands augment.py's transforms, returning a given
  draw: the crop corner (top, left) in the padded image, then the flip."""

  def __init__(self, top, left, flip):
    self._integers = iter((top, left))
    self._flip = flip

  def integers(self, low, high):
    return next(self._integers)

  def random(self):
    return 0.25 if self._flip else 0.75  # RandomFlip mirrors below 0.5.


@pytest.mark.parametrize('shape,pad', [(CIFAR_SHAPE, PAD), ((8, 8, 1), 1)], ids=['cifar', 'digits'])
def test_the_same_draw_gives_the_grain_paths_image(shape, pad):
  image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  draws = [(t, l, f) for t in range(2 * pad + 1) for l in range(2 * pad + 1) for f in (0, 1)]
  grain_crops = []
  for top, left, flip in draws:
    rng = _Draw(top, left, flip)
    features = augment.RandomPadCrop(shape[0], pad).random_map({'image': image}, rng)
    grain_crops.append(augment.RandomFlip().random_map(features, rng)['image'])
  top, left, flip = (np.array(x) for x in zip(*draws))
  crops = jax.vmap(device.crop_and_flip, in_axes=(None, 0, 0, 0, None))(
      image, top, left, flip.astype(bool), pad)
  np.testing.assert_array_equal(np.asarray(crops), np.stack(grain_crops))
  # The step's normalisation on the device, as augment.Normalize computes it on the host.
  mean, std = tuple(range(100, 100 + shape[-1])), tuple(range(50, 50 + shape[-1]))
  normalised = jax.jit(step_lib.model_input)(crops, mean, std)
  expected = [augment.Normalize(mean, std).map({'image': c, 'label': 0})['image']
              for c in grain_crops]
  np.testing.assert_allclose(np.asarray(normalised), np.stack(expected), rtol=1e-6)


def _marker_image():
  """Row y holds y + 1 in channel 0 and column x holds x + 1 in channel 1, so a crop says where
  it was taken from and whether it was mirrored."""
  y, x = np.mgrid[:CIFAR_SHAPE[0], :CIFAR_SHAPE[1]]
  return np.stack([y + 1, x + 1, np.zeros_like(y)], axis=-1).astype(np.uint8)


def _read_draws(crops):
  """(top, left, flip) of CIFAR crops of the marker image (the centre pixel is never padding)."""
  crops = np.asarray(crops)
  centre = CIFAR_SHAPE[0] // 2
  top = crops[:, centre, centre, 0].astype(int) - (centre - PAD + 1)
  columns = crops[:, centre, centre - 1:centre + 1, 1].astype(int)
  flip = columns[:, 1] < columns[:, 0]
  left = columns[:, 1] - (centre - PAD + 1) + flip
  return top, left, flip


def _assert_uniform_offsets_and_fair_flips(top, left, flip):
  n = len(top)
  for offsets in (top, left):
    counts = np.bincount(offsets, minlength=2 * PAD + 1)
    assert len(counts) == 2 * PAD + 1 and counts.min() > 0  # Exactly the range [0, 2 * pad].
    # Pearson's chi-square against uniform, 8 degrees of freedom: 26.1 is its 99.9% quantile.
    expected = n / (2 * PAD + 1)
    assert ((counts - expected) ** 2 / expected).sum() < 26.1, counts
  assert abs(flip.mean() - 0.5) < 4 * np.sqrt(0.25 / n), flip.mean()


def test_both_paths_draw_crops_and_flips_from_the_same_distribution():
  n, image = 4000, _marker_image()
  # The grain path: augment.py's transforms with the generator grain makes for record i.
  grain_crops = []
  for i in range(n):
    rng = np.random.Generator(np.random.Philox(key=i))
    features = augment.RandomPadCrop(CIFAR_SHAPE[0], PAD).random_map({'image': image}, rng)
    grain_crops.append(augment.RandomFlip().random_map(features, rng)['image'])
  grain_draws = _read_draws(grain_crops)
  # The device path, as the train step runs it.
  run = jax.jit(functools.partial(device.augment, key=device.augment_key(0), pad=PAD),
                static_argnames='mode')
  images, positions = np.broadcast_to(image, (n, *CIFAR_SHAPE)), np.arange(n, dtype=np.uint32)
  device_draws = _read_draws(run(images, positions, mode='cifar'))
  for top, left, flip in (grain_draws, device_draws):
    _assert_uniform_offsets_and_fair_flips(top, left, flip)
  # The draws come from jax.random, not from grain's generators: same law, other numbers.
  assert not np.array_equal(grain_draws[0], device_draws[0])
  # 'shift' crops the same way and never flips; 'none' leaves the image as it is.
  top, left, flip = _read_draws(run(images, positions, mode='shift'))
  np.testing.assert_array_equal(top, device_draws[0])
  np.testing.assert_array_equal(left, device_draws[1])
  assert not flip.any()
  np.testing.assert_array_equal(run(images[:4], positions[:4], mode='none'), images[:4])


def test_the_stream_is_grains_epoch_shuffle_read_across_epoch_boundaries():
  n, batch, seed = 10, 4, 3
  stream = device.Stream(n, global_batch_size=batch, seed=seed, process_index=0, process_count=1)
  steps = [stream(s) for s in range(5)]  # 20 examples: two epochs; step 2 spans the boundary.
  indices = np.concatenate([s['index'] for s in steps])
  np.testing.assert_array_equal(np.concatenate([s['position'] for s in steps]), np.arange(20))
  assert sorted(indices[:n]) == sorted(indices[n:]) == list(range(n))  # None skipped or repeated.
  assert list(indices[:n]) != list(indices[n:])  # Reshuffled every epoch.
  # The record order of the grain path with one process.
  sampler = grain.samplers.IndexSampler(
      num_records=n, shard_options=grain.sharding.ShardOptions(0, 1, drop_remainder=True),
      shuffle=True, num_epochs=None, seed=seed)
  assert list(indices) == [sampler[i].record_key for i in range(20)]
  # A function of the step: a fresh stream (a resumed run) reads the same batches.
  for s in (3, 4):
    again = device.Stream(n, global_batch_size=batch, seed=seed, process_index=0,
                          process_count=1)(s)
    np.testing.assert_array_equal(again['index'], steps[s]['index'])
  # Every process draws the same global batch and takes its own part of it.
  parts = [device.Stream(n, global_batch_size=batch, seed=seed, process_index=i,
                         process_count=2).from_step(0) for i in range(2)]
  for s in range(5):
    both = [next(p) for p in parts]
    for key in ('index', 'position'):
      np.testing.assert_array_equal(np.concatenate([b[key] for b in both]), steps[s][key])


STEPS = 3


def _train_steps(backend, num_devices):
  """Losses and final parameters of a few device-path steps of the quickstart on its digits."""
  config = quickstart.get_config()
  config.data.pipeline = 'device'
  # A moderate step, as in tests/test_parallel.py, keeps float32 reduction-order noise small.
  config.learning_rate, config.warmup_steps = 0.02, 0
  config = recipes.finalize(config)
  par = parallel.DataParallel(backend, jax.devices()[:num_devices])
  split = device.load_split(config.data, 'train_split')
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 100))
  state = par.init_replicated(functools.partial(
      create_train_state, model=run.model(config, True), tx=tx, image_shape=(8, 8, 1)),
      jax.random.key_data(jax.random.key(config.seed)))
  p_step = par.map(device.gathered(step_lib.configured_train_step(config), config.data,
                                   config.seed),
                   donate_state=True, replicated_args=1)
  dataset = par.replicate(split)
  stream = device.Stream(len(split['label']), global_batch_size=config.batch_size,
                         seed=config.seed)
  losses = []
  for indices in par.prefetch((stream(s) for s in range(STEPS)), 2):
    state, metrics = p_step(state, indices, dataset)
    losses.append(float(par.host_value(metrics).loss.compute()))
  return np.array(losses), par.host_value(state.params)


def _batch_fingerprints(backend, num_devices, steps=14):
  """Per step, the sum and the sum of squares over the global batch of each augmented example's
  projection on a fixed random image, times its label + 1: the same numbers for the same examples,
  crops and flips in whatever order, and other numbers for any other example, crop or flip."""
  config = quickstart.get_config()
  config.data.pipeline = 'device'
  config = recipes.finalize(config)
  par = parallel.DataParallel(backend, jax.devices()[:num_devices])
  split = device.load_split(config.data, 'train_split')
  weights = np.random.default_rng(0).normal(size=split['image'].shape[1:]).astype(np.float32)

  def fingerprint(state, batch):
    x = (batch['image'] * weights).sum(axis=(1, 2, 3)) * (batch['label'] + 1)
    return state, jax.lax.psum(jax.numpy.stack([x.sum(), (x * x).sum()]), parallel.AXIS)

  p_fingerprint = par.map(device.gathered(fingerprint, config.data, config.seed),
                          replicated_args=1)
  state, dataset = par.init_replicated(lambda: jax.numpy.zeros(())), par.replicate(split)
  stream = device.Stream(len(split['label']), global_batch_size=config.batch_size,
                         seed=config.seed)
  # 14 steps of 128 run into the second epoch of the 1,437 training digits.
  return np.stack([par.host_value(p_fingerprint(state, indices, dataset)[1])
                   for indices in par.prefetch((stream(s) for s in range(steps)), 2)])


@pytest.mark.parametrize('backend', parallel.BACKENDS)
def test_eight_devices_see_the_one_device_batches(backend):
  one = _batch_fingerprints('shard_map', 1)
  np.testing.assert_allclose(_batch_fingerprints(backend, 8), one, rtol=1e-5)
  assert len(np.unique(one[:, 0])) == len(one)  # Every step a new batch.


@pytest.fixture(scope='module')
def one_device():
  return _train_steps('shard_map', 1)


@pytest.mark.slow
@pytest.mark.parametrize('backend', parallel.BACKENDS)
def test_eight_devices_follow_the_one_device_trajectory(backend, one_device):
  # The same global batches (above), so the steps differ only by float32 reduction order: the
  # losses agree to 1e-5 (another batch would change the first one by about 1e-2). BN's backward
  # pass amplifies that order's noise in the parameters more on the digits than on
  # test_parallel.py's Gaussian images: after 3 steps they differ by up to 1.4e-4 here, and by
  # 3.8e-5 on the grain path's batches (measured, 8 vs 1 device, shard_map).
  losses1, params1 = one_device
  losses8, params8 = _train_steps(backend, 8)
  assert losses1[-1] < losses1[0]
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=5e-4), params8, params1)


def _validated(**data):
  config = quickstart.get_config()
  for key, value in data.items():
    config.data[key] = value
  run.prepare(config, open_data=False)


@pytest.mark.parametrize('data,words', [
    (dict(pipeline='gpu'), ["config.data.pipeline='gpu' is not allowed", "('grain', 'device')"]),
    (dict(pipeline='device', dataset='imagenet2012'),
     ["config.data.pipeline='device'", "'imagenet2012'", '--config.data.pipeline=grain']),
    (dict(pipeline='device', augment='inception'),
     ["config.data.pipeline='device'", "augment='inception'", '--config.data.pipeline=grain']),
], ids=['unknown', 'imagenet2012', 'inception'])
def test_config_errors_name_the_key_the_value_and_what_is_allowed(data, words):
  with pytest.raises(config_check.ConfigError) as error:
    _validated(**data)
  message = str(error.value)
  assert '\n' not in message
  for word in words:
    assert word in message, message


def test_the_device_path_accepts_the_in_memory_datasets():
  for dataset in [n for n, d in datasets.TABLE.items() if 'device' in d.pipelines]:
    _validated(pipeline='device', dataset=dataset)


RESUME_ARGS = ('--config.data.pipeline=device', '--config.num_train_steps=160',
               '--config.checkpoint_every_steps=20', '--config.eval_every_steps=80',
               '--config.log_every_steps=10', '--config.lr_boundaries=(100,)',
               '--config.warmup_steps=10')


@pytest.mark.slow
def test_a_killed_run_resumes_bit_for_bit_without_iterator_state(tmp_path):
  uninterrupted = tmp_path / 'uninterrupted'
  result = helpers.run_main(uninterrupted, *RESUME_ARGS)
  assert result.returncode == 0, result.stderr[-3000:]
  killed = tmp_path / 'killed'
  code, stderr = helpers.interrupt(killed, signal.SIGKILL, *RESUME_ARGS)
  assert code == -signal.SIGKILL, stderr[-3000:]
  interrupted_at = helpers.checkpoint_steps(killed)[-1]
  assert interrupted_at < 160, 'the run finished before the kill: nothing was tested'
  # The step number is the whole position of the data: no iterator state is saved.
  assert not (killed / 'checkpoints' / str(interrupted_at) / 'data').exists()
  result = helpers.run_main(killed, *RESUME_ARGS)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from {killed} at step {interrupted_at}' in result.stderr
  step, state = helpers.final_params(killed)
  expected_step, expected = helpers.final_params(uninterrupted)
  assert step == expected_step == 160
  helpers.assert_trees_equal(state, expected)


@pytest.mark.slow
def test_two_processes_follow_one_process_with_the_same_devices(tmp_path):
  # Every process computes the same stream and feeds its part to its devices, so 2 processes x 2
  # devices see the global batches of 1 process x 4 devices, with no help from the test.
  args = ('--config.data.pipeline=device', '--config.num_train_steps=6',
          '--config.log_every_steps=1', '--config.eval_every_steps=6',
          '--config.checkpoint_every_steps=3', '--config.lr_boundaries=()',
          '--config.warmup_steps=0', '--config.learning_rate=0.02', '--config.batch_size=64')
  multi = tmp_path / 'two_processes'
  helpers.run_distributed(multi, *args)
  single = tmp_path / 'one_process'
  result = helpers.run_main(single, *args, devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  losses_multi, losses_single = helpers.train_losses(multi), helpers.train_losses(single)
  assert len(losses_multi) == 6 and losses_multi[-1] < losses_multi[0]
  # Not bit for bit: the cross-device means add the same values in another order (gloo across
  # processes, XLA within one), and how far training carries that apart depends on the machine;
  # test_multihost gives the measurements and the bounds. Here, on the 2-core EPYC with AVX-512,
  # the losses stayed within 1e-6 and one parameter differed by 1.3e-5 at the end.
  np.testing.assert_allclose(losses_multi[:2], losses_single[:2], rtol=1e-6)
  np.testing.assert_allclose(losses_multi, losses_single, rtol=2e-3)
  _, params_multi = helpers.final_params(multi)
  _, params_single = helpers.final_params(single)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-3),
               params_multi['params'], params_single['params'])


@pytest.mark.slow
@pytest.mark.skipif(helpers.shared_tfds_dataset() is None,
                    reason='CIFAR-10 (tfds array_record) not found under $TFDS_DATA_DIR; '
                           'see ../shared/data/README.md')
def test_both_paths_reach_the_same_cifar10_accuracy(tmp_path):
  if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; pytest parses none.
    flags.FLAGS.mark_as_parsed()

  def accuracy(pipeline, **data):
    config = cifar10_resnet20.get_config()
    config.num_train_steps, config.lr_boundaries, config.batch_size = 120, (96,), 64
    config.log_every_steps = 40
    config.eval_every_steps = config.checkpoint_every_steps = 120
    config.data.pipeline = pipeline
    for key, value in data.items():
      config.data[key] = value
    summary = loop.train_and_evaluate(config, str(tmp_path / pipeline), devices=jax.devices()[:1])
    assert summary['eval/num_examples'] == 10_000
    return summary['eval/accuracy']

  grain_accuracy = accuracy('grain', worker_count=2)
  device_accuracy = accuracy('device')
  # Same init, same record order (one process), other augmentation draws. Measured on the CPU
  # for seeds 0, 1, 2: grain 31.81%, 34.03%, 32.57%; device 29.87%, 33.70%, 29.92%, so the
  # paths differed by 1.9, 0.3 and 2.7 points, and the bound is 1.9 times the largest. The 25%
  # floor (4.9 points under the lowest) is also the check that the 2015 recipe learns on real
  # CIFAR-10 in 120 steps of batch 64 (0.15 epoch; chance is 10%).
  assert device_accuracy >= 0.25 and grain_accuracy >= 0.25
  assert abs(device_accuracy - grain_accuracy) <= 0.05, (grain_accuracy, device_accuracy)
