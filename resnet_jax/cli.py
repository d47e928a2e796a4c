"""The command lines' shared parts: `--config=FILE[:ARG]` loading and flag parsing.

resnet_jax.main and resnet_jax.summary load their config files and parse their flags here, so that
a missing or broken config file, an unknown key or a bad value ends in one line naming the file,
flag or key (exit code 2), not in a traceback or a dump of every flag.
"""

import difflib
import functools
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import re
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from resnet_jax.config_check import TYPE_NAMES, ConfigError, check_structure
from resnet_jax.errors import RunError, UserError


DEBUG_ENV = 'RESNET_JAX_DEBUG'  # =1: every command's errors end in their full traceback.


def one_line_errors(main):
  """A command's main, whose errors end the process in one line `error: <message>`, not a
  traceback: a UserError (a bad input) or RunError (a failed run) with its exit code (2 or 1),
  an OSError (a file system that failed under the command) or any other exception with 1.

  With RESNET_JAX_DEBUG=1 in the environment, every error ends in its traceback instead."""
  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    if os.environ.get(DEBUG_ENV, '') not in ('', '0'):
      return main(*args, **kwargs)
    try:
      return main(*args, **kwargs)
    except (UserError, RunError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(e.exit_code)
    except OSError as e:
      where = f'{e.filename}: ' if e.filename else ''
      print(f'error: {where}{e.strerror or e} ({DEBUG_ENV}=1 shows the traceback)',
            file=sys.stderr)
      sys.exit(1)
    except Exception as e:  # pylint: disable=broad-except
      print(f'error: unexpected {type(e).__name__}: {" ".join(str(e).split())[:500]} (a bug: '
            f'{DEBUG_ENV}=1 shows the traceback)', file=sys.stderr)
      sys.exit(1)
  return wrapped


def define_weights_flags(what: str, weight_file: bool = True) -> None:
  """--workdir (the run `what`), --checkpoint and, with weight_file, --model: the flags of the
  commands that read a trained model (resnet_jax.train.trained.open_weights)."""
  flags.DEFINE_string('workdir', None, f'The run {what}.')
  flags.DEFINE_string('checkpoint', 'best', "'best' (the best eval accuracy in metrics.jsonl), "
                      "'latest' or a step number.")
  if weight_file:
    flags.DEFINE_string('model', None, 'A weight file (resnet_jax.export, resnet_jax.convert) '
                        'instead of a run.')
  register_key_flags(('workdir', 'checkpoint') + (('model',) if weight_file else ()))


def enclosing_run(path: str) -> str | None:
  """The training run's workdir that `path` lies in (a folder with config.json and checkpoints/
  or metrics.jsonl, the trainer's files), or None."""
  folder = os.path.dirname(os.path.abspath(path))
  while True:
    if os.path.isfile(os.path.join(folder, 'config.json')) and (
        os.path.isdir(os.path.join(folder, 'checkpoints'))
        or os.path.isfile(os.path.join(folder, 'metrics.jsonl'))):
      return folder
    parent = os.path.dirname(folder)
    if parent == folder:
      return None
    folder = parent


def check_output_file(flag: str, path: str, is_own=None, overwrite: bool = False) -> None:
  """A path a command can write its file to, or a UserError naming the flag, before any work.

  A command writes only its own outputs: not into a training run's workdir, and not over an
  existing file unless `is_own(path)` says this command wrote it (or `overwrite`)."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise UserError(f'{flag}={path} is a directory; give a file name, e.g. '
                    f'{os.path.join(path, "model.safetensors")}.')
  if not os.path.isdir(folder):
    raise UserError(f'{flag}={path}: the directory {folder} does not exist.')
  if not os.access(folder, os.W_OK):
    raise UserError(f'{flag}={path}: the directory {folder} is not writable.')
  run = enclosing_run(path)
  if run is not None:
    raise UserError(f'{flag}={path} lies inside the training run {run}, whose files only the '
                    'trainer writes; give a path outside it.')
  if os.path.lexists(path) and not overwrite and not (is_own and is_own(path)):
    raise UserError(f'{flag}={path} exists and is not a file this command wrote; give another '
                    'name, or --overwrite to replace it.')


def _similar_file(path: str) -> str:
  folder, name = os.path.split(path)
  names = os.listdir(folder or '.') if os.path.isdir(folder or '.') else []
  files = [n for n in names if n != name and os.path.isfile(os.path.join(folder, n))]
  close = difflib.get_close_matches(name, files, 1, 0.75)
  return f'; did you mean {os.path.join(folder, close[0])}?' if close else '.'


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`FILE[:ARG]` -> the ConfigDict that FILE's `get_config(ARG)` returns, checked against
  configs/schema.py; any failure is a ConfigError that names the file and the argument."""
  path, has_arg, arg = spec.partition(':')
  flag = f'--config={spec}'
  if not os.path.isfile(path):
    problem = 'is a directory' if os.path.isdir(path) else 'does not exist'
    raise ConfigError(f'{flag}: the config file {path!r} {problem} (relative to {os.getcwd()})'
                      f'{_similar_file(path)} Give a config file, e.g. '
                      '--config=configs/quickstart.py.')
  # Any file name is loaded as Python source, as ml_collections does.
  loader = importlib.machinery.SourceFileLoader('config_file', path)
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
  try:
    loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f'{flag}: {path} has a syntax error on line {e.lineno}: {e.msg}.') from None
  except Exception as e:  # A config file is user code: whatever it raises is one line.
    raise ConfigError(f'{flag}: loading {path} raised {type(e).__name__}: {e}') from None
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise ConfigError(f'{flag}: {path} defines no get_config() function; a config file returns '
                      'its ConfigDict from get_config(), as configs/quickstart.py does.')
  args = (arg,) if has_arg else ()
  try:
    inspect.signature(get_config).bind(*args)
  except TypeError:
    if has_arg:
      raise ConfigError(f'{flag}: {path} takes no argument, but ":{arg}" gives it one; drop '
                        f'":{arg}" and override keys with --config.KEY=VALUE instead.') from None
    raise ConfigError(f'{flag}: {path} needs an argument: --config={path}:ARG (its docstring '
                      'says which).') from None
  call = f'get_config({arg!r})' if has_arg else 'get_config()'
  try:
    config = get_config(*args)
  except Exception as e:  # Bad arguments raise ValueError, but any error in user code counts.
    raise ConfigError(f'{flag}: {call} of {path} raised {type(e).__name__}: {e}') from None
  try:
    check_structure(config)
  except ConfigError as e:
    raise ConfigError(f'{flag}: {call} of {path} returns a config that cannot work: {e}') from None
  return config


