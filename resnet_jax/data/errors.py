"""The one exception the input pipeline raises for a bad config or missing data."""

from resnet_jax.errors import UserError


class DataError(UserError, ValueError):
  """A dataset, split, augmentation or batch size that the pipeline cannot serve.

  Its message says what to change; the CLI prints it without a traceback.
  """


def empty_split_message(name: str, split: str, sizes: dict) -> str:
  """For a split string that selects no example; `sizes`: examples in each named split."""
  return (f'Split {split!r} of dataset {name!r} selects 0 examples (the splits hold '
          f'{", ".join(f"{n!r}: {k}" for n, k in sizes.items())}); a run needs at least one in '
          'config.data.train_split and in config.data.eval_split.')
