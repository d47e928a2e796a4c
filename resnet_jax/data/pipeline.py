"""Input pipelines: tfds `data_source` (ArrayRecord, random access) + grain, without TensorFlow.

Training reads an endless stream: a seeded `IndexSampler` reshuffles the whole split every
epoch, each JAX process reads its own shard of it (`ShardByJaxProcess`), and batches may run
across an epoch boundary, as tf.data's `repeat().batch()` does, so no example is ever skipped.
The iterator is grain's `DataLoaderIterator`: `get_state()` / `set_state()` (or orbax with
`grain.checkpoint.CheckpointSave/CheckpointRestore`) make a resumed run read exactly the
batches the uninterrupted run would have read, augmentation included.

Evaluation reads every example of its split exactly once: the split is padded to a whole
number of global batches with copies whose 'mask' is False, so every process runs the same
number of steps (the collectives need that) and the masked metrics count each example once.

All functions yield host NumPy batches of this process's part of the global batch; putting
them on the devices is `resnet_jax.parallel`'s job.
"""

import dataclasses
import math

import grain
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

from resnet_jax.data import augment
from resnet_jax.data import datasets
from resnet_jax.data import digits
from resnet_jax.data import integrity
from resnet_jax.errors import DataError

AUGMENTATIONS = ('cifar', 'shift', 'inception', 'none')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the images the model sees.
  num_train: int  # Examples in config.train_split.
  num_eval: int  # Examples in config.eval_split.


def _missing_message(name, data_dir, searched):
  return (
      f"Dataset {name!r} is not prepared in {data_dir} (looked for {searched}), and "
      "nothing is downloaded at run time. Point the run at a directory that holds it with "
      "--config.data.data_dir=DIR or the TFDS_DATA_DIR environment variable, or prepare it "
      "there once (this needs TensorFlow, which training does not): "
      f"pip install 'resnet_jax[prepare]' && tfds build {name} --data_dir=DIR "
      "--file_format=array_record"
  )


def _tfrecord_message(name, data_dir, searched):
  return (
      f"Dataset {name!r} in {searched} exists only in tfrecord format, which has no random "
      "access; this pipeline reads array_record. Convert it in place with "
      f"`tfds convert_format --dataset_version_dir={searched} --out_file_format=array_record`, "
      f"or rebuild it with `tfds build {name} --data_dir={data_dir} --file_format=array_record` "
      "(both need pip install 'resnet_jax[prepare]')."
  )


def _open_tfds(name, split, data_dir):
  # Read before tfds does: tfds reports a broken dataset_info.json as a JSON or protobuf traceback.
  integrity.check_dataset_info(name, data_dir)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
        f'Unknown dataset {name!r}: it is neither in resnet_jax/data/datasets.py nor a tfds '
        'dataset name.'
    ) from None
  except Exception as e:  # pylint: disable=broad-except  # Diagnosed below, as one line.
    raise _open_error(name, split, data_dir, e) from e


def _open_error(name, split, data_dir, error):
  """Why tfds could not open `split`: a DataError that says what to do."""
  reason = ' '.join(f'{type(error).__name__}: {error}'.split())
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    root = builder._data_dir_root  # pylint: disable=protected-access
    prepared = builder.is_prepared()
  except Exception:  # pylint: disable=broad-except  # tfds cannot even read its metadata.
    found = integrity.find_dataset_dir(name, data_dir)
    return DataError(f'Cannot open dataset {name!r}{f" in {found[1]}" if found else ""} '
                     f'({reason}). {integrity.rebuild_hint(name, data_dir)}')
  # tfds reports a missing dataset as "tfrecord is not supported" or as a KeyError on its
  # empty split table, depending on data_dir: look at the directory to say what is wrong.
  if not prepared:
    return DataError(_missing_message(name, root, builder.data_dir))
  if not builder.info.available_file_formats() & file_adapters.FileFormat.with_random_access():
    return DataError(_tfrecord_message(name, root, builder.data_dir))
  sizes = {n: s.num_examples for n, s in builder.info.splits.items()}
  try:
    selected = builder.info.splits[split].num_examples
  except Exception:  # pylint: disable=broad-except  # A bad split string: tfds's reason says so.
    selected = None
  if selected == 0:
    return datasets.EmptySplit(name, split, sizes)
  return DataError(f'Cannot read split {split!r} of dataset {name!r} (splits: {sizes}): {reason}')


