"""A run's weights, read-only: its saved steps, a step's config, params and BN statistics.

resnet_jax.evaluate, resnet_jax.predict, resnet_jax.export and fine-tuning (config.init_from)
read runs through this module. It may read a workdir in which a run is training: it takes no
lock, writes nothing and reads only finished checkpoints (orbax renames a step's directory into
place once it is complete; a save in flight sits in a temporary directory that is no step).

A checkpoint is chosen as 'latest', 'best' (the saved step with the best eval accuracy in
metrics.jsonl, as the trainer keeps it) or a step number.
"""

import dataclasses
import logging
import os

from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from configs import schema
from resnet_jax import config_check, models
from resnet_jax.errors import UserError
from resnet_jax.metrics import best_eval_step, read_metrics
from resnet_jax.train import workdir as workdir_lib

CHOICES = ('best', 'latest')


class RunReadError(UserError):
  """A workdir, step or checkpoint that cannot be read.

  The message is a predicate of `about` ('workdir' or 'checkpoint'), which the caller names its
  own way: '--workdir=runs/x' + ' does not exist', or "config.init_from='runs/x'" + ....
  """

  def __init__(self, message: str, about: str = 'workdir'):
    super().__init__(message)
    self.about = about


@dataclasses.dataclass
class Trained:
  """One checkpoint of a run. `variables`: {'params', 'batch_stats'} as NumPy, in the layout of
  `model` (whose scan matches the checkpoint's layout)."""
  workdir: str
  step: int
  how: str  # How the step was chosen, for messages: 'best', 'latest' or 'step'.
  config: ml_collections.ConfigDict
  model: object
  variables: dict

  def unrolled_variables(self) -> dict:
    return models.weight_file.unrolled(self.variables, self.model)


def saved_steps(workdir: str) -> list[int]:
  """The steps with a finished checkpoint in `workdir`, ascending (orbax's own reading: a save
  in flight, or a step directory on gs:// without its commit marker, is no step)."""
  return sorted(ocp.utils.checkpoint_steps(epath.Path(workdir) / workdir_lib.CHECKPOINTS_DIR))


def choose_step(workdir: str, checkpoint: str = 'best') -> tuple[int, str]:
  """(step, how) for `checkpoint` = 'best', 'latest' or a step number of `workdir`.

  'best' is the saved step with the best eval accuracy in metrics.jsonl (the earliest of ties),
  as the trainer keeps it; with no eval of a saved step yet, it is the newest step.
  """
  if not epath.Path(workdir).is_dir():
    raise RunReadError('does not exist' if not epath.Path(workdir).exists()
                       else 'is a file, not a workdir')
  steps = saved_steps(workdir)
  if not steps:
    raise RunReadError(
        f'holds no checkpoint (nothing in {os.path.join(workdir, "checkpoints")}); a run saves '
        'one every config.checkpoint_every_steps steps and at its end')
  checkpoint = str(checkpoint).strip()
  if checkpoint == 'latest':
    return steps[-1], 'latest'
  if checkpoint == 'best':
    best, _ = best_eval_step(read_metrics(workdir), set(steps))
    return (best, 'best') if best is not None else (steps[-1], 'latest')
  saved = ', '.join(map(str, steps))
  if not checkpoint.isdigit():
    raise RunReadError(f'is no checkpoint: give best, latest or a step number (the saved steps '
                       f'of {workdir}: {saved})', about='checkpoint')
  if int(checkpoint) not in steps:
    raise RunReadError(f'is not a saved step of {workdir}; its saved steps: {saved}',
                       about='checkpoint')
  return int(checkpoint), 'step'


def _with_defaults(recorded: dict, defaults: dict) -> dict:
  """A recorded config with the keys it lacks (added to configs/schema.py since) at their
  defaults, as workdir.result_changes counts them."""
  merged = dict(defaults)
  for key, value in recorded.items():
    if isinstance(value, dict) and isinstance(defaults.get(key), dict):
      value = _with_defaults(value, defaults[key])
    merged[key] = value
  return merged


def read_config(workdir: str, step: int) -> ml_collections.ConfigDict:
  """The config that wrote checkpoint `step` (saved beside it), else the run's config.json."""
  recorded = None
  path = epath.Path(workdir) / workdir_lib.CHECKPOINTS_DIR / str(step) / 'config'
  if path.exists():
    try:
      with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as reader:
        recorded = reader.restore(path, args=ocp.args.JsonRestore())
    except Exception as e:  # pylint: disable=broad-except  # orbax's errors for a damaged file.
      logging.warning('The config saved with step %d cannot be read (%s); using config.json.',
                      step, str(e).splitlines()[0] if str(e) else type(e).__name__)
  if recorded is None:
    try:
      recorded = workdir_lib.read_recorded_config(workdir)
    except UserError as e:
      raise RunReadError(f'cannot be read: {e}') from None
  if recorded is None:
    raise RunReadError('has checkpoints but no config.json, so its model is unknown')
  if not isinstance(recorded, dict):
    raise RunReadError(f'records a config that is a JSON {type(recorded).__name__}, not an object')
  config = ml_collections.ConfigDict(
      _with_defaults(recorded, workdir_lib.as_dict(schema.get_config())))
  try:  # A run's files are input like any other: a wrong type fails here, not deep in a model.
    config_check.check_structure(config)
  except UserError as e:
    raise RunReadError(f'records a config that does not fit configs/schema.py: {e}') from None
  return config


