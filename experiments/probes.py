"""Per-unit measurements of a net on one batch, for the studies that look inside it.

For every residual unit, in `models.unit_names(model)` order (unit 1 nearest the input):

* `param`: |dL/dW| of the unit's parameters (its whole variable subtree; under nn.scan the stacked
  subtree is split back into units first), and `weight`: |W|;
* `input`: |dL/dx| at the unit's input, the residual stream entering it;
* `activation`: |x| of that input.

L is the mean cross-entropy of the trainer without weight decay, on the train-mode forward pass.
No hook is added to the model: `_tap` intercepts each ResidualUnit call (flax's
nn.intercept_methods) and routes its input through an identity whose backward pass writes a
statistic of the unit's input into the cotangent of a per-unit probe: |dL/dx|^2, or |x|^2,
which the forward pass saved. The probe rides in the model's `unit_mask` argument, which the net
already slices per unit, under nn.scan too; the interceptor takes it away from the unit, so no
branch is scaled. One compiled function gives every measurement, for scanned and unrolled nets.
"""

import functools
import json
import math
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from benchmarks import hardware
from resnet_jax import data, models
from resnet_jax.errors import UserError
from resnet_jax.models.units import ResidualUnit
from resnet_jax.train import run as run_lib
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib
from resnet_jax.train import workdir as workdir_lib


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tap(kind, x, probe):
  del probe
  return x


def _tap_fwd(kind, x, probe):
  del probe
  # Saved for the backward pass: the squared norm of x, which an 'activation' tap reports.
  return x, jnp.sum(jnp.square(x.astype(jnp.float32))) if kind == 'activation' else None


def _tap_bwd(kind, saved, g):
  # The identity passes g on unchanged; the probe's cotangent is the unit input's statistic.
  statistic = saved if kind == 'activation' else jnp.sum(jnp.square(g.astype(jnp.float32)))
  return g, statistic


_tap.defvjp(_tap_fwd, _tap_bwd)


def _tap_unit_inputs(kind):
  def intercept(next_fun, args, kwargs, context):
    if context.method_name != '__call__' or not isinstance(context.module, ResidualUnit):
      return next_fun(*args, **kwargs)
    x, drop_rate, probe = (list(args) + [None, None])[:3]
    drop_rate = kwargs.pop('drop_rate', drop_rate)
    probe = kwargs.pop('keep', probe)
    return next_fun(_tap(kind, x, probe), drop_rate, None, **kwargs)
  return intercept


def unit_norms_fn(model):
  """jit'd (variables, images, labels) -> (loss, {unit: |dL/dW|^2}, {unit: |W|^2},
  |dL/dx|^2 per unit, |x|^2 per unit); compiled once per model, reused for every variables."""
  names = models.unit_names(model)

  def loss_fn(params, probe, batch_stats, images, labels, kind):
    with nn.intercept_methods(_tap_unit_inputs(kind)):
      logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                              train=True, unit_mask=probe, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def squared_norms(tree):
    if model.scan:
      tree = models.scan_to_unrolled({'params': tree}, model)['params']
    return {name: sum(jnp.sum(jnp.square(leaf.astype(jnp.float32)))
                      for leaf in jax.tree.leaves(tree[name])) for name in names}

  @jax.jit
  def fn(variables, images, labels):
    probe = jnp.zeros((len(names),), jnp.float32)
    args = (variables['batch_stats'], images, labels)
    loss, (grads, input_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
        variables['params'], probe, *args, 'gradient')
    # The activations' pass asks for the probe's cotangent only: XLA drops the rest of its
    # backward pass, so it costs about one forward pass.
    activations = jax.grad(loss_fn, argnums=1)(variables['params'], probe, *args, 'activation')
    return (loss, squared_norms(grads), squared_norms(variables['params']), input_grads,
            activations)
  return fn


