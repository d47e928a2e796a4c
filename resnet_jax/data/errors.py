"""The one exception the input pipeline raises for a bad config or missing data."""


class DataError(ValueError):
  """A dataset, split, augmentation or batch size that the pipeline cannot serve.

  Its message says what to change; the CLI prints it without a traceback.
  """
