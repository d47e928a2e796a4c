"""Trains and evaluates a config: `python -m resnet_jax.main --config=configs/X.py --workdir=DIR`.

Any key can be overridden on the command line, e.g. `--config.batch_size=256`. Rerunning the same
command resumes from the newest checkpoint in the workdir.
"""

import functools
import logging
import sys

import jax
from absl import app, flags

from resnet_jax import cli, errors, parallel, xla_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines --config and --workdir.

  The entry point calls this, not the import, so that this module and resnet_jax.summary (which
  has a --config of its own) import into one process.
  """
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics.jsonl and TensorBoard '
                      'logs; required. Rerunning with the same one resumes.')
  cli.define_config_flag('config', 'Training configuration file, FILE or FILE:ARG; '
                                  'required. Override any key with --config.KEY=VALUE.')
  # --helpshort lists the flags of the module that sys.argv[0] names; for the resnet-jax console
  # script that is the script, not this module.
  for name in ('config', 'workdir'):
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def main(argv):
  del argv  # parse_flags rejects arguments that are no flags.
  config = FLAGS.config
  # orbax and tfds log every file operation through absl's logger at INFO; keep the progress
  # lines of this project (the root logger) readable. --verbosity=1 brings them back.
  if FLAGS.verbosity <= 0:
    logging.getLogger('absl').setLevel(logging.WARNING)
  try:
    # Before anything starts JAX's backends: XLA reads these flags once, then.
    xla_flags.apply(config)
    parallel.initialize_distributed(config.distributed)
    logging.info('JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
                 jax.devices())
    # Imported only now: a mistake on the command line then fails in a second, before orbax,
    # tfds and grain load.
    from resnet_jax.train import loop  # pylint: disable=g-import-not-at-top
    result = loop.train_and_evaluate(config, FLAGS.workdir)
  except KeyboardInterrupt:  # Ctrl-C before the trainer's own handler was in place.
    print('error: interrupted before training started; nothing was saved.', file=sys.stderr)
    sys.exit(130)
  except (errors.UserError, errors.RunError) as e:
    # Mistakes and failed runs end with one line and the exception's exit code, not a traceback.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(e.exit_code)
  if result.get('stopped'):
    # Stopped by a signal after saving: exit as schedulers expect (143 for SIGTERM, 130 for
    # Ctrl-C), never 0, so an unfinished run is never taken for a finished one.
    sys.exit(128 + result['signal'])


def run():
  """Entry point of `python -m resnet_jax.main` and of the `resnet-jax` console script."""
  define_flags()
  app.run(main, flags_parser=functools.partial(cli.parse_flags,
                                               required=('config', 'workdir')))


if __name__ == '__main__':
  run()