class TfdsSource:
  """A tfds split read through `tfds.data_source`: `[i]` -> {'image': uint8 HWC, 'label': int32}."""

  def __init__(self, name, split, data_dir=None):
    self.name, self.split = name, split
    self._source = _open_tfds(name, split, data_dir)
    features = self._source.dataset_info.features
    self.num_classes = features['label'].num_classes
    self.image_shape = tuple(features['image'].shape)  # None where the size varies.

  def __len__(self):
    return len(self._source)

  def check_files(self, every_record: bool | None = None):
    """Raises DataError unless every shard of the split is on disk and whole (integrity)."""
    integrity.check_shards(self._source.dataset_info, self.split, every_record)

  def __getitem__(self, index):
    record = self._source[index]
    return {'image': record['image'], 'label': np.int32(record['label'])}

  def __repr__(self):
    # grain checks this string when restoring an iterator state; it leaves out data_dir so
    # that a run can resume on a machine that keeps the data elsewhere.
    return f'TfdsSource(name={self.name!r}, split={self.split!r})'


def open_source(config, split):
  """The random-access source of `split` of `config.dataset`, a dataset of the table
  (resnet_jax/data/datasets.py) or any tfds name."""
  record = datasets.get(config.dataset)
  if record is not None and record.source == 'sklearn':
    return digits.DigitsSource(split)
  return TfdsSource(config.dataset, split, config.data_dir)


def open_split(config, key: str):
  """open_source of the configured split config.<key> ('train_split' or 'eval_split'); one that
  selects no example is a DataError naming the key."""
  try:
    return open_source(config, config[key])
  except datasets.EmptySplit as e:
    raise DataError(f'config.data.{key}={config[key]!r}: {e}') from None


class _Padded:
  """`source` padded to `length` with copies of its first records, marked by 'mask' False."""

  def __init__(self, source, length):
    self._source, self._length = source, length

  def __len__(self):
    return self._length

  def __getitem__(self, index):
    n = len(self._source)
    return {**self._source[index % n], 'mask': np.bool_(index < n)}

  def __repr__(self):
    return f'Padded({self._source!r}, length={self._length})'


def _is_fixed(source, size):
  return tuple(source.image_shape[:2]) == (size, size)


def _check(config, source):
  if config.augment not in AUGMENTATIONS:
    raise DataError(
        f'Unknown config.data.augment={config.augment!r}; choose one of {AUGMENTATIONS}.')
  channels = source.image_shape[-1]
  for key in ('mean', 'std'):
    if config[key] is not None and len(config[key]) != channels:
      raise DataError(f'config.data.{key}={tuple(config[key])} needs one value per image '
                      f'channel; {config.dataset!r} images have {channels}.')
  height, width = source.image_shape[:2]
  if height is None or width is None:
    if config.augment in ('cifar', 'shift'):
      raise DataError(
          f'augment={config.augment!r} pads and crops fixed-size images, but '
          f"{config.dataset!r} images vary in size; use augment='inception' or 'none'.")
  elif (height, width) != (config.image_size,) * 2 and config.augment != 'inception':
    # Only the inception crop resizes on purpose; anything else is a forgotten image_size.
    raise DataError(
        f'{config.dataset!r} images are {height}x{width} but config.data.image_size='
        f'{config.image_size}; set --config.data.image_size={height}.')


def _eval_ops(config, source):
  """The deterministic view: as stored if already image_size, else resize + centre crop."""
  if _is_fixed(source, config.image_size):
    return []
  return [augment.CenterCrop(config.image_size, config.crop_fraction)]


def _train_ops(config, source):
  if config.augment == 'cifar':
    return [augment.RandomPadCrop(config.image_size, config.pad), augment.RandomFlip()]
  if config.augment == 'shift':  # Pad and crop without the flip, for digits.
    return [augment.RandomPadCrop(config.image_size, config.pad)]
  if config.augment == 'inception':
    return [augment.InceptionCrop(config.image_size), augment.RandomFlip()]
  return _eval_ops(config, source)


def _read_options(config):
  # Reader threads and read-ahead per loading process (configs/schema.py says why not grain's).
  return grain.ReadOptions(num_threads=config.read_threads,
                           prefetch_buffer_size=config.read_buffer_size)


def _shard_options(global_batch_size, process_index, process_count):
  if process_index is None and process_count is None:
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  elif process_index is None or process_count is None:
    raise DataError('Give both process_index and process_count, or neither.')
  elif not 0 <= process_index < process_count:
    raise DataError(f'process_index={process_index} is not in [0, {process_count}).')
  else:
    shard = grain.sharding.ShardOptions(process_index, process_count, drop_remainder=True)
  if global_batch_size <= 0 or global_batch_size % shard.shard_count:
    raise DataError(
        f'The global batch size {global_batch_size} must be a positive multiple of the '
        f'number of processes ({shard.shard_count}).')
  return shard