class _QuietMetadataWarning(logging.Filter):
  # orbax warns that a step's _CHECKPOINT_METADATA is not in the item directory it reads; the
  # file is one level up, where CheckpointManager keeps it. Nothing is wrong.
  def filter(self, record):
    return 'Metadata file does not exist' not in record.getMessage()


def read_variables(workdir: str, step: int) -> dict:
  """{'params', 'batch_stats'} of checkpoint `step`, as NumPy, in the layout they were saved in.

  Restored as NumPy arrays, so that any device count reads what any topology saved, and only
  these two items: the optimiser state is not read.
  """
  path = epath.Path(workdir) / workdir_lib.CHECKPOINTS_DIR / str(step) / 'state'
  quiet = _QuietMetadataWarning()
  logging.getLogger('absl').addFilter(quiet)
  try:
    with ocp.PyTreeCheckpointer() as reader:
      tree = reader.metadata(path).item_metadata.tree
      items = {k: tree[k] for k in ('params', 'batch_stats') if k in tree}
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), items)
      return reader.restore(path, args=ocp.args.PyTreeRestore(
          item=items, restore_args=restore_args, partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except  # orbax's errors for damaged files.
    gone = '' if path.exists() else (' (its state is missing: the checkpoint never finished, or '
                                     'it was deleted while being read, as the run keeps only its '
                                     'newest and best checkpoints)')
    raise RunReadError(f'has a checkpoint of step {step} that cannot be read{gone}: '
                       f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}') from None
  finally:
    logging.getLogger('absl').removeFilter(quiet)


def model_for(config, variables):
  """The net of `config.model`, with scan set to the layout of `variables` (a checkpoint written
  on an accelerator may be scanned where this machine would unroll, and the other way round)."""
  try:
    return models.from_config(
        config.model, scan=any(name.endswith('_scan') for name in variables['params']))
  except ValueError as e:
    raise RunReadError(f'records a model config that cannot be built: {e}') from None


def load(workdir: str, checkpoint: str = 'best') -> Trained:
  """The checkpoint `checkpoint` ('best', 'latest' or a step) of the run in `workdir`."""
  step, how = choose_step(workdir, checkpoint)
  config = read_config(workdir, step)
  variables = read_variables(workdir, step)
  return Trained(workdir, step, how, config, model_for(config, variables), variables)


def data_config(config) -> dict:
  """The eval preprocessing of a run's config, as a weight file records it."""
  data = config.data
  return dict(dataset=data.dataset, eval_split=data.eval_split, image_size=data.image_size,
              mean=list(data.mean), std=list(data.std), crop_fraction=data.crop_fraction)


def describe(trained: Trained) -> str:
  """'runs/x step 600 (best eval accuracy)' for messages."""
  how = {'best': ' (best eval accuracy)', 'latest': ' (newest)', 'step': ''}[trained.how]
  return f'{trained.workdir} step {trained.step}{how}'


@dataclasses.dataclass
class Weights:
  """A net and its weights, from a run's checkpoint or from a weight file.

  `data`: a complete config.data (configs/schema.py's keys) whose dataset, eval_split,
  image_size, mean, std and crop_fraction are the run's or the file's. `class_names`: from the
  file, or None (resnet_jax.data.images.class_names finds a run's). `step`, `workdir`: None for a
  file.
  """
  model: object
  variables: dict
  data: ml_collections.ConfigDict
  class_names: list[str] | None
  description: str
  workdir: str | None = None
  step: int | None = None
  eval_batch_size: int = 500


def open_weights(workdir: str | None = None, model_file: str | None = None,
                 checkpoint: str = 'best') -> Weights:
  """The weights of a run's checkpoint (`workdir`, `checkpoint`) or of a weight file, for the
  command lines: a UserError names the flag (--workdir, --checkpoint or --model)."""
  if (workdir is None) == (model_file is None):
    raise UserError('give either --workdir (a run) or --model (a weight file), not '
                    + ('both' if workdir else 'neither'))
  if workdir is not None:
    try:
      trained = load(workdir, checkpoint)
    except RunReadError as e:
      subject = f'--checkpoint={checkpoint}' if e.about == 'checkpoint' else f'--workdir={workdir}'
      raise UserError(f'{subject} {e}') from None
    return Weights(trained.model, trained.variables, trained.config.data, None,
                   describe(trained), workdir, trained.step, trained.config.eval_batch_size)
  try:
    pretrained = models.read_pretrained(model_file)
    model, variables = models.weight_file.build(pretrained, model_file)
  except models.PretrainedError as e:
    raise UserError(str(e)) from None
  data = schema.get_config().data
  recorded = {k: tuple(v) if isinstance(v, list) else v
              for k, v in pretrained.data_config.items() if k in data}
  # An eval needs no augmentation, and 'none' takes images of any size.
  data.update({**recorded, 'augment': 'none'})
  return Weights(model, variables, data, pretrained.class_names,
                 f'{model_file}' + (f' ({pretrained.source})' if pretrained.source else ''))
