"""XLA flags that a run's config chooses: `config.xla`, put into XLA_FLAGS before JAX starts.

Some of XLA's switches are read only from the XLA_FLAGS environment variable, once, when JAX
starts its backends; `jax.jit(..., compiler_options=...)` does not reach them (for the scheduler
flag below, the compiled step's schedule and memory plan came out the same with either value).
So the entry points (resnet_jax.main, a sweep's run process, benchmarks.throughput) call `apply`
with the final config before anything touches a device. Later in a process it is too late: then
`apply` changes nothing and says so.

What each key does, and the measurements behind its default, are in configs/schema.py and
docs/benchmarks.md. None changes a result: they order or place the same kernels.
"""

import logging
import os
import re

from resnet_jax.config_check import ConfigError

# config.xla key -> XLA's flag. XLA ends the process on a flag it does not know, so a jaxlib that
# drops one must fail tests/test_xla_flags.py (which compiles a step with each), not a user's run.
FLAG_NAMES = {
    'cpu_concurrency_optimized_scheduler': 'xla_cpu_enable_concurrency_optimized_scheduler',
}


def _backends_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def resolve(config) -> dict[str, bool | None]:
  """config.xla with each None resolved from the rest of the final config: {key: value}, where
  None leaves XLA's own default."""
  values = config.xla.to_dict()
  if values['cpu_concurrency_optimized_scheduler'] is None:
    # XLA:CPU's concurrency-optimised scheduler (XLA's default) ordered the project's bfloat16
    # ResNet-20 step so that it ran ~5% slower on 2 cores (0.95x the minimal Flax step, 1.00x
    # without it); in float32 the other order was 6-13% slower (docs/benchmarks.md). The flag
    # only touches XLA:CPU's compiler.
    values['cpu_concurrency_optimized_scheduler'] = (
        False if config.model.dtype == 'bfloat16' else None)
  return values


def named_in(xla_flags: str) -> dict[str, str]:
  """{flag name: value} of an XLA_FLAGS string (`--name=value` or `--name`, which is true)."""
  return {name: value if equals else 'true'
          for name, equals, value in re.findall(r'(?:^|\s)--?([A-Za-z0-9_]+)(=?)(\S*)', xla_flags)}


_TRUE, _FALSE = {'true', 't', 'yes', 'y', '1'}, {'false', 'f', 'no', 'n', '0'}


def _same(given: str, value: str) -> bool:
  """Whether XLA reads the XLA_FLAGS value `given` as `value` ('true' or 'false')."""
  given = given.lower()
  return given in (_TRUE if value == 'true' else _FALSE)


def wanted(config) -> list[str]:
  """The `--flag=value` entries that the final config asks XLA_FLAGS for."""
  return [f'--{FLAG_NAMES[key]}={str(value).lower()}'
          for key, value in resolve(config).items() if value is not None]


def apply(config, environ=os.environ) -> list[str]:
  """Appends to environ['XLA_FLAGS'] what `wanted(config)` asks for; returns what it appended.

  XLA_FLAGS set by you wins over a default (a key left at None); a key set in the config that
  XLA_FLAGS contradicts is a ConfigError. Once JAX has started its backends nothing is appended
  (a warning names what the config asked for and does not get).
  """
  current = environ.get('XLA_FLAGS', '')
  named = named_in(current)
  explicit = {FLAG_NAMES[k] for k, v in config.xla.items() if v is not None}
  missing = []
  for entry in wanted(config):
    name, value = entry[2:].split('=')
    if name not in named:
      missing.append(entry)
    elif not _same(named[name], value) and name in explicit:
      key = next(k for k, f in FLAG_NAMES.items() if f == name)
      raise ConfigError(
          f'config.xla.{key}={value.capitalize()} contradicts XLA_FLAGS, which sets --{name}='
          f'{named[name]}; drop one of them.')
  if not missing:
    return []
  if _backends_started():
    level = logging.WARNING if any(m[2:].split('=')[0] in explicit for m in missing) else (
        logging.INFO)
    logging.log(level, 'JAX started its backends before config.xla could set XLA_FLAGS; %s does '
                'not apply in this process (it does in `python -m resnet_jax.main`).',
                ' '.join(missing))
    return []
  environ['XLA_FLAGS'] = ' '.join([current, *missing]).strip()
  logging.info('XLA_FLAGS from config.xla: %s', ' '.join(missing))
  return missing
