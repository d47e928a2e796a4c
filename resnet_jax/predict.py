"""Classifies image files with a run's checkpoint or a weight file: the top classes and their
probabilities.

  python -m resnet_jax.predict --workdir=runs/quickstart digit.png [more.png ...]
  python -m resnet_jax.predict --model=model.safetensors photo.jpg

Each image (PNG, JPEG, anything PIL reads) is preprocessed as the run's eval split is
(resnet_jax.data.images): converted to the dataset's channels (grayscale for the digits), resized
and centre-cropped to config.data.image_size unless it has that size, and normalised with
config.data.mean and std. The digits are white strokes on black, as scikit-learn stores them.
"""

from absl import app, flags

from resnet_jax import cli, errors

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_weights_flags('whose checkpoint classifies')
  flags.DEFINE_integer('top', 5, 'How many classes to print per image.')
  flags.DEFINE_string('data_dir', None, "Where the tfds data is (for the class names); default: "
                      "the run's config.data.data_dir, else $TFDS_DATA_DIR.")
  cli.register_key_flags(('top', 'data_dir'))


def predict(weights, paths, top: int = 5) -> list[list[tuple[int, float]]]:
  """For each image file, its `top` (class, probability) pairs, most probable first."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import images  # pylint: disable=g-import-not-at-top
  data = weights.data
  batch = np.stack([
      images.preprocess(images.load(path, len(data.mean)), data.image_size, data.mean, data.std,
                        data.crop_fraction) for path in paths])
  logits = jax.jit(lambda v, x: weights.model.apply(v, x, train=False))(weights.variables, batch)
  probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
  top = min(top, probabilities.shape[-1])
  return [[(int(c), float(p[c])) for c in np.argsort(-p, kind='stable')[:top]]
          for p in probabilities]


def run(workdir, model_file, checkpoint, paths, top=5, data_dir=None) -> list:
  if not paths:
    raise errors.UserError('give one or more image files after the flags, e.g. '
                           'python -m resnet_jax.predict --workdir=runs/quickstart digit.png')
  if top < 1:
    raise errors.UserError(f'--top={top} must be at least 1.')
  from resnet_jax.train import trained  # pylint: disable=g-import-not-at-top
  weights = trained.open_weights(workdir, model_file, checkpoint)
  names = weights.class_names
  if names is None:
    from resnet_jax.data import images  # pylint: disable=g-import-not-at-top
    names = images.class_names(weights.data.dataset, data_dir or weights.data.data_dir)
  results = predict(weights, paths, top)
  print(f'{weights.description}, {weights.data.dataset} classes:')
  for path, classes in zip(paths, results):
    print(path)
    for c, p in classes:
      name = names[c] if names and c < len(names) else f'class {c}'
      print(f'  {100 * p:6.2f}%  {name}')
  return results


@cli.one_line_errors
def main(argv):
  cli.quiet_library_logs()
  run(FLAGS.workdir, FLAGS.model, FLAGS.checkpoint, argv[1:], FLAGS.top, FLAGS.data_dir)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, positional='IMAGE'))