class _ConfigFileParser(flags.ArgumentParser):
  """`--config=FILE[:ARG]` through load_config. It keeps the config, whose keys explain an
  override that ml_collections rejects with a KeyError."""

  config = None

  def parse(self, argument):
    type(self).config = load_config(argument)
    return self.config.lock()

  def flag_type(self):
    return 'config object'


def define_config_flag(name: str, help_string: str):
  """`config_flags.DEFINE_config_file(name)`, loading the file with load_config's messages."""
  holder = config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)
  flags.FLAGS[name].parser = _ConfigFileParser()
  return holder


def _override_error(argv, error: Exception) -> ConfigError | None:
  """Explains an override `--config.KEY=VALUE` that ml_collections rejected, from the keys and
  types of the loaded config; None if every KEY exists and `error` is no bad VALUE of one."""
  config = _ConfigFileParser.config
  if config is None:
    return None
  for arg in argv[1:]:
    match = re.match(r'--?(?:no)?config\.([^=]+)(?:=(.*))?$', arg, re.S)
    if not match:
      continue
    key, value = match.groups()
    node, path = config, 'config'
    for part in key.split('.'):
      if not isinstance(node, ml_collections.ConfigDict):
        return ConfigError(f'{arg}: {path} is a value, not a group of keys; override it '
                           f'as --{path}=VALUE.')
      if part not in node:
        close = difflib.get_close_matches(part, list(node), 1, 0.75)
        hint = f'; did you mean --{path}.{close[0]}?' if close else '.'
        return ConfigError(f'{arg}: {path} has no key {part!r}{hint} configs/schema.py lists '
                           'every key.')
      parent, node, path = node, node[part], f'{path}.{part}'
    if isinstance(node, ml_collections.ConfigDict):
      return ConfigError(f'{arg}: {path} is a group of keys, not a value; override one of '
                         f'them ({", ".join(node)}) as --{path}.KEY=VALUE.')
    if (isinstance(error, flags.IllegalFlagValueError)
        and str(error).startswith(f'flag --{path}=')):
      kind = parent.get_type(part)
      wanted = TYPE_NAMES.get(kind, f'a {kind.__name__}')
      return ConfigError(f'{arg}: {path} takes {wanted}, and {value!r} is not one.')
  return None