def unit_norms(model, variables, images, labels, fn=None) -> dict:
  """The per-unit norms of the module docstring on one batch: {'units': names, 'param',
  'weight', 'input', 'activation': float64 arrays in names' order, 'loss': float}.
  fn: unit_norms_fn(model), to reuse its compilation."""
  names = models.unit_names(model)
  loss, grads, weights, input_grads, activations = (fn or unit_norms_fn(model))(
      variables, images, labels)
  root = lambda values: np.sqrt(np.asarray(values, np.float64))
  return {'units': names, 'param': root([float(grads[n]) for n in names]),
          'weight': root([float(weights[n]) for n in names]), 'input': root(input_grads),
          'activation': root(activations), 'loss': float(loss)}


def stage_spans(model) -> list[tuple[int, int, int]]:
  """(stage, i, j) per stage with a same-shape span: the inputs of units i and j (indices into
  unit_names) have one shape, as every unit of a stage after its first keeps the shape. i is the
  stage's second unit, j its last; stages of fewer than 3 units have no span."""
  spans, start = [], 0
  for s, size in enumerate(model.stage_sizes, 1):
    if size >= 3:
      spans.append((s, start + 1, start + size - 1))
    start += size
  return spans


def stage_ratios(measured: dict, spans) -> dict:
  """Per stage s, from one `unit_norms` result: 'grad_s', |dL/dx| at the span's first unit over
  that at its last (above 1: the gradient grows towards the input; below 1: it attenuates), and
  'growth_s', |x| at the span's last unit over that at its first (the residual stream's forward
  growth), and 'update_s', |dL/dW|/|W| at the span's first unit over that at its last (the
  relative step SGD gives the lower unit, against the higher one). Same-shape tensors only, so
  no ratio mixes in a change of width or resolution."""
  ratios = {}
  relative = measured['param'] / measured['weight']
  for s, i, j in spans:
    ratios[f'grad_{s}'] = float(measured['input'][i] / measured['input'][j])
    ratios[f'growth_{s}'] = float(measured['activation'][j] / measured['activation'][i])
    ratios[f'update_{s}'] = float(relative[i] / relative[j])
  return ratios


def _stages(record: dict, kind: str) -> list[int]:
  """The stages of which `record` holds a `stage_ratios` ratio of `kind` ('grad_2': stage 2)."""
  return sorted(int(k[len(kind) + 1:]) for k in record
                if k.startswith(f'{kind}_') and k[len(kind) + 1:].isdigit())


def mean_log_ratio(record: dict, kind: str) -> float:
  """The mean over the stages of log(ratio) for one record of `stage_ratios`' kind ('grad',
  'growth' or 'update'): the per-seed value the studies' claims pair; nan if none was measured."""
  values = [record[f'{kind}_{s}'] for s in _stages(record, kind)]
  return statistics.mean(math.log(v) for v in values) if values else float('nan')


def geometric_spread(values, fmt: str = '.3g') -> str:
  """'geometric mean (lowest-highest)' of positive ratios."""
  geo = math.exp(statistics.mean(math.log(v) for v in values))
  return f'{geo:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})'


def init_table(init: list[dict], arm: str, arms, ratios) -> list[dict]:
  """One row per depth and arm (the records' `arm` key, in the order of `arms`) of the init
  records: the initial loss (mean over the seeds) and per stage each of `ratios`, (kind, label)
  pairs of `stage_ratios`, as a geometric spread over the seeds."""
  cells = []
  for depth in sorted({r['depth'] for r in init}):
    for name in [a for a in arms if any(r[arm] == a for r in init)]:
      group = [r for r in init if r['depth'] == depth and r[arm] == name]
      cell = {'depth': depth, arm: name, 'seeds': len(group),
              'initial loss': f'{statistics.mean(r["loss"] for r in group):.3f}'}
      for kind, label in ratios:
        for s in sorted({s for r in group for s in _stages(r, kind)}):
          cell[f'{label}, stage {s}'] = geometric_spread(
              [r[f'{kind}_{s}'] for r in group if f'{kind}_{s}' in r])
      cells.append(cell)
  return cells


