"""The exceptions that end a run with one line instead of a traceback.

The command line (`resnet_jax.main`) prints `error: <message>` for any of these and exits with the
exception's `exit_code`. Each message says what is wrong, names the key, file or path and its
value, and what to do; library callers (the experiment sweeps) catch them the same way.
"""


class UserError(Exception):
  """A mistake in the config, the command line, the data or the workdir: exit code 2."""
  exit_code = 2


class RunError(Exception):
  """A run that cannot go on (a non-finite loss, a full disk): exit code 1.

  Whatever was on disk before stays intact, and the workdir stays resumable.
  """
  exit_code = 1


class DataError(UserError, ValueError):
  """A dataset, split, augmentation or batch size that the input pipeline cannot serve, or data
  that is missing or damaged; the message says what to change."""
