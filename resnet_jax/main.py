"""Trains and evaluates a config: `python -m resnet_jax.main --config=configs/X.py --workdir=DIR`.

Any key can be overridden on the command line, e.g. `--config.batch_size=256`. Rerunning the same
command resumes from the newest checkpoint in the workdir.
"""

import functools
import logging
import sys

from absl import app, flags

from resnet_jax import cli

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
  cli.register_key_flags(('config', 'workdir'))


@cli.one_line_errors
def main(argv):
  del argv  # parse_flags rejects arguments that are no flags.
  cli.quiet_library_logs()
  # Imported only now, after the flags parsed: a mistake there fails before JAX, orbax, tfds and
  # grain load.
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax import parallel, xla_flags  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop, run  # pylint: disable=g-import-not-at-top
  try:
    # Validated, the data opened and the derived keys filled in, without starting JAX's backends:
    # XLA reads its flags once, when they start, and jax.distributed must come before them.
    prepared = run.prepare(FLAGS.config)
    xla_flags.apply(prepared.config)
    parallel.initialize_distributed(prepared.config.distributed)
    logging.info('JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
                 jax.devices())
    result = loop.train_and_evaluate(prepared, FLAGS.workdir)
  except KeyboardInterrupt:  # Ctrl-C before the trainer's own handler was in place.
    print('error: interrupted before training started; nothing was saved.', file=sys.stderr)
    sys.exit(130)
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
