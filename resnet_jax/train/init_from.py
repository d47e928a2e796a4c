"""Fine-tuning: a fresh run's first weights from a weight file or another run (config.init_from).

  --config.init_from=quickstart.safetensors          # resnet_jax.export or resnet_jax.convert
  --config.init_from=runs/x                          # its newest checkpoint
  --config.init_from=runs/x:1200 (or runs/x:best)    # a given one
  --config.init_head=false                           # a new classifier (another num_classes)

The params and BN statistics are loaded into the freshly initialised train state; the optimiser
state, the step and the RNG stay fresh. Only a fresh run loads them: a workdir that holds
checkpoints resumes from its own, and the source is not read again (it may be gone by then).
Checked before the run writes anything to its workdir: a source that does not exist or does not
fit the model ends in one line (config_check.ConfigError).
"""

import logging
import os

import numpy as np

from resnet_jax import config_check, models
from resnet_jax.models import weight_file
from resnet_jax.train import trained

HEAD = 'params/head/'


def split_spec(spec: str) -> tuple[str, str | None]:
  """'runs/x:1200' -> ('runs/x', '1200'); a path that exists as given keeps its colons."""
  path, colon, checkpoint = spec.rpartition(':')
  if colon and not os.path.exists(spec) and (checkpoint.isdigit() or checkpoint in trained.CHOICES):
    return path, checkpoint
  return spec, None


def read(config) -> tuple[dict, str]:
  """(unrolled NumPy variables, what they are) of config.init_from."""
  spec = config.init_from
  flag = f'config.init_from={spec!r}'
  path, checkpoint = split_spec(spec)
  if os.path.isfile(path) and checkpoint is None:
    try:
      weights = models.read_pretrained(path)
    except models.PretrainedError as e:
      raise config_check.ConfigError(f'{flag}: {e}.') from None
    return weights.variables, f'{path}' + (f' ({weights.source})' if weights.source else '')
  config_check.check_init_from_path(config, path)
  try:
    run = trained.load(path, checkpoint or 'latest')
  except trained.RunReadError as e:
    subject = f'{flag}: checkpoint {checkpoint!r}' if e.about == 'checkpoint' else f'{flag}: {path}'
    raise config_check.ConfigError(f'{subject} {e}.') from None
  return run.unrolled_variables(), trained.describe(run)


def initialize(config, workdir: str, state, model, par):
  """`state` with the params and BN statistics of config.init_from, for a fresh run; the state
  unchanged if config.init_from is None or the workdir holds checkpoints (the run resumes)."""
  if not config.init_from:
    return state
  if trained.saved_steps(workdir):
    logging.info('%s holds checkpoints: the run resumes from its own and does not read '
                 'config.init_from=%r.', workdir, config.init_from)
    return state
  variables, what = read(config)
  fresh = par.host_value({'params': state.params, 'batch_stats': state.batch_stats})
  # Compared in the unrolled layout, where names are those of the file (stage{s}_unit{u}).
  fresh = weight_file.unrolled(fresh, model)
  given, wanted = weight_file.flatten(variables), weight_file.flatten(fresh)
  config_check.check_init_from_fits(
      config, weight_file.differences(given, wanted, net='this model'), head=HEAD)
  loaded = {name: np.asarray(given[name], wanted[name].dtype)
            if config.init_head or not name.startswith(HEAD) else wanted[name]
            for name in wanted}
  loaded = weight_file.in_layout(weight_file.unflatten(loaded), model)
  logging.info('Initialised from %s: params and BN statistics loaded%s; the optimiser state and '
               'the step start fresh.', what,
               '' if config.init_head else ', the classifier (head) new (config.init_head=False)')
  return state.replace(params=par.replicate(loaded['params']),
                       batch_stats=par.replicate(loaded.get('batch_stats', {})))

