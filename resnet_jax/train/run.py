"""Preparing and building a run: the one sequence the trainer, the benchmarks and the studies share.

  prepared = run.prepare(config)      # validated, the data opened, finalised for its real size
  built = run.build(prepared, par)    # the model, the schedule, the optimiser and the state

`prepare` starts no JAX backend, so a command line prepares before it sets XLA_FLAGS and starts
jax.distributed; `build` initialises the state on the devices.
"""

import dataclasses
import functools

import jax
import ml_collections
import optax

from resnet_jax import config_check, data, models, parallel, recipes
from resnet_jax.train import optim
from resnet_jax.train import workdir as workdir_lib
from resnet_jax.train.state import TrainState, create_train_state, init_variables


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A run's final config (validated, derived keys filled in for the data it names) and the facts
  of that data as opened (None where it was not opened)."""
  config: ml_collections.ConfigDict
  info: data.DatasetInfo | None

  @property
  def num_train(self) -> int | None:
    """Examples in the training split: as opened, else by the dataset table (None outside it)."""
    return self.info.num_train if self.info else recipes.train_split_size(self.config)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the images the model sees."""
    size = self.config.data.image_size
    return (size, size, len(self.config.data.mean))


def prepare(config, open_data: bool = True) -> Prepared:
  """Validates `config`, opens its data (checking that the splits are there and whole) and
  finalises it with the real size of the training split (resnet_jax.recipes.finalize). Bad input
  raises a UserError that names the key or the file.

  open_data=False, for what reads no data (a layer table, a sweep's bookkeeping), takes the split
  sizes from the dataset table (resnet_jax/data/datasets.py) instead.
  """
  config_check.validate(config)
  if not open_data:
    return Prepared(recipes.finalize(config), None)
  info = data.dataset_info(recipes.from_dataset(config).data)
  config = recipes.finalize(config, info.num_train)
  config_check.validate_against_dataset(config, info)
  return Prepared(config, info)


def model(config, sync_batch_stats: bool = False, **overrides) -> models.ResNet:
  """The net of a final config; with sync_batch_stats its BN averages over the devices."""
  try:
    return models.from_config(
        config.model, axis_name=parallel.AXIS if sync_batch_stats else None, **overrides)
  except ValueError as e:
    raise config_check.ConfigError(f'config.model: {e}') from None


def initial_variables(prepared: Prepared, net) -> dict:
  """{'params', 'batch_stats'} that a fresh run of `prepared` starts from (build's init)."""
  return init_variables(jax.random.key(prepared.config.seed), net, prepared.image_shape)


@dataclasses.dataclass
class Built:
  """What a run trains: `config` is the prepared one with the model's scan layout recorded (the
  layout of the run's checkpoints, which readers of the run build the net with)."""
  config: ml_collections.ConfigDict
  model: models.ResNet
  total_steps: int
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  state: TrainState


def build(prepared: Prepared, par: parallel.DataParallel, workdir: str | None = None,
          abstract: bool = False) -> Built:
  """The model, schedule, optimiser and initial state of `prepared`, replicated over `par`.

  With config.model.scan left at None, a workdir that holds a run keeps the layout that run
  recorded, so a run started on an accelerator (scanned) resumes on a CPU (unrolled by default).
  abstract=True gives the state's shapes and dtypes only (jax.eval_shape): nothing is initialised.
  """
  config = prepared.config.copy_and_resolve_references()
  parallel.check_batch_size('batch_size', config.batch_size, par.num_devices)
  parallel.check_batch_size('eval_batch_size', config.eval_batch_size, par.num_devices)
  if config.model.scan is None and workdir is not None:
    recorded = workdir_lib.read_recorded_config(workdir) or {}
    config.model.scan = recorded.get('model', {}).get('scan')
  net = model(config, config.parallel.sync_batch_stats)
  config.model.scan = net.scan
  total_steps = optim.num_train_steps(config, prepared.num_train)
  schedule = optim.create_learning_rate_schedule(config, total_steps)
  tx = optim.create_optimizer(config, schedule)
  init = functools.partial(par.init_replicated, functools.partial(
      create_train_state, model=net, tx=tx, image_shape=prepared.image_shape))
  key = jax.random.key_data(jax.random.key(config.seed))
  state = jax.eval_shape(init, key) if abstract else init(key)
  return Built(config, net, total_steps, schedule, tx, state)
