"""Exports a run's checkpoint as one weight file, for resnet_jax.models.load_pretrained.

  python -m resnet_jax.export --workdir=runs/quickstart --out=quickstart.safetensors
  python -m resnet_jax.export --workdir=runs/quickstart --checkpoint=400 --out=step400.safetensors

The file (resnet_jax/models/weight_file.py) holds the params and BN statistics, the model config,
the eval preprocessing and the class names; it is all that resnet_jax.predict, resnet_jax.evaluate
--model and fine-tuning (--config.init_from=FILE) need. The run is only read.
"""

from absl import app, flags

from resnet_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_weights_flags('to export; required', weight_file=False)
  flags.DEFINE_string('out', None, 'The weight file to write, e.g. model.safetensors; required. '
                      'An existing file is replaced only if it is a weight file (or with '
                      '--overwrite); never a file inside a run.')
  flags.DEFINE_bool('overwrite', False, 'Replace --out even if it is not a weight file.')
  cli.register_key_flags(('out', 'overwrite'))


def export(workdir: str, checkpoint: str, out: str, overwrite: bool = False) -> str:
  """Writes the weight file; returns a line that says what it holds."""
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import images  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import trained  # pylint: disable=g-import-not-at-top
  cli.check_output_file('--out', out, models.is_weight_file, overwrite)
  weights = trained.open_weights(workdir, None, checkpoint)
  config = trained.read_config(workdir, weights.step)
  data = trained.data_config(config)
  models.save_pretrained(out, weights.variables, weights.model, dict(config.model), data,
                         images.class_names(data['dataset'], config.data.data_dir),
                         source=weights.description)
  count = sum(x.size for x in jax.tree.leaves(weights.variables['params']))
  m = config.model
  return (f'wrote {out}: {m.family} ResNet-{m.depth} ({m.placement}), {m.num_classes} classes, '
          f'{count:,} parameters, from {weights.description}')


@cli.one_line_errors
def main(argv):
  del argv
  cli.quiet_library_logs()
  print(export(FLAGS.workdir, FLAGS.checkpoint, FLAGS.out, FLAGS.overwrite))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, required=('workdir', 'out')))
