"""Evaluates a run's checkpoint, or a weight file, on any split of its dataset, exactly.

  python -m resnet_jax.evaluate --workdir=runs/quickstart                    # best checkpoint
  python -m resnet_jax.evaluate --workdir=runs/quickstart --checkpoint=latest --split=train
  python -m resnet_jax.evaluate --model=resnet50.safetensors --split=validation

Every example of the split counts once: the trainer's eval (padded batches, the padding masked).
Prints top-1, top-5 and the loss, and for a run writes them to <workdir>/eval_<split>_<step>.json.
It only reads the run (no lock, no change to its checkpoints or metrics), so it can evaluate a
run while it trains. The model and the preprocessing are the run's config (or the file's).
"""

import json
import os
import re
import sys

from absl import app, flags

from resnet_jax import cli, errors

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_weights_flags('to evaluate (its config.json and checkpoints/)')
  flags.DEFINE_string('split', None, "A split of the dataset, in tfds's syntax ('test', "
                      "'train[:5000]'); default: the run's config.data.eval_split.")
  flags.DEFINE_string('data_dir', None, "Where the tfds data is; default: the run's "
                      'config.data.data_dir, else $TFDS_DATA_DIR.')
  flags.DEFINE_integer('eval_batch_size', None, "Examples per batch; default: the run's.")
  cli.register_key_flags(('split', 'data_dir', 'eval_batch_size'))


def result_path(workdir: str, split: str, step: int) -> str:
  # A split string may hold brackets, colons and percent signs: keep file names plain.
  return os.path.join(workdir, f'eval_{re.sub(r"[^A-Za-z0-9._-]", "_", split)}_{step}.json')


def run(workdir, model_file, checkpoint, split, data_dir, eval_batch_size) -> dict:
  # Imported here: a mistake in the flags fails before JAX, orbax and tfds load.
  from resnet_jax import data  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import loop, trained  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  weights = trained.open_weights(workdir, model_file, checkpoint)
  if data_dir:
    weights.data.data_dir = data_dir
  split = split or weights.data.eval_split
  if eval_batch_size is None:
    eval_batch_size = weights.eval_batch_size
  if eval_batch_size <= 0:
    raise errors.UserError(f'--eval_batch_size={eval_batch_size} must be positive.')
  try:
    result = loop.evaluate_weights(weights, split, eval_batch_size)
  except data.DataError as e:
    raise errors.UserError(f'--split={split}: {e}') from None
  top1, top5 = result['eval/accuracy'], result['eval/top5_accuracy']
  print(f'{weights.description} on {weights.data.dataset} {split!r} '
        f'({result["eval/num_examples"]:,} examples): top-1 {100 * top1:.2f}%, '
        f'top-5 {100 * top5:.2f}%, loss {result["eval/loss"]:.4f}')
  if workdir is not None:
    record = {'step': weights.step, 'checkpoint': checkpoint, 'dataset': weights.data.dataset,
              'split': split, **result}
    path = result_path(workdir, split, weights.step)
    try:
      workdir_lib.write_atomic(path, json.dumps(record, indent=2) + '\n')
      print(f'wrote {path}')
    except OSError as e:
      print(f'warning: could not write {path} ({e.strerror}); the result is above.',
            file=sys.stderr)
  return result


@cli.one_line_errors
def main(argv):
  del argv
  cli.quiet_library_logs()
  run(FLAGS.workdir, FLAGS.model, FLAGS.checkpoint, FLAGS.split, FLAGS.data_dir,
      FLAGS.eval_batch_size)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
