"""Trains and evaluates a config: `python -m resnet_jax.main --config=configs/X.py --workdir=DIR`.

Any key can be overridden on the command line, e.g. `--config.batch_size=256`. Rerunning the same
command resumes from the newest checkpoint in the workdir.
"""

import logging
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from resnet_jax import config_check, data, parallel
from resnet_jax.train import loop

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics.jsonl and TensorBoard logs.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])

# Mistakes in the config or the data setup end with this message and exit code 2, not a traceback.
USER_ERRORS = (config_check.ConfigError, data.DataError, parallel.ParallelError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  # orbax and tfds log every file operation through absl's logger at INFO; keep the progress
  # lines of this project (the root logger) readable. --verbosity=1 brings them back.
  if FLAGS.verbosity <= 0:
    logging.getLogger('absl').setLevel(logging.WARNING)
  try:
    parallel.initialize_distributed(config.distributed)
    logging.info('JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
                 jax.devices())
    loop.train_and_evaluate(config, FLAGS.workdir)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def run():
  """Entry point of the `resnet-jax` console script."""
  app.run(main)


if __name__ == '__main__':
  run()