def dataset_info(config):
  """Sizes of the configured splits and the shape of the preprocessed images.

  Also checks the data config and the data, so a bad one fails here, before anything compiles:
  both splits must hold examples, every shard they read must be on disk and whole (the eval
  split, and a small training split, read record by record: resnet_jax.data.integrity), and
  their first and last examples must decode.
  """
  train, test = open_split(config, 'train_split'), open_split(config, 'eval_split')
  _check(config, train)
  _check_readable(config, train)
  _check_readable(config, test, every_record=True)
  return DatasetInfo(
      num_classes=train.num_classes,
      image_shape=(config.image_size, config.image_size, train.image_shape[-1]),
      num_train=len(train),
      num_eval=len(test),
  )


def _check_readable(config, source, every_record: bool | None = None):
  if isinstance(source, TfdsSource):
    source.check_files(every_record)
  for index in (0, len(source) - 1):
    read_example(config, source, index)


def read_example(config, source, index: int) -> dict:
  """source[index], or a DataError that names the example and says how to rebuild the data."""
  try:
    return source[index]
  except Exception as e:  # pylint: disable=broad-except  # Whatever the decoder raises.
    reason = ' '.join(f'{type(e).__name__}: {e}'.split())
    raise DataError(f'Example {index} of split {source.split!r} of {config.dataset!r} cannot be '
                    f'read ({reason}). {integrity.rebuild_hint(config.dataset, config.data_dir)}'
                    ) from None


def create_train_iterator(config, *, global_batch_size, seed, process_index=None,
                          process_count=None):
  """An endless, checkpointable iterator over this process's part of each training batch.

  Args:
    config: `config.data`.
    global_batch_size: examples per step over all processes.
    seed: seeds the shuffle of every epoch and every augmentation, in [0, 2**32).
    process_index, process_count: default to jax.process_index() and jax.process_count();
      given explicitly, they simulate one process of many.

  Returns:
    A `grain.DataLoaderIterator` of {'image': uint8 [B, H, W, C], 'label': int32 [B]}, with
    B = global_batch_size // process_count; it has `get_state()` and `set_state()`. The images
    are pixels: the train and eval steps normalise them with config.mean and config.std on the
    device (resnet_jax.train.step.model_input), so the host sends a quarter of float32's bytes.
  """
  shard = _shard_options(global_batch_size, process_index, process_count)
  if not 0 <= seed < 2**32:
    raise DataError(f'The data seed must be in [0, 2**32); got {seed}.')
  source = open_split(config, 'train_split')
  _check(config, source)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard, shuffle=True, num_epochs=None, seed=seed)
  return _loader(config, source, sampler, _train_ops(config, source), shard, global_batch_size)


def create_eval_iterator(config, *, global_batch_size, process_index=None, process_count=None):
  """One pass over config.eval_split, every example exactly once over all processes.

  Every process gets ceil(num_eval / global_batch_size) batches of
  global_batch_size // process_count examples, {'image', 'label', 'mask'}; 'mask' is False
  on the padding that completes the last global batch.
  """
  shard = _shard_options(global_batch_size, process_index, process_count)
  source = open_split(config, 'eval_split')
  _check(config, source)
  padded = _Padded(source, math.ceil(len(source) / global_batch_size) * global_batch_size)
  # Each process reads one contiguous block of the padded split, a whole number of batches.
  block = len(padded) // shard.shard_count
  dataset = grain.MapDataset.source(padded)[shard.shard_index * block:
                                            (shard.shard_index + 1) * block]
  for transform in (*_eval_ops(config, source), augment.Pixels()):
    dataset = dataset.map(transform)
  dataset = dataset.batch(global_batch_size // shard.shard_count, drop_remainder=True)
  dataset = dataset.to_iter_dataset(_read_options(config))
  if config.worker_count > 0:
    # Batched before the workers split the work, so each worker yields whole batches. (A
    # DataLoader batches inside each worker, and would drop every worker's partial last batch.)
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
  return iter(dataset)


def _loader(config, source, sampler, transforms, shard, global_batch_size):
  """The grain iterator: transforms, then this process's part of each batch."""
  operations = [
      *transforms,
      augment.Pixels(),
      grain.transforms.Batch(global_batch_size // shard.shard_count, drop_remainder=True),
  ]
  loader = grain.DataLoader(
      data_source=source, sampler=sampler, operations=operations, shard_options=shard,
      worker_count=config.worker_count, worker_buffer_size=config.worker_buffer_size,
      read_options=_read_options(config))
  return iter(loader)
