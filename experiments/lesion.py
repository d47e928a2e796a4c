"""Lesion study of Veit et al. 2016 ("Residual Networks Behave Like Ensembles", arXiv 1605.06431).

  python -m experiments.lesion --budget smoke --results_dir runs/exp/lesion
  python -m experiments.lesion --budget cpu --results_dir DIR --from_workdir runs/c10_pre110

Trains (through experiments/runner.py) a pre-activation residual net and a plain net of the same
depth, or takes finished runs (--from_workdir, any number), then at test time deletes residual
units from the trained weights and records the test error:

* each unit alone (the downsampling units, stride 2, are marked), and
* k random units for k = 1..n, several draws each (mean and spread).

Deleting a unit uses the model's `unit_mask` (models/resnet.py): the unit's residual branch is
multiplied by 0 and the shortcut kept. For a pre-activation unit with an identity shortcut that
makes the unit the identity; for an 'original' unit it leaves relu(x) = x (x is already a ReLU
output). A plain net (shortcut 'none') has no shortcut, so `unit_mask` = 0 zeroes the unit's
output: the rest of the net sees an all-zero feature map. That is what `unit_mask` does, and it is
reported as `mask`. Veit et al. delete a layer of a plain (VGG) net by taking it out, so for plain
nets the study also reports `skip`: the unit is replaced by the identity (an interceptor around
ResidualUnit, no change to the model), which is possible only where the unit keeps the shape
(not the downsampling units, whose rows read `-`). For residual nets `skip` equals `mask` on every
identity-shortcut unit, so only `mask` is measured.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import plots, publish, runner, study
from benchmarks import hardware
from resnet_jax import cli, data, models
from resnet_jax.models.units import ResidualUnit
from resnet_jax.train import step as step_lib
from resnet_jax.train import trained

STUDY = 'lesion'
NETS = {  # label -> (placement, shortcut): Veit et al. lesion a pre-activation ResNet-110.
    'residual': ('full_preact', None),
    'plain': ('original', 'none'),
}
# Veit et al. 2016, read from their Fig. 3 and 5.
PAPER = {
    'source': 'Veit et al. 2016 (arXiv 1605.06431), pre-act ResNet-110 (54 units), CIFAR-10',
    'single': 'deleting one non-downsampling unit barely changes the error; a downsampling unit '
              'costs modestly; deleting any layer of a VGG-style plain net gives chance (90%)',
    'k_errors': {10: 20.0},  # about 20% error with 10 of 54 units deleted (their Fig. 5a)
}


@dataclasses.dataclass(frozen=True)
class Budget:
  depth: int
  train_steps: int
  batch_size: int
  eval_split: str
  draws: int
  paper_recipe: bool = False


BUDGETS = {
    # Under 3 minutes on 2 cores: ResNet-20 (9 units), 60 steps, lesions evaluated on 500 images.
    'smoke': Budget(depth=20, train_steps=60, batch_size=64, eval_split='test[:500]', draws=3),
    # ~40 min on 2 cores: ResNet-32 (15 units), 600 steps of batch 128, 1000 test images.
    'cpu': Budget(depth=32, train_steps=600, batch_size=128, eval_split='test[:1000]', draws=4),
    # The paper's net: pre-act ResNet-110 (54 units), the full 2016 recipe, the whole test set.
    'paper': Budget(depth=110, train_steps=64_000, batch_size=128, eval_split='test', draws=10,
                    paper_recipe=True),
}


WHAT_IT_SHOWS = {
    'smoke': 'Checks the machinery only: ResNet-20 nets trained 60 steps are near chance, so '
             'deleting units can barely make them worse.',
    'cpu': 'Pre-activation and plain 32-layer nets (15 units) trained 600 steps (1.5 epochs), '
           'lesioned on 1,000 test images (4 random draws per k): whether deleting one unit of the residual net costs '
           "little while any deletion breaks the plain net, as in Veit et al.'s Fig. 3 and 5. "
           'Nets this short-trained are far from the paper\'s 6.4% error, so the absolute '
           'errors are not comparable with the paper\'s.',
    'paper': "Veit et al.'s setting: pre-activation ResNet-110 (54 units) with the full 2016 "
             'recipe, lesioned on the whole test set.',
}
DEVIATIONS = [
    *study.COMMON_DEVIATIONS,
    'Veit et al. compare with a VGG-style plain net; here the plain net is the residual net '
    "without its shortcuts (shortcut 'none'), of the same depth and widths.",
    'smoke and cpu budgets train with a shortened schedule (lr 0.1 divided by 10 at 50% and 75% '
    'of the steps, a warm-up of 10% of the steps at 0.01), plain momentum SGD, no decay on BN, '
    'and lesion on part of the test set.',
]


def lesion_units(model) -> list[dict]:
  """One entry per unit, in `unit_mask` order: index (0-based), name, stage, unit,
  `downsampling` (stride 2) and `changes_shape` (stride or width differs from the unit's input)."""
  units = []
  channels = model.stem_width
  for s, (size, width, stride) in enumerate(
      zip(model.stage_sizes, model.widths, model.strides), 1):
    features = 4 * width if model.bottleneck else width
    for u in range(1, size + 1):
      first = u == 1
      units.append({'index': len(units), 'name': f'stage{s}_unit{u}', 'stage': s, 'unit': u,
                    'downsampling': first and stride != 1,
                    'changes_shape': first and (stride != 1 or channels != features)})
      channels = features
  assert [u['name'] for u in units] == models.unit_names(model)
  return units


def lesion_masks(units, draws: int, seed: int = 0, methods=('mask',)) -> list[dict]:
  """The deletions to evaluate: the intact net, each unit alone, and `draws` random sets of k
  units for every k. Each entry: method, kind ('intact', 'single', 'random'), k, draw, deleted
  (unit indices), unit (the single unit's index, else None)."""
  rng = np.random.default_rng(seed)
  out = [{'method': 'none', 'kind': 'intact', 'k': 0, 'draw': 0, 'deleted': [], 'unit': None}]
  for method in methods:
    # 'skip' can only take out units that keep the shape.
    eligible = [u['index'] for u in units if method == 'mask' or not u['changes_shape']]
    for j in eligible:
      out.append({'method': method, 'kind': 'single', 'k': 1, 'draw': 0, 'deleted': [j],
                  'unit': j})
    for k in range(1, len(eligible) + 1):
      for d in range(draws if k < len(eligible) else 1):  # k = all has one set.
        chosen = sorted(int(i) for i in rng.choice(eligible, size=k, replace=False))
        out.append({'method': method, 'kind': 'random', 'k': k, 'draw': d, 'deleted': chosen,
                    'unit': None})
  return out


def _skip_units(names, skip):
  """An interceptor that replaces unit j by the identity where skip[j] = 1 (same shape only)."""
  index = {name: j for j, name in enumerate(names)}

  def interceptor(next_fun, args, kwargs, context):
    if (context.method_name != '__call__' or not isinstance(context.module, ResidualUnit)
        or context.module.name not in index):
      return next_fun(*args, **kwargs)
    out = next_fun(*args, **kwargs)
    x = args[0]
    if x.shape != out.shape:
      return out
    s = skip[index[context.module.name]].astype(out.dtype)
    return s * x + (1 - s) * out
  return interceptor


def make_error_fn(model):
  """jit'd (variables, images, labels, mask, skip) -> number of wrong predictions (float)."""
  names = models.unit_names(model)

  @jax.jit
  def wrong(variables, images, labels, mask, skip):
    with nn.intercept_methods(_skip_units(names, skip)):
      logits = model.apply(variables, images, train=False, unit_mask=mask)
    return jnp.sum(jnp.argmax(logits, -1) != labels)
  return wrong


def eval_batches(config, split: str, batch_size: int = 500):
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.eval_split = split
  batches = []
  for batch in data.create_eval_iterator(data_config, global_batch_size=batch_size):
    keep = np.asarray(batch['mask'], bool)
    images = step_lib.model_input(jnp.asarray(batch['image'][keep]), config.data.mean,
                                  config.data.std)
    batches.append((images, jnp.asarray(batch['label'][keep])))
  return batches


def run_lesions(model, variables, batches, lesions, num_units) -> list[float]:
  """Test error (%) of each lesion in `lesions` (lesion_masks entries)."""
  wrong = make_error_fn(model)
  total = sum(int(y.shape[0]) for _, y in batches)
  errors = []
  for lesion in lesions:
    mask = np.ones(num_units, np.float32)
    skip = np.zeros(num_units, np.float32)
    if lesion['method'] == 'mask':
      mask[lesion['deleted']] = 0
    elif lesion['method'] == 'skip':
      skip[lesion['deleted']] = 1
    n_wrong = sum(float(wrong(variables, x, y, mask, skip)) for x, y in batches)
    errors.append(100.0 * n_wrong / total)
  return errors


def load(workdir: str) -> trained.Trained:
  """The newest checkpoint of the run in `workdir` (one of --from_workdir, or a run the study
  trained); a UserError names the workdir."""
  try:
    return trained.load(workdir, 'latest')
  except trained.RunReadError as e:
    raise trained.RunReadError(f'--from_workdir={workdir} {e}') from None


def net_config(dataset, net, budget: Budget, seed: int, overrides=()):
  placement, shortcut = NETS[net]
  config = study.base_config(dataset)
  config.seed = seed
  config.model.depth = budget.depth
  config.model.placement = placement
  config.model.shortcut = shortcut
  study.apply_budget(config, steps=budget.train_steps, batch_size=budget.batch_size,
                     eval_split=budget.eval_split, evals=4 if budget.paper_recipe else 2,
                     paper=budget.paper_recipe, unrolled=False,
                     warmup_steps=None if budget.paper_recipe else budget.train_steps // 10)
  study.override(config, overrides)
  return config


def _summarise(records):
  """Mean and standard deviation of the error per (net, seed, method, k) of the random draws."""
  groups = {}
  for r in records:
    if r['kind'] == 'random':
      groups.setdefault((r['net'], r['seed'], r['method'], r['k']), []).append(r['error'])
  return {key: (float(np.mean(v)), float(np.std(v)), len(v)) for key, v in groups.items()}


def record(lesion, error, units, **meta) -> dict:
  """One row of results.csv: a lesion_masks entry and its error, with units numbered from 1
  (as in the tables and plots; lesion_masks and unit_mask count from 0)."""
  unit = lesion['unit']
  return {**{k: meta[k] for k in ('net', 'depth', 'seed', 'checkpoint_step')},
          'method': lesion['method'], 'kind': lesion['kind'], 'k': lesion['k'],
          'draw': lesion['draw'], 'unit': None if unit is None else unit + 1,
          'unit_name': None if unit is None else units[unit]['name'],
          'downsampling': None if unit is None else units[unit]['downsampling'],
          'deleted': ' '.join(str(i + 1) for i in lesion['deleted']), 'error': error,
          'eval_split': meta['eval_split']}


def single_deletions(records, net, method, seed=0) -> tuple[list[int], list[float]]:
  """(1-based unit numbers, test errors) of the single-unit deletions of one net and method;
  the numbers are those of the tables, and of the downsampling marks in the plot."""
  rs = [r for r in records if r['net'] == net and r['kind'] == 'single'
        and r['method'] == method and r['seed'] == seed]
  return [r['unit'] for r in rs], [r['error'] for r in rs]


def _plot(records, nets, units_by_net, path_single, path_k, title):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  styles = {('residual', 'mask'): ('C0', 'o'), ('plain', 'mask'): ('C3', 's'),
            ('plain', 'skip'): ('C1', '^')}
  fig, axes = plt.subplots(1, len(nets), figsize=(6 * len(nets), 4.2), squeeze=False)
  for ax, net in zip(axes[0], nets):
    intact = [r['error'] for r in records if r['net'] == net and r['kind'] == 'intact']
    for method in ('mask', 'skip'):
      units, errors = single_deletions(records, net, method)
      if units:
        color, marker = styles.get((NETS_KIND[net], method), ('C2', 'x'))
        ax.plot(units, errors, marker=marker, ms=4, color=color, lw=1,
                label=f'{net}: delete one unit ({method})')
    for u in units_by_net[net]:
      if u['downsampling']:
        ax.axvline(u['index'] + 1, color='grey', ls=':', lw=1)
    if intact:
      ax.axhline(intact[0], color='k', ls='--', lw=1, label=f'{net}: intact')
    ax.set_xlabel('deleted unit (dotted: downsampling units)')
    ax.set_ylabel('test error (%)')
    ax.set_ylim(0, 100)
    ax.set_title(net)
    ax.legend(fontsize=7)
  fig.suptitle(f'{title}\nerror when one unit is deleted', fontsize=9)
  fig.tight_layout()
  plots.save(fig, path_single)

  summary = _summarise(records)
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for net in nets:
    for method in ('mask', 'skip'):
      ks = sorted(k for (n, s, m, k) in summary if n == net and s == 0 and m == method)
      if not ks:
        continue
      mean = [summary[(net, 0, method, k)][0] for k in ks]
      std = [summary[(net, 0, method, k)][1] for k in ks]
      color, marker = styles.get((NETS_KIND[net], method), ('C2', 'x'))
      ax.errorbar(ks, mean, yerr=std, marker=marker, ms=4, color=color, lw=1, capsize=2,
                  label=f'{net} ({method})')
  for k, err in PAPER['k_errors'].items():
    ax.plot([k], [err], 'k*', ms=9, label=f'Veit et al.: ~{err:.0f}% at k={k} of 54 (paper)')
  ax.set_xlabel('number of deleted units k (random draws: mean +- std)')
  ax.set_ylabel('test error (%)')
  ax.set_ylim(0, 100)
  ax.legend(fontsize=7)
  ax.set_title(f'{title}\nerror vs number of deleted units', fontsize=9)
  fig.tight_layout()
  plots.save(fig, path_k)


NETS_KIND = {}  # net label -> 'residual' or 'plain', for the plot styles


@cli.one_line_errors
def main(argv=None):
  cli.quiet_tpu_probe()  # JAX's harmless 'no TPU' line would read as a failure.
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  study.add_flags(parser, depths=False)
  parser.add_argument('--from_workdir', action='append', default=[],
                      help='a finished training run to lesion instead of training (repeat for '
                           'several, e.g. a residual and a plain run).')
  args = study.parse_args(parser, argv)
  budget = BUDGETS[args.budget]
  if args.steps:
    budget = dataclasses.replace(budget, train_steps=args.steps)
  seeds = args.seeds or (0,)
  results_dir = os.path.abspath(args.results_dir)
  started = time.perf_counter()

  if args.from_workdir:
    rows, targets = [], []
    for workdir in args.from_workdir:
      workdir = os.path.abspath(workdir)
      config = load(workdir).config
      net = 'plain' if config.model.shortcut == 'none' else 'residual'
      label = f'{net}:{os.path.basename(workdir.rstrip("/"))}'
      summary = {}
      if os.path.exists(os.path.join(workdir, 'summary.json')):
        with open(os.path.join(workdir, 'summary.json')) as f:
          summary = json.load(f)
      row = {'net': label, 'depth': config.model.depth, 'seed': config.seed,
             'test_error': (round(100 * (1 - summary['eval/accuracy']), 4)
                            if 'eval/accuracy' in summary else None),
             'steps': summary.get('step'), 'wall_s': round(summary.get('wall_s', 0.0), 1),
             'hardware': hardware.devices_line(), 'workdir': workdir,
             'status': 'ok (from --from_workdir)'}
      rows.append(row)
      targets.append((label, net, workdir, config.seed))
    os.makedirs(results_dir, exist_ok=True)
  else:
    runs = [runner.Run(name=f'{net}{budget.depth}_s{seed}{args.variant}',
                       config=net_config(args.dataset, net, budget, seed, args.overrides),
                       meta={'study': STUDY, 'net': net, 'depth': budget.depth})
            for net in NETS for seed in seeds]
    rows = runner.run_sweep(runs, results_dir, jobs=args.jobs)
    targets = [(run.meta['net'], run.meta['net'], row['workdir'], run.config.seed)
               for run, row in zip(runs, rows) if row['status'] == 'ok']

  records, units_by_net, nets = [], {}, []
  for label, kind, workdir, seed in targets:
    NETS_KIND[label] = kind
    run = load(workdir)
    config, variables = run.config, run.unrolled_variables()
    model = run.model.clone(scan=False, remat=False)  # The lesions address units by name.
    units = lesion_units(model)
    units_by_net[label] = units
    if label not in nets:
      nets.append(label)
    lesions = lesion_masks(units, budget.draws, seed=seed,
                           methods=('mask', 'skip') if kind == 'plain' else ('mask',))
    batches = eval_batches(config, budget.eval_split)
    t = time.perf_counter()
    errors = run_lesions(model, variables, batches, lesions, len(units))
    print(f'{STUDY}: {label} seed {seed}: {len(lesions)} lesions on '
          f'{sum(int(y.shape[0]) for _, y in batches)} images in {time.perf_counter() - t:.0f} s; '
          f'intact error {errors[0]:.2f}%', flush=True)
    records += [record(lesion, error, units, net=label, depth=config.model.depth, seed=seed,
                       checkpoint_step=run.step, eval_split=budget.eval_split)
                for lesion, error in zip(lesions, errors)]

  return write_results(results_dir, args.budget, rows, records, nets, units_by_net,
                       time.perf_counter() - started)


def write_results(results_dir, budget, rows, records, nets, units_by_net, wall_s):
  title = publish.plot_title(STUDY, budget, rows)
  files = ['lesion_single.png', 'lesion_k.png']
  _plot(records, nets, units_by_net, *(os.path.join(results_dir, f) for f in files), title)
  publish.write_csv(records, os.path.join(results_dir, 'results.csv'))
  files.append('results.csv')

  # Single deletions: one row per unit, the nets side by side (seed 0).
  single = {}
  for r in records:
    if r['kind'] == 'single' and r['seed'] == 0:
      single.setdefault(r['unit'], {})[f"{r['net']} ({r['method']})"] = r['error']
  max_units = max((len(u) for u in units_by_net.values()), default=0)
  single_rows, single_cols = [], ['unit', 'name', 'downsampling']
  for net in nets:
    single_cols += [c for c in (f'{net} (mask)', f'{net} (skip)')
                    if any(c in v for v in single.values())]
  for i in range(max_units):
    ref = next(units_by_net[n][i] for n in nets if i < len(units_by_net[n]))
    single_rows.append({'unit': i + 1, 'name': ref['name'],
                        'downsampling': 'yes' if ref['downsampling'] else '',
                        **{c: single.get(i + 1, {}).get(c) for c in single_cols[3:]}})
  intact_rows = [{'net': r['net'], 'seed': r['seed'], 'checkpoint_step': r['checkpoint_step'],
                  'intact error (lesion eval)': r['error'], 'eval_split': r['eval_split']}
                 for r in records if r['kind'] == 'intact']

  summary = _summarise(records)
  k_rows, k_cols = [], ['k']
  for net in nets:
    for method in ('mask', 'skip'):
      if any(n == net and m == method for n, _, m, _ in summary):
        k_cols.append(f'{net} ({method}) mean +- std')
  k_cols.append('paper (Veit et al., pre-act ResNet-110 of 54 units)')
  for k in sorted({k for *_, k in summary}):
    row = {'k': k}
    for net in nets:
      for method in ('mask', 'skip'):
        s = summary.get((net, 0, method, k))
        if s:
          row[f'{net} ({method}) mean +- std'] = f'{s[0]:.2f} +- {s[1]:.2f} (n={s[2]})'
    row[k_cols[-1]] = f"~{PAPER['k_errors'][k]:.0f}" if k in PAPER['k_errors'] else None
    k_rows.append(row)

  headline = publish.markdown_table(headline_rows(records, nets, units_by_net), [
      'net', 'method', 'units', 'intact error %', 'one unit (not downsampling): median %',
      'one unit (not downsampling): worst %', 'one downsampling unit: worst %',
      'k = half the units: mean %'])
  body = [
      f'**What this budget shows.** {WHAT_IT_SHOWS[budget]}', '',
      f"Lesions at test time on `{records[0]['eval_split'] if records else '-'}` (error in %). "
      '`mask`: the unit\'s residual branch multiplied by 0 through the model\'s `unit_mask` '
      '(the shortcut kept; in a plain net, which has none, this zeroes the unit\'s output). '
      '`skip`: plain nets only, the unit replaced by the identity, possible only where it keeps '
      'the shape. Paper: ' + PAPER['source'] + '; ' + PAPER['single'] + '.', '',
      '## Summary (seed 0)', '', headline, '',
      '## Training runs', '',
      publish.markdown_table(rows, ['net', 'depth', 'seed', 'steps', 'train_error', 'test_error',
                                    'eval_examples', 'wall_s', 'status']),
      '', publish.markdown_table(intact_rows, ['net', 'seed', 'checkpoint_step',
                                               'intact error (lesion eval)', 'eval_split']),
      '', '## Deleting one unit (seed 0)', '',
      publish.markdown_table(single_rows, single_cols),
      '', '## Deleting k random units (seed 0)', '',
      publish.markdown_table(k_rows, k_cols),
      '', 'Plots: [lesion_single.png](lesion_single.png), [lesion_k.png](lesion_k.png). '
      'Every lesion, every draw: results.csv.', '',
      '## Deviations from the paper', '', *[f'- {d}' for d in DEVIATIONS], '']
  return publish.publish(results_dir, study=STUDY, title='Lesion study (Veit et al. 2016)',
                         budget=budget, rows=rows, files=files, body=body,
                         provenance=publish.Provenance.now(wall_s),
                         notes=WHAT_IT_SHOWS[budget], headline=headline)


def headline_rows(records, nets, units_by_net) -> list[dict]:
  """Per net and method (seed 0): the intact error, single deletions split by downsampling, and
  the mean error with half of the units deleted at random."""
  out = []
  for net in nets:
    intact = next((r['error'] for r in records
                   if r['net'] == net and r['kind'] == 'intact' and r['seed'] == 0), None)
    for method in ('mask', 'skip'):
      mine = [r for r in records if r['net'] == net and r['method'] == method and r['seed'] == 0]
      if not mine:
        continue
      single = [r for r in mine if r['kind'] == 'single']
      plain_units = [r['error'] for r in single if not r['downsampling']]
      down_units = [r['error'] for r in single if r['downsampling']]
      half = len(units_by_net[net]) // 2
      at_half = [r['error'] for r in mine if r['kind'] == 'random' and r['k'] == half]
      out.append({
          'net': net, 'method': method, 'units': len(units_by_net[net]), 'intact error %': intact,
          'one unit (not downsampling): median %': (float(np.median(plain_units))
                                                    if plain_units else None),
          'one unit (not downsampling): worst %': max(plain_units, default=None),
          'one downsampling unit: worst %': max(down_units, default=None),
          'k = half the units: mean %': (f'{np.mean(at_half):.2f} (k={half})' if at_half
                                         else None)})
  return out


if __name__ == '__main__':
  sys.exit(main())