def fixed_batch(config, num_images: int):
  """The first `num_images` training images of `config`'s training split, prepared as the eval
  pipeline prepares them (no augmentation), normalised as the train step normalises them."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  split = config.data.train_split
  # A split that is already a slice ('train[:1280]') is read whole, and its first batch taken.
  data_config.eval_split = split if '[' in split else f'{split}[:{num_images}]'
  batch = next(iter(data.create_eval_iterator(data_config, global_batch_size=num_images)))
  if not np.all(batch['mask']):  # The eval pipeline pads a short last batch.
    raise UserError(f'config.data.train_split={split!r} holds fewer than the {num_images} '
                    'images of the measurement batch; use a larger split or a smaller batch.')
  images = step_lib.model_input(jnp.asarray(batch['image']), config.data.mean, config.data.std)
  return images, jnp.asarray(batch['label'])


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSON-lines file ([] if there is none), skipping a torn last line."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        pass  # The last line of an interrupted write; that measurement is simply redone.
  return records


def write_jsonl(path: str, records: list[dict]) -> None:
  """The records, one JSON line each, written atomically (read back with `read_jsonl`)."""
  workdir_lib.write_atomic(path, ''.join(json.dumps(r) + '\n' for r in records))


def _rounded(values) -> list[float]:
  return [float(f'{v:.5g}') for v in values]


def measure_at_init(arms, seeds, batch_size: int, variant: str, log_path: str,
                    study: str) -> list[dict]:
  """The per-unit norms at initialisation of every arm x seed, on the first `batch_size`
  training images: one record per measurement, appended (and fsynced) to log_path as it is made,
  so a rerun measures only what the log does not hold yet.

  arms: (label, config) pairs, label a dict such as {'placement': ..., 'depth': ...} that names
  the arm in its records. Nets are measured in the scanned layout (each stage compiled once:
  minutes less for the deep nets): the same distributions as the unrolled layout, other draws.
  A record: the label, seed, batch, variant, loss, `stage_ratios`, the per-unit norms
  (input, activation, param, weight), wall_s and hardware.
  """
  fields = tuple(arms[0][0]) if arms else ()
  key = lambda r: (tuple(r.get(f) for f in fields), r['seed'], r['batch'], r['variant'])
  records = {key(r): r for r in read_jsonl(log_path)}
  batch, wanted = None, []
  for label, config in arms:
    keys = {s: key({**label, 'seed': s, 'batch': batch_size, 'variant': variant}) for s in seeds}
    wanted += keys.values()
    todo = [s for s in seeds if keys[s] not in records]
    if not todo:
      continue
    config = config.copy_and_resolve_references()
    config.model.scan = True
    prepared = run_lib.prepare(config, open_data=False)
    model = run_lib.model(prepared.config)
    if batch is None:
      batch = fixed_batch(prepared.config, batch_size)
    fn, spans = unit_norms_fn(model), stage_spans(model)
    init = jax.jit(lambda rng: state_lib.init_variables(rng, model, prepared.image_shape))
    for seed in todo:
      started = time.perf_counter()
      measured = unit_norms(model, init(jax.random.key(seed)), *batch, fn)
      record = {**label, 'seed': seed, 'batch': batch_size, 'variant': variant,
                'loss': measured['loss'], **stage_ratios(measured, spans),
                **{kind: _rounded(measured[kind])
                   for kind in ('input', 'activation', 'param', 'weight')},
                'wall_s': round(time.perf_counter() - started, 2),
                'hardware': hardware.devices_line()}
      with open(log_path, 'a') as f:
        f.write(json.dumps(record) + '\n')
        f.flush()
        os.fsync(f.fileno())
      records[keys[seed]] = record
      grads = [record[k] for k in sorted(record) if k.startswith('grad_')]
      print(f'{study}: init {"-".join(str(v) for v in label.values())} seed {seed}: loss '
            f'{record["loss"]:.3f}, gradient ratio per stage '
            f'{", ".join(f"{g:.3g}" for g in grads)} ({record["wall_s"]:.1f} s)', flush=True)
  return [records[k] for k in wanted]
