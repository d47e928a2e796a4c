"""Lesion study of Veit et al. 2016 ("Residual Networks Behave Like Ensembles", arXiv 1605.06431).

  python -m experiments.lesion --budget cpu --results_dir results/lesion-cpu
  python -m experiments.lesion --budget cpu --results_dir DIR --from_workdir RUN1 --from_workdir RUN2

Trains (through experiments/runner.py) a pre-activation residual net with projection (B)
shortcuts and a plain net of the same depth and widths, seed for seed, or takes finished runs
(--from_workdir, any number), then deletes units from the trained weights at test time and
records the test error:

* each unit alone: a unit that keeps its input's shape is skipped, replaced by the identity (an
  interceptor around ResidualUnit; no change to the model). For a pre-activation unit with an
  identity shortcut that is exactly what zeroing its residual branch gives, and in a plain net it
  is what Veit et al. do to a VGG layer: take it out. The same method in both nets, so their
  errors compare. A unit that changes the shape (the downsampling units) cannot be skipped:
  in the residual net its branch is masked through the model's `unit_mask`, its projection
  shortcut kept, and reported apart; in the plain net it has no shortcut to keep, so it is not
  deleted (masking it would zero the whole feature map: chance by construction);
* k random same-shape units for every k, `draws` random sets each: the error curve over k.

The claim is computed from the single deletions, paired by unit position (see `claims`).
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import hypotheses, plots, probes, publish, runner, study
from benchmarks import hardware
from resnet_jax import cli, data, models
from resnet_jax.data import datasets
from resnet_jax.errors import UserError
from resnet_jax.models.units import ResidualUnit
from resnet_jax.train import step as step_lib
from resnet_jax.train import trained
from resnet_jax.train import workdir as workdir_lib

STUDY = 'lesion'
NETS = {  # label -> (placement, shortcut): Veit et al. lesion a pre-activation ResNet-110.
    'residual': ('full_preact', 'B'),
    'plain': ('original', 'none'),
}
# Veit et al. 2016, read from their Fig. 3 and 5 (the paper's numbers, for reference only).
PAPER = {
    'source': 'Veit et al. 2016 (arXiv 1605.06431), pre-act ResNet-110 (54 units), CIFAR-10',
    'single': 'deleting one non-downsampling unit barely changes the error; a downsampling unit '
              'costs modestly; deleting any layer of a VGG-style plain net gives chance (90%)',
    'k_errors': {10: 20.0},  # about 20% error with 10 of 54 units deleted (their Fig. 5a)
}


@dataclasses.dataclass(frozen=True)
class Budget:
  depth: int
  seeds: int             # trained pairs of nets (residual and plain of one seed)
  steps: int
  batch_size: int
  warmup_steps: int | None  # linear, the same for both nets; None: the 2015 recipe's own
  #                           (none below 110 layers, 400 steps at 0.01 from 110 on)
  eval_split: str        # the training runs' evaluations, and the lesions'
  evals: int
  draws: int             # random sets of units per k
  paper: bool = False


BUDGETS = {
    # The machinery only: ResNet-20 (9 units) trained 30 steps, near chance.
    'smoke': Budget(depth=20, seeds=1, steps=30, batch_size=64, warmup_steps=3,
                    eval_split='test[:500]', evals=1, draws=2),
    # Pre-act ResNet-20 (9 units, 7 of them same-shape) and plain-20, 3,000 steps of batch 128
    # with augmentation (7.7 epochs; the 2015 ResNet-20 reached 19.95% test error so,
    # docs/results.md), lesioned on 2,000 test images, 5 draws per k. ResNet-32 would take
    # about 80 min for the two nets on 2 cores.
    'cpu': Budget(depth=20, seeds=1, steps=3000, batch_size=128, warmup_steps=None,
                  eval_split='test[:2000]', evals=3, draws=5),
    # The paper's net: pre-act ResNet-110 (54 units), the full 2016 recipe, the whole test set.
    'paper': Budget(depth=110, seeds=1, steps=64_000, batch_size=128, warmup_steps=None,
                    eval_split='test', evals=32, draws=10, paper=True),
}
DEVIATIONS = [
    *study.COMMON_DEVIATIONS,
    'Veit et al. compare with a VGG-style plain net; here the plain net is the residual net '
    "without its shortcuts (shortcut 'none', the 2015 unit), of the same depth and widths.",
    'smoke and cpu budgets train with a shortened schedule (lr 0.1 divided by 10 at 50% and 75% '
    'of the steps; the smoke budget after a short linear warm-up), plain momentum SGD, no decay '
    'on BN, and lesion on part of the test set.',
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


def lesion_masks(units, draws: int, seed: int = 0, mask_shape_changing: bool = False
                 ) -> list[dict]:
  """The deletions to evaluate: the intact net; each unit that keeps its input's shape alone,
  skipped (replaced by the identity); `draws` random sets of k such units for every k, skipped;
  and, with mask_shape_changing, each unit that changes the shape alone, its residual branch
  masked (a residual net's downsampling unit: its projection shortcut is kept; a plain net has
  none, so masking would zero the whole map and is not done). Each entry: method ('none',
  'skip', 'mask'), kind ('intact', 'single', 'random'), k, draw, deleted (unit indices), unit
  (the single unit's index, else None)."""
  rng = np.random.default_rng(seed)
  out = [{'method': 'none', 'kind': 'intact', 'k': 0, 'draw': 0, 'deleted': [], 'unit': None}]
  same = [u['index'] for u in units if not u['changes_shape']]
  for u in units:
    if not u['changes_shape'] or mask_shape_changing:
      out.append({'method': 'mask' if u['changes_shape'] else 'skip', 'kind': 'single', 'k': 1,
                  'draw': 0, 'deleted': [u['index']], 'unit': u['index']})
  for k in range(1, len(same) + 1):
    for d in range(draws if k < len(same) else 1):  # k = all has one set.
      chosen = sorted(int(i) for i in rng.choice(same, size=k, replace=False))
      out.append({'method': 'skip', 'kind': 'random', 'k': k, 'draw': d, 'deleted': chosen,
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


def net_config(dataset: str, net: str, budget: Budget, seed: int, overrides=()):
  placement, shortcut = NETS[net]
  config = study.base_config(dataset, f'depth={budget.depth},placement={placement},recipe=2015')
  config.model.shortcut = shortcut
  config.seed = seed
  study.apply_budget(config, steps=budget.steps, batch_size=budget.batch_size,
                     eval_split=budget.eval_split, evals=budget.evals, paper=budget.paper,
                     warmup_steps=budget.warmup_steps, unrolled=not budget.paper)
  if budget.warmup_steps:
    config.warmup_mode = 'linear'
  study.override(config, overrides)
  return config


# "Barely changes", as a number: a single same-shape deletion raises the residual net's error by
# less than this (points). Veit et al.'s Fig. 3 shows rises of about a point for ResNet-110.
BARELY = 5.0


def claims(depth: int) -> list[hypotheses.Hypothesis]:
  return [
      hypotheses.Hypothesis(
          f'plain_breaks_more_than_residual_{depth}',
          'Veit et al. 2016 (Sec. 4.1, Fig. 3): deleting a single layer of a plain (VGG) net '
          'drops it to chance, unlike deleting an individual non-downsampling unit of a '
          f'residual net: the plain net is hurt more ({depth} layers)',
          'plain net\'s error increase when the unit is skipped, minus the residual net\'s when '
          'the unit at the same position is skipped (points), per same-shape unit position, '
          'mean over the seeds', 'greater', replicate='unit position'),
      hypotheses.Hypothesis(
          f'residual_barely_changes_{depth}',
          'Veit et al. 2016 (Sec. 4.1, Fig. 3): deleting an individual non-downsampling unit of '
          f'a residual net barely changes its error ({depth} layers; "barely": a rise below '
          f'{BARELY:g} points)',
          f'residual net\'s error increase when the unit is skipped, minus {BARELY:g} (points), '
          'per same-shape unit position, mean over the seeds', 'less',
          replicate='unit position'),
  ]


def verdicts(records: list[dict]) -> list[dict]:
  """The claims per depth, from the single deletions of the same-shape units of the nets that
  were trained together (the same seeds), paired by unit position."""
  checked = []
  for depth in sorted({r['depth'] for r in records}):
    mine = [r for r in records if r['depth'] == depth and r['net'] in NETS]
    seeds = sorted({r['seed'] for r in mine if r['net'] == 'residual'}
                   & {r['seed'] for r in mine if r['net'] == 'plain'})
    if not seeds:
      continue
    intact = {(r['net'], r['seed']): r['error'] for r in mine if r['kind'] == 'intact'}
    rise = {(r['net'], r['seed'], r['unit']): r['error'] - intact[(r['net'], r['seed'])]
            for r in mine if r['kind'] == 'single' and r['method'] == 'skip'}
    units = sorted({u for (_, _, u) in rise})
    nan = float('nan')
    mean_rise = lambda net, u: statistics.mean(rise.get((net, s, u), nan) for s in seeds)
    contrast, barely = claims(depth)
    checked.append(hypotheses.verdict(
        contrast, [mean_rise('plain', u) - mean_rise('residual', u) for u in units]))
    checked.append(hypotheses.verdict(barely, [mean_rise('residual', u) - BARELY for u in units]))
  return checked


def measure(targets, budget: Budget) -> tuple[list[dict], dict]:
  """The lesion records of every (label, workdir, seed) in `targets` and each net's units."""
  records, units_by_net = [], {}
  for label, workdir, seed in targets:
    run = load(workdir)
    config, variables = run.config, run.unrolled_variables()
    model = run.model.clone(scan=False, remat=False)  # The lesions address units by name.
    units = lesion_units(model)
    units_by_net[label] = units
    lesions = lesion_masks(units, budget.draws, seed=seed,
                           mask_shape_changing=config.model.shortcut != 'none')
    batches = eval_batches(config, budget.eval_split)
    started = time.perf_counter()
    errors = run_lesions(model, variables, batches, lesions, len(units))
    print(f'{STUDY}: {label} seed {seed}: {len(lesions)} lesions on '
          f'{sum(int(y.shape[0]) for _, y in batches)} images in '
          f'{time.perf_counter() - started:.0f} s; intact error {errors[0]:.2f}%', flush=True)
    records += [record(lesion, error, units, net=label, depth=config.model.depth, seed=seed,
                       checkpoint_step=run.step, eval_split=budget.eval_split)
                for lesion, error in zip(lesions, errors)]
  return records, units_by_net


def _summarise(records):
  """Mean, standard deviation and count of the error per (net, seed, k) of the random draws."""
  groups = {}
  for r in records:
    if r['kind'] == 'random':
      groups.setdefault((r['net'], r['seed'], r['k']), []).append(r['error'])
  return {key: (float(np.mean(v)), float(np.std(v)), len(v)) for key, v in groups.items()}


def record(lesion, error, units, **meta) -> dict:
  """One lesion's row: a lesion_masks entry and its error, with units numbered from 1 (as in the
  tables and plots; lesion_masks and unit_mask count from 0)."""
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
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  colours = {net: f'C{i}' for i, net in enumerate(nets)}
  fig, ax = plt.subplots(figsize=(9.0, 3.6))
  for net in nets:
    intact = next((r['error'] for r in records if r['net'] == net and r['kind'] == 'intact'
                   and r['seed'] == 0), None)
    for method, marker in (('skip', 'o'), ('mask', 'x')):
      units, errors = single_deletions(records, net, method)
      if units:
        ax.plot(units, errors, marker=marker, ms=5, color=colours[net],
                lw=1 if method == 'skip' else 0,
                label=f'{net}: one unit ' + ('skipped' if method == 'skip'
                                             else 'masked (downsampling)'))
    if intact is not None:
      ax.axhline(intact, color=colours[net], ls='--', lw=1, label=f'{net}: intact')
  for u in next(iter(units_by_net.values()), []):
    if u['downsampling']:
      ax.axvline(u['index'] + 1, color='grey', ls=':', lw=1)
  ax.set_xlabel('deleted unit (dotted: downsampling units)')
  ax.set_ylabel('test error (%)')
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title(f'{title}\nerror when one unit is deleted (seed 0)', fontsize=8)
  fig.tight_layout()
  plots.save(fig, path_single, dpi=100)

  summary = _summarise(records)
  fig, ax = plt.subplots(figsize=(9.0, 3.6))
  for net in nets:
    ks = sorted(k for (n, s, k) in summary if n == net and s == 0)
    if ks:
      mean = np.array([summary[(net, 0, k)][0] for k in ks])
      low = [min(r['error'] for r in records if r['net'] == net and r['seed'] == 0
                 and r['kind'] == 'random' and r['k'] == k) for k in ks]
      high = [max(r['error'] for r in records if r['net'] == net and r['seed'] == 0
                  and r['kind'] == 'random' and r['k'] == k) for k in ks]
      ax.plot(ks, mean, marker='o', ms=4, color=colours[net], lw=1,
              label=f'{net}: k random same-shape units skipped (mean of the draws)')
      ax.fill_between(ks, low, high, color=colours[net], alpha=0.15, linewidth=0)
  for k, err in PAPER['k_errors'].items():
    ax.plot([k], [err], 'k*', ms=9, label=f'Veit et al.: ~{err:.0f}% at k={k} of 54 (paper)')
  ax.set_xlabel('number of deleted units k (band: lowest-highest draw)')
  ax.set_ylabel('test error (%)')
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title(f'{title}\nerror vs number of deleted units (seed 0)', fontsize=8)
  fig.tight_layout()
  plots.save(fig, path_k, dpi=100)


def headline_rows(records, nets) -> list[dict]:
  """Per net (seed 0): the intact error, the same-shape single deletions, the downsampling
  units apart, and the mean error with half of the same-shape units deleted at random."""
  out = []
  for net in nets:
    mine = [r for r in records if r['net'] == net and r['seed'] == 0]
    intact = next((r['error'] for r in mine if r['kind'] == 'intact'), None)
    skipped = [r['error'] for r in mine if r['kind'] == 'single' and r['method'] == 'skip']
    down = [r['error'] for r in mine if r['kind'] == 'single' and r['method'] == 'mask']
    ks = sorted({r['k'] for r in mine if r['kind'] == 'random'})
    half = ks[len(ks) // 2 - 1] if ks else None
    at_half = [r['error'] for r in mine if r['kind'] == 'random' and r['k'] == half]
    out.append({
        'net': net, 'intact error %': intact,
        'one same-shape unit skipped: median %': (float(np.median(skipped)) if skipped
                                                  else None),
        'worst %': max(skipped, default=None),
        'one downsampling unit masked %': ', '.join(f'{e:.2f}' for e in down) or 'not deletable',
        'half the same-shape units skipped: mean %': (f'{np.mean(at_half):.2f} (k={half})'
                                                      if at_half else None)})
  return out


def analyse(out: str, budget_name: str, rows: list[dict], records: list[dict],
            units_by_net: dict, provenance: publish.Provenance) -> int:
  """Verdicts, tables, plots, results.md and results.json from the training rows and the lesion
  records: what the study writes at its end, and what `republish` recomputes from committed
  files."""
  nets = list(units_by_net)
  title = publish.plot_title(STUDY, budget_name, rows)
  publish.write_csv(publish.portable(rows, out), os.path.join(out, 'results.csv'))
  probes.write_jsonl(os.path.join(out, 'lesions.jsonl'), records)
  workdir_lib.write_atomic(os.path.join(out, 'units.json'), json.dumps(units_by_net, indent=1))
  publish.write_csv(records, os.path.join(out, 'lesions.csv'))
  figures = ['lesion_single.png', 'lesion_k.png']
  _plot(records, nets, units_by_net, *(os.path.join(out, f) for f in figures), title)
  checked = verdicts(records)
  for r in checked:
    print(f'{r["name"]}: {hypotheses.describe(r)}', flush=True)

  single = {}
  for r in records:
    if r['kind'] == 'single' and r['seed'] == 0:
      single.setdefault(r['unit'], {})[f"{r['net']} ({r['method']})"] = r['error']
  columns = ['unit', 'name', 'downsampling'] + [
      c for net in nets for c in (f'{net} (skip)', f'{net} (mask)')
      if any(c in v for v in single.values())]
  reference = max(units_by_net.values(), key=len) if units_by_net else []
  single_rows = [{'unit': u['index'] + 1, 'name': u['name'],
                  'downsampling': 'yes' if u['downsampling'] else '',
                  **{c: single.get(u['index'] + 1, {}).get(c) for c in columns[3:]}}
                 for u in reference]
  summary = _summarise(records)
  k_columns = ['k'] + [f'{net}: mean +- std' for net in nets]
  k_rows = [{'k': k, **{f'{net}: mean +- std': (f'{summary[(net, 0, k)][0]:.2f} +- '
                                                 f'{summary[(net, 0, k)][1]:.2f} '
                                                 f'(n={summary[(net, 0, k)][2]})'
                                                 if (net, 0, k) in summary else None)
                        for net in nets}}
            for k in sorted({k for *_, k in summary})]
  headline = publish.markdown_table(headline_rows(records, nets), [
      'net', 'intact error %', 'one same-shape unit skipped: median %', 'worst %',
      'one downsampling unit masked %', 'half the same-shape units skipped: mean %'])
  body = [
      f"Lesions at test time on `{records[0]['eval_split'] if records else '-'}` (error in %). "
      '`skip`: the unit replaced by the identity (units that keep the shape, in both nets); '
      '`mask`: the residual branch of a downsampling unit zeroed, its projection shortcut kept '
      '(residual net only). Paper: ' + PAPER['source'] + '; ' + PAPER['single'] + '.', '',
      '## Summary (seed 0)', '', headline, '',
      '## Training runs', '',
      publish.markdown_table(rows, ['net', 'depth', 'seed', 'steps', 'train_error',
                                    'test_error', 'eval_examples', 'wall_s', 'status']), '',
      '## Deleting one unit (seed 0)', '', publish.markdown_table(single_rows, columns), '',
      '## Deleting k random same-shape units (seed 0)', '',
      publish.markdown_table(k_rows, k_columns), '',
      '## Plots', '', *[f'![{f}]({f})' for f in figures], '',
      'Every lesion, every draw: lesions.csv.', '',
      '## Deviations from the paper', '', *[f'- {d}' for d in DEVIATIONS], '']
  return publish.publish(out, study=STUDY, title='Lesion study (Veit et al. 2016)',
                         budget=budget_name, rows=rows,
                         files=['results.csv', 'lesions.jsonl', 'lesions.csv', 'units.json',
                                *figures],
                         provenance=provenance, body=body, notes='', headline=headline,
                         hypotheses=checked)


def republish(out: str) -> int:
  """`analyse` again from the folder's results.json, lesions.jsonl and units.json alone."""
  manifest, rows = publish.read_manifest(out)
  with open(os.path.join(out, 'units.json')) as f:
    units_by_net = json.load(f)
  return analyse(out, manifest['budget'], rows,
                 probes.read_jsonl(os.path.join(out, 'lesions.jsonl')), units_by_net,
                 publish.Provenance.recorded(manifest))


def _from_workdirs(workdirs, budget_name: str, split: str) -> tuple[list[dict], list[tuple]]:
  """Training rows and lesion targets of finished runs given with --from_workdir; a run whose
  dataset has no `split` (the budget's, which the lesions are measured on) is a UserError."""
  rows, targets = [], []
  for workdir in workdirs:
    workdir = os.path.abspath(workdir)
    config = load(workdir).config
    try:
      datasets.split_size(config.data.dataset, split)
    except UserError as e:
      raise UserError(f'--from_workdir={workdir}: the {budget_name} budget measures the lesions '
                      f'on {split!r} of the run\'s dataset, which it cannot give ({e})') from None
    net = 'plain' if config.model.shortcut == 'none' else 'residual'
    label = f'{net}:{os.path.basename(workdir.rstrip("/"))}'
    summary = {}
    if os.path.exists(os.path.join(workdir, workdir_lib.SUMMARY_FILE)):
      with open(os.path.join(workdir, workdir_lib.SUMMARY_FILE)) as f:
        summary = json.load(f)
    rows.append({'net': label, 'depth': config.model.depth, 'seed': config.seed,
                 'test_error': (round(100 * (1 - summary['eval/accuracy']), 4)
                                if 'eval/accuracy' in summary else None),
                 'steps': summary.get('step'), 'wall_s': round(summary.get('wall_s', 0.0), 1),
                 'hardware': hardware.devices_line(), 'workdir': workdir,
                 'status': 'ok (from --from_workdir)'})
    targets.append((label, workdir, config.seed))
  return rows, targets


@cli.one_line_errors
def main(argv=None):
  cli.quiet_tpu_probe()  # JAX's harmless 'no TPU' line would read as a failure.
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  study.add_flags(parser, depths=False)
  parser.add_argument('--from_workdir', action='append', default=[], type=study.path,
                      help='a finished training run to lesion instead of training (repeat for '
                           'several, e.g. a residual and a plain run).')
  args = study.parse_args(parser, argv)
  budget = BUDGETS[args.budget]
  if args.steps:
    budget = dataclasses.replace(
        budget, steps=args.steps,
        warmup_steps=args.steps // 20 if budget.warmup_steps else budget.warmup_steps)
  started = time.perf_counter()
  runs = [runner.Run(name=f'{net}-d{budget.depth}-s{seed}{args.variant}',
                     config=net_config(args.dataset, net, budget, seed, args.overrides),
                     meta={'dataset': args.dataset, 'net': net, 'depth': budget.depth,
                           'seed': seed})
          for net in NETS for seed in (args.seeds or range(budget.seeds))]
  # Before the results dir is made: a bad config or run writes nothing.
  if args.from_workdir:
    rows, targets = _from_workdirs(args.from_workdir, args.budget, budget.eval_split)
  else:
    study.check_runs(runs)
    if args.print_commands:
      return study.print_commands(runs, args)
  with study.results_lock(args.results_dir):
    if not args.from_workdir:
      rows = study.sweep(runs, args)
      targets = [(row['net'], row['workdir'], row['seed']) for row in rows
                 if row['status'] == 'ok']
    records, units_by_net = measure(targets, budget)
    return analyse(args.results_dir, args.budget, rows, records, units_by_net,
                   publish.Provenance.now(time.perf_counter() - started))


if __name__ == '__main__':
  sys.exit(main())