def _user_error(error: Exception, argv) -> UserError:
  cause = error
  while cause is not None:  # absl wraps load_config's ConfigError in IllegalFlagValueError.
    if isinstance(cause, UserError):
      return cause
    cause = cause.__cause__ or cause.__context__
  explained = _override_error(argv, error)
  if explained:
    return explained
  message = ' '.join(str(error).split())
  if isinstance(error, flags.Error):
    return UserError(f'{message}; --helpshort lists the flags.')
  return UserError(f'cannot parse the command line: {type(error).__name__}: {message}')


class _TpuProbeFilter(logging.Filter):
  """Drops JAX's INFO line "Unable to initialize backend 'tpu': ... libtpu.so ...".

  Without JAX_PLATFORMS, JAX tries every backend it knows and logs each one that is not there;
  on a machine without a TPU that line looks like a failure but means nothing. A TPU that is
  there but fails is still reported: JAX raises then, it does not log.
  """

  def filter(self, record):
    return not (record.levelno <= logging.INFO
                and record.getMessage().startswith("Unable to initialize backend 'tpu'"))


def quiet_tpu_probe() -> None:
  """Installs _TpuProbeFilter on JAX's backend logger (once)."""
  logger = logging.getLogger('jax._src.xla_bridge')
  if not any(isinstance(f, _TpuProbeFilter) for f in logger.filters):
    logger.addFilter(_TpuProbeFilter())


def quiet_library_logs() -> None:
  """orbax and tfds log every file operation through absl's logger at INFO; keep a command's own
  output readable. --verbosity=1 brings them back."""
  if flags.FLAGS.verbosity <= 0:
    logging.getLogger('absl').setLevel(logging.WARNING)


def register_key_flags(names) -> None:
  """Makes --helpshort list these flags.

  --helpshort lists the flags of the module that sys.argv[0] names: the module run with
  `python -m`, or the console script, which is not the module that defined them.
  """
  for name in names:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def parse_flags(argv: list[str], required: tuple[str, ...] = (),
                positional: str | None = None) -> list[str]:
  """Parses absl's flags.FLAGS for `app.run(main, flags_parser=...)`.

  Like absl's own parser, it ends the process on a mistake, but with one line `error: ...` and
  exit code 2 instead of a traceback (ml_collections' KeyError for an unknown key) or a dump of
  every flag. A `required` flag that is missing or an argument that is no flag is a mistake too,
  unless `positional` names what the arguments are (e.g. 'IMAGE'): then they are returned after
  the program name, for the command to check.
  """
  quiet_tpu_probe()  # Every command line passes here before JAX starts its backends.
  try:
    try:
      rest = flags.FLAGS(argv)
    except SystemExit as e:
      # absl's --help, --helpshort and --helpfull print the usage on stdout and exit 1; the
      # usage was what the user asked for, so the command succeeded.
      sys.exit(0 if e.code == 1 else e.code)
    except Exception as e:  # pylint: disable=broad-except
      raise _user_error(e, argv) from None
    missing = [f'--{name}' for name in required if flags.FLAGS[name].value is None]
    if missing:
      raise UserError(f'{" and ".join(missing)} must be given; --helpshort lists the flags.')
    # An empty value (`--workdir=`, an unset shell variable) would name the current directory:
    # the run would train into it, a command read it as a run. Config keys may be empty.
    for name in sorted(flags.FLAGS):
      flag = flags.FLAGS[name]
      if '.' not in name and flag.present and flag.value == '':
        raise UserError(f'--{name}= is empty; give it a value'
                        f'{"" if name in required else ", or leave the flag out"}.')
    if len(rest) > 1 and not positional:
      raise UserError(f'unexpected arguments {rest[1:]}: every argument is a flag, '
                      '--name=value; --helpshort lists them.')
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(e.exit_code)
  return rest
