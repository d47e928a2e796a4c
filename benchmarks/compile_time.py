"""Init and train-step compile time of a ResNet, scan on and off (issue 2: pre-act ResNet-1001).

  python benchmarks/compile_time.py                      # pre-act ResNet-1001, batch 128x32x32x3
  python benchmarks/compile_time.py --depth=110 --placement=original --batch=32

Times, per scan setting: `init` = jax.jit(model.init) traced, compiled and run once on a batch of
--init_batch images; `lower` = tracing the train step to StableHLO; `compile` = XLA compiling it;
`step` (with --execute) = the median of --steps executed steps after one untimed step. The train
step is jit(value_and_grad(cross-entropy)) + optax.sgd(momentum=0.9), with mutable batch_stats.
The issue's target is init + lower + compile < 20 s with scan on.
"""

import functools
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from resnet_jax import cli
from resnet_jax.errors import UserError
from resnet_jax.models import create_model

_FAMILY = flags.DEFINE_string('family', 'cifar', 'Model family.')
_DEPTH = flags.DEFINE_integer('depth', 1001, 'Model depth.')
_PLACEMENT = flags.DEFINE_string('placement', 'full_preact', 'Activation placement.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size of the train step.')
_INIT_BATCH = flags.DEFINE_integer('init_batch', 1,
                                   'Batch size given to init (as the Flax examples do).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Image height and width.')
_SCAN = flags.DEFINE_list('scan', ['true', 'false'], 'Scan settings to time, in order.')
_EXECUTE = flags.DEFINE_bool('execute', False, 'Also time executed train steps.')
_STEPS = flags.DEFINE_integer('steps', 3, 'With --execute: timed steps (the median is shown).')


def make_train_step(model, tx):
  def train_step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                                    train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates['batch_stats']
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss
  return train_step


def timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def measure(model):
  images = jnp.zeros((_BATCH.value, _IMAGE_SIZE.value, _IMAGE_SIZE.value, 3), jnp.float32)
  labels = jnp.zeros((_BATCH.value,), jnp.int32)
  init = jax.jit(functools.partial(model.init, train=False))
  variables, t_init = timed(lambda: init(jax.random.key(0), images[:_INIT_BATCH.value]))
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(variables['params'])
  args = (variables['params'], variables['batch_stats'], opt_state, images, labels)
  lowered, t_lower = timed(lambda: jax.jit(make_train_step(model, tx)).lower(*args))
  compiled, t_compile = timed(lowered.compile)
  line = (f'scan={str(model.scan):5}  init {t_init:6.2f} s  lower {t_lower:6.2f} s  '
          f'compile {t_compile:6.2f} s  init+lower+compile {t_init + t_lower + t_compile:6.2f} s')
  if _EXECUTE.value:
    timed(lambda: compiled(*args))
    t_step = statistics.median(timed(lambda: compiled(*args))[1] for _ in range(_STEPS.value))
    line += f'  step {t_step:6.2f} s ({_BATCH.value / t_step:.1f} img/s)'
  print(line, flush=True)


def models() -> list:
  """The net of the flags, once per --scan setting; a UserError names a flag that is wrong."""
  scans = {'true': True, 'false': False}
  if not _SCAN.value:  # It would time nothing, exit 0.
    raise UserError('--scan is empty; give true, false or both.')
  bad = [s for s in _SCAN.value if s.lower() not in scans]
  if bad:
    raise UserError(f'--scan: {bad[0]!r} is not true or false.')
  for name, flag in (('batch', _BATCH), ('init_batch', _INIT_BATCH), ('image_size', _IMAGE_SIZE),
                     ('steps', _STEPS)):
    if flag.value < 1:
      raise UserError(f'--{name}={flag.value} must be at least 1.')
  try:
    return [create_model(_FAMILY.value, _DEPTH.value, placement=_PLACEMENT.value,
                         scan=scans[s.lower()]) for s in _SCAN.value]
  except ValueError as e:  # The model's own message names the key and what is allowed.
    raise UserError(f'--family/--depth/--placement: {e}') from None


@cli.one_line_errors
def main(argv):
  del argv  # cli.parse_flags rejects arguments that are no flags.
  nets = models()
  print(f'{_FAMILY.value} ResNet-{_DEPTH.value} {_PLACEMENT.value}, batch '
        f'{_BATCH.value}x{_IMAGE_SIZE.value}x{_IMAGE_SIZE.value}x3, jax {jax.__version__} on '
        f'{jax.devices()[0].device_kind} ({jax.local_device_count()} device)', flush=True)
  for model in nets:
    measure(model)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
