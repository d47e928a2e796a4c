"""Gradient flow through plain, original and pre-activation nets, unit by unit.

  python -m experiments.gradient_flow --budget cpu --results_dir results/gradient_flow-cpu

He et al. 2015 (Sec. 4.1) argue that the plain nets' optimisation difficulty "is unlikely to be
caused by vanishing gradients": the plain nets use BN, and "we also verify that the backward
propagated gradients exhibit healthy norms with BN". Identity Mappings (He et al. 2016, Sec. 3,
Eq. 5) argues that with identity shortcuts and no activation after the addition the gradient of
a lower unit holds that of any higher unit unchanged, plus more. This study measures both, per
residual unit (experiments/probes.py), on one fixed batch of real training images (no
augmentation, train-mode BN, the trainer's mean cross-entropy without weight decay):

* |dL/dx| at each unit's input, the stream entering it; within a stage the inputs of its second
  and last unit have one shape, so their ratio (gradient ratio: above 1 the gradient grows towards
  the input, below 1 it attenuates) mixes in no change of width or resolution;
* |dL/dW| / |W| of each unit's parameters, the relative step SGD gives it: the update ratio is that
  of the stage's second unit over its last.

Nets: plain (shortcut 'none', the 2015 unit), original (option A for basic, B for bottleneck
nets) and full pre-activation. Two parts, paired by seed:

1. At initialisation, no training: every net x depth x init seed.
2. After a short training, for the nets that trained: each trained run is measured at its own
   initialisation and at its last checkpoint. A net whose training error is still at or above
   TRAINED_BELOW at the end has not started to train; it is flagged and no verdict uses it.

Budgets:
  smoke: init: depth 20, 1 seed, batch 16; training: depth 20, 1 seed, 20 steps of batch 32 on
    the first 256 training images: checks the machinery (verdicts inconclusive).
  cpu: init: depths 20, 56 and 110 x 8 seeds, batch 64; training: the plain and pre-activation
    nets of depths 20 and 56, 5 paired seeds, 200 steps of batch 64 (lr 0.05: the papers' 0.1 at batch 128, scaled linearly) on the
    first 1,280 training images without augmentation, linear warm-up over the first 50 steps,
    lr /10 at 50% and 75% of the steps; the training error is that of the whole subset.
  paper: init as cpu; training: depths 20, 56 and 110, the 2015 recipe on the whole training set
    (batch 128, lr 0.1; fb.resnet.torch's Nesterov momentum and decay on BN), 16k steps (the lr
    is still 0.1: its first decay is at 32k); the training error is that of the last log window.

Writes DIR/results.md (the claims tested and their verdicts, the init table, every trained run
with its flag), init.jsonl and trained.jsonl (every measurement, per unit), init.csv, trained.csv,
results.csv (the training runs), plots and results.json. init_log.jsonl keeps every init
measurement made in DIR, so a rerun resumes.
"""

import argparse
import dataclasses
import math
import os
import sys
import time

import numpy as np

from experiments import hypotheses, plots, probes, publish, runner, study
from benchmarks import hardware
from resnet_jax import cli

STUDY = 'gradient_flow'
NETS = {  # label -> (placement, shortcut); shortcut None is the family's default (A basic, B bottleneck)
    'plain': ('original', 'none'),
    'original': ('original', None),
    'preact': ('full_preact', None),
}
STAGES = (1, 2, 3)
INIT_RATIOS = (('grad', 'gradient ratio'), ('update', 'update ratio'))
# He et al. 2015 (Sec. 4.2) take a training error below 80% as the sign that training has
# started converging; a net at or above it at the end is flagged as not trained.
TRAINED_BELOW = 80.0


@dataclasses.dataclass(frozen=True)
class Budget:
  init_depths: tuple[int, ...]
  init_seeds: int
  measure_batch: int              # images in the fixed measurement batch
  train_depths: tuple[int, ...]
  train_nets: tuple[str, ...]     # the nets trained (every net is measured at init)
  seeds: int
  steps: int
  batch_size: int
  learning_rate: float
  warmup_steps: int | None        # linear, the same for every net; None: the recipe's own
  subset: str | None              # a fixed training subset, trained without augmentation
  evals: int
  paper: bool = False


BUDGETS = {
    'smoke': Budget(init_depths=(20,), init_seeds=1, measure_batch=16, train_depths=(20,),
                    train_nets=tuple(NETS), seeds=1, steps=20, batch_size=32,
                    learning_rate=0.025, warmup_steps=5, subset='train[:256]', evals=1),
    # The claims after training are about the plain and the pre-activation nets: the original
    # ones are measured at init only, which keeps the budget within an hour on 2 cores.
    'cpu': Budget(init_depths=(20, 56, 110), init_seeds=8, measure_batch=64,
                  train_depths=(20, 56), train_nets=('plain', 'preact'), seeds=5, steps=200,
                  batch_size=64, learning_rate=0.05, warmup_steps=50, subset='train[:1280]',
                  evals=2),
    'paper': Budget(init_depths=(20, 56, 110), init_seeds=8, measure_batch=64,
                    train_depths=(20, 56, 110), train_nets=tuple(NETS), seeds=5, steps=16_000,
                    batch_size=128, learning_rate=0.1, warmup_steps=None, subset=None, evals=8,
                    paper=True),
}
DEVIATIONS = [
    *study.COMMON_DEVIATIONS,
    'The papers give no numbers for these norms, so there is no paper column.',
    'The init part measures the scanned layout of the nets (config.model.scan=True): the same '
    'distributions, other draws than the unrolled layout of the same seed; the trained runs '
    'are measured in their own (unrolled) layout.',
    'smoke and cpu budgets train on a fixed subset of the training set without augmentation, '
    'for a shortened schedule (a linear warm-up for every net, lr /10 at 50% and 75% of the '
    'steps), plain momentum SGD and no decay on BN; the lr is 0.1 scaled by batch/128.',
]


def net_config(dataset: str, depth: int, net: str):
  placement, shortcut = NETS[net]
  config = study.base_config(dataset, f'depth={depth},placement={placement},recipe=2015')
  config.model.shortcut = shortcut
  return config


def build_runs(budget: Budget, dataset: str, seeds=None, *, depths=None, overrides=(),
               variant: str = '') -> list[runner.Run]:
  """The training runs; seeds, depths and --config overrides replace the budget's."""
  runs = []
  for depth in depths or budget.train_depths:
    for net in budget.train_nets:
      for seed in range(budget.seeds) if seeds is None else seeds:
        config = net_config(dataset, depth, net)
        config.seed = seed
        study.apply_budget(config, steps=budget.steps, batch_size=budget.batch_size,
                           eval_split=budget.subset or 'test', evals=budget.evals,
                           paper=budget.paper, warmup_steps=budget.warmup_steps,
                           unrolled=not budget.paper)
        config.learning_rate = budget.learning_rate
        if budget.warmup_steps:
          config.warmup_mode = 'linear'
        if budget.subset:
          config.data.train_split = budget.subset
          config.data.augment = 'none'
        config.keep_checkpoints = budget.evals + 1  # The first and the last are measured.
        study.override(config, overrides)
        runs.append(runner.Run(
            name=f'{net}-d{depth}-s{seed}{variant}', config=config,
            meta={'dataset': dataset, 'net': net, 'depth': depth, 'seed': seed,
                  'subset': budget.subset or 'train'}))
  return runs


def has_trained(row: dict) -> bool:
  return study.train_error(row) < TRAINED_BELOW  # NaN (failed) compares False.


def measure_init(budget: Budget, dataset: str, seeds, overrides, variant: str, out: str):
  arms = []
  for depth in budget.init_depths:
    for net in NETS:
      config = net_config(dataset, depth, net)
      study.override(config, overrides)
      arms.append(({'net': net, 'depth': depth}, config))
  return probes.measure_at_init(arms, seeds, budget.measure_batch, variant,
                                os.path.join(out, 'init_log.jsonl'), STUDY)


def measure_trained(rows: list[dict], measure_batch: int) -> list[dict]:
  """Each finished run measured at its own initialisation (step 0) and at its last checkpoint,
  on the first `measure_batch` images of its training split: one record per (run, step)."""
  from resnet_jax.train import run as run_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax.train import trained  # pylint: disable=g-import-not-at-top
  records, compiled, batch = [], {}, None
  for row in rows:
    if row['status'] != 'ok':
      continue
    last = trained.load(row['workdir'], 'latest')
    prepared = run_lib.prepare(last.config, open_data=False)
    if batch is None:
      batch = probes.fixed_batch(prepared.config, measure_batch)
    key = (row['net'], row['depth'])
    if key not in compiled:  # One compilation per net and depth, reused across seeds.
      compiled[key] = (probes.unit_norms_fn(last.model), probes.stage_spans(last.model))
    fn, spans = compiled[key]
    for step, variables in ((0, run_lib.initial_variables(prepared, last.model)),
                            (last.step, last.variables)):
      started = time.perf_counter()
      measured = probes.unit_norms(last.model, variables, *batch, fn)
      record = {'run': os.path.basename(row['workdir']), 'net': row['net'], 'depth': row['depth'],
                'seed': row['seed'], 'step': step, 'batch': measure_batch,
                'train_error': study.train_error(row), 'trained': has_trained(row),
                'loss': measured['loss'], **probes.stage_ratios(measured, spans),
                **{k: [float(f'{v:.5g}') for v in measured[k]]
                   for k in ('input', 'activation', 'param', 'weight')},
                'wall_s': round(time.perf_counter() - started, 2),
                'hardware': hardware.devices_line()}
      records.append(record)
      print(f"{STUDY}: {record['run']} step {step}: loss {record['loss']:.3f}, gradient ratio "
            'per stage ' + ', '.join(f"{record[f'grad_{s}']:.3g}" for s in STAGES
                                     if f'grad_{s}' in record), flush=True)
  return records


def claims(depth: int, where: str) -> list[hypotheses.Hypothesis]:
  """The claims tested at one depth; where: 'init' or 'trained'."""
  when = 'at initialisation' if where == 'init' else 'after training, nets that trained'
  ratio = 'log same-shape gradient ratio, mean over the stages, per seed'
  return [
      hypotheses.Hypothesis(
          f'plain_gradient_does_not_vanish_{where}_{depth}',
          'He et al. 2015 (Sec. 4.1): with BN, "the backward propagated gradients exhibit '
          f'healthy norms" in plain nets: they do not vanish towards the input (plain-{depth}, '
          f'{when})', f'plain: {ratio}', 'greater'),
      hypotheses.Hypothesis(
          f'preact_gradient_does_not_vanish_{where}_{depth}',
          'Identity Mappings (Sec. 3, Eq. 5): with identity shortcuts and no activation after '
          'the addition, the gradient of a lower unit holds that of a higher one: it does not '
          f'vanish towards the input (ResNet-{depth}, full pre-activation, {when})',
          f'preact: {ratio}', 'greater'),
  ]


def verdicts(init: list[dict], measured: list[dict], seeds: int) -> list[dict]:
  """The init claims at every init depth from 56 on (else the deepest), over the init seeds;
  the trained claims at every trained depth, over the seeds whose net trained."""
  checked = []
  depths = sorted({r['depth'] for r in init})
  for depth in [d for d in depths if d >= 56] or depths[-1:]:
    at = [r for r in init if r['depth'] == depth]
    for claim, net in zip(claims(depth, 'init'), ('plain', 'preact')):
      values = [probes.mean_log_ratio(r, 'grad') for r in at if r['net'] == net]
      if values:
        checked.append(hypotheses.verdict(claim, values))
  for depth in sorted({r['depth'] for r in measured}):
    last = [r for r in measured if r['depth'] == depth and r['step'] > 0]
    for claim, net in zip(claims(depth, 'trained'), ('plain', 'preact')):
      mine = sorted((r for r in last if r['net'] == net), key=lambda r: r['seed'])
      if mine:
        values = [probes.mean_log_ratio(r, 'grad') if r['trained'] else float('nan') for r in mine]
        checked.append(hypotheses.verdict(
            claim, values, seeds,
            missing_why=f'did not finish or did not train (training error >= {TRAINED_BELOW:g}%)'))
  return checked


def trained_table(measured: list[dict]) -> list[dict]:
  """Per trained run: its training error, whether it trained, and the gradient ratio (geometric
  mean over the stages) at its initialisation and at its last checkpoint."""
  cells = []
  for r in sorted((r for r in measured if r['step'] > 0),
                  key=lambda r: (r['depth'], list(NETS).index(r['net']), r['seed'])):
    start = next(m for m in measured if m['run'] == r['run'] and m['step'] == 0)
    cells.append({'depth': r['depth'], 'net': r['net'], 'seed': r['seed'], 'step': r['step'],
                  'training error %': f"{r['train_error']:.2f}",
                  'trained': 'yes' if r['trained'] else 'NO: excluded',
                  'gradient ratio at init': f"{math.exp(probes.mean_log_ratio(start, 'grad')):.3g}",
                  'gradient ratio then': f"{math.exp(probes.mean_log_ratio(r, 'grad')):.3g}",
                  'update ratio then': f"{math.exp(probes.mean_log_ratio(r, 'update')):.3g}"})
  return cells


def plot_per_unit(measured: list[dict], title: str, path: str) -> str:
  """|dL/dx| per unit over that at the last unit, for the deepest trained depth: at init and at
  the last checkpoint, one line per net (geometric mean over the seeds that trained, band:
  lowest-highest)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  depth = max(r['depth'] for r in measured)
  fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), squeeze=False, sharey=True)
  colours = plt.get_cmap('tab10')
  for ax, (when, pick) in zip(axes[0], (('at initialisation', lambda r: r['step'] == 0),
                                        ('after training', lambda r: r['step'] > 0))):
    for i, net in enumerate(NETS):
      group = [r for r in measured if r['depth'] == depth and r['net'] == net and pick(r)
               and r['trained']]
      if not group:
        continue
      curves = np.array([np.asarray(r['input']) / r['input'][-1] for r in group])
      units = np.arange(1, curves.shape[1] + 1)
      ax.semilogy(units, np.exp(np.log(curves).mean(0)), color=colours(i), lw=1.2,
                  label=f'{net} ({len(group)} seeds)')
      ax.fill_between(units, curves.min(0), curves.max(0), color=colours(i), alpha=0.15,
                      linewidth=0)
    ax.set_title(f'depth {depth}, {when}', fontsize=9)
    ax.set_xlabel('unit (input side = 1)')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel('|dL/dx| / that at the last unit')
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  return plots.save(fig, path, dpi=100)


def analyse(out: str, budget_name: str, rows: list[dict], init: list[dict],
            measured: list[dict], provenance: publish.Provenance) -> int:
  """Verdicts, tables, plots, results.md and results.json from the training rows, the init
  records and the trained runs' records: what the study writes at its end, and what `republish`
  recomputes from committed files."""
  dataset = rows[0]['dataset'] if rows else 'cifar10'
  seeds = len({r['seed'] for r in rows})
  publish.write_csv(publish.portable(rows, out), os.path.join(out, 'results.csv'))
  probes.write_jsonl(os.path.join(out, 'init.jsonl'), init)
  probes.write_jsonl(os.path.join(out, 'trained.jsonl'), measured)
  publish.write_csv(publish.scalars(init), os.path.join(out, 'init.csv'))
  publish.write_csv(publish.scalars(measured), os.path.join(out, 'trained.csv'))
  title = publish.plot_title(f'{STUDY} ({dataset})', budget_name, rows)
  files = ['results.csv', 'init.jsonl', 'init.csv', 'trained.jsonl', 'trained.csv']
  arms = [n for n in NETS if any(r['net'] == n for r in init)]
  files.append(plots.stage_ratios(
      init, 'net', arms, 'grad', '|dL/dx| second unit / last unit',
      f'{title}\nsame-shape gradient ratio per stage at init (geometric mean, band: '
      'lowest-highest seed)', os.path.join(out, 'init_gradient_ratio.png')))
  files.append(plots.stage_ratios(
      init, 'net', arms, 'update', '|dL/dW|/|W| second unit / last unit',
      f'{title}\nsame-shape update ratio per stage at init', os.path.join(
          out, 'init_update_ratio.png')))
  if any(r['trained'] for r in measured):
    files.append(plot_per_unit(measured, f'{title}\n|dL/dx| per unit, nets that trained only',
                               os.path.join(out, 'trained_per_unit.png')))
  checked = verdicts(init, measured, seeds)
  for record in checked:
    print(f'{record["name"]}: {hypotheses.describe(record)}', flush=True)
  init_columns = ['depth', 'net', 'seeds', 'initial loss',
                  *[f'gradient ratio, stage {s}' for s in STAGES],
                  *[f'update ratio, stage {s}' for s in STAGES]]
  trained_md = publish.markdown_table(
      trained_table(measured), ['depth', 'net', 'seed', 'step', 'training error %', 'trained',
                                'gradient ratio at init', 'gradient ratio then',
                                'update ratio then'])
  untrained = sorted(r['run'] for r in measured if r['step'] > 0 and not r['trained'])
  body = [
      '## At initialisation', '',
      f'One fixed batch of {init[0]["batch"] if init else "-"} training images, train-mode BN. '
      'Gradient ratio: |dL/dx| at the stage\'s second unit over that at its last (above 1: the '
      'gradient grows towards the input; below 1: it attenuates). Update ratio: |dL/dW|/|W| at '
      'the second unit over that at the last. Geometric mean over the seeds '
      '(lowest-highest).', '',
      publish.markdown_table(probes.init_table(init, 'net', NETS, INIT_RATIOS), init_columns), '',
      '## After training', '',
      'Each run measured at its own initialisation and at its last checkpoint, on the same '
      f'batch. A run whose training error is still at or above {TRAINED_BELOW:g}% has not '
      'started to train (He et al. 2015, Sec. 4.2, use that threshold for the same purpose); '
      'it is flagged, and no verdict uses it. Ratios: geometric mean over the stages.', '',
      trained_md, '',
      (f'Not trained, excluded: {", ".join(untrained)}.' if untrained else
       'Every finished run trained.'), '',
      '## Training runs', '',
      publish.markdown_table(rows, ['net', 'depth', 'seed', 'train_error', 'test_error',
                                    'eval_examples', 'steps', 'wall_s', 'status']), '',
      '`test_error` is the error on the eval split: the training subset itself in the smoke '
      'and cpu budgets.', '',
      '## Plots', '', *[f'![{f}]({f})' for f in files if f.endswith('.png')], '',
      '## Deviations from the papers', '', *[f'- {d}' for d in DEVIATIONS], '']
  return publish.publish(out, study=STUDY, title=f'Gradient flow per unit, {dataset}',
                         budget=budget_name, rows=rows, files=files, body=body,
                         provenance=provenance, notes='', headline=trained_md,
                         hypotheses=checked)


def republish(out: str) -> int:
  """`analyse` again from the folder's results.json, init.jsonl and trained.jsonl alone."""
  manifest, rows = publish.read_manifest(out)
  return analyse(out, manifest['budget'], rows,
                 probes.read_jsonl(os.path.join(out, 'init.jsonl')),
                 probes.read_jsonl(os.path.join(out, 'trained.jsonl')),
                 publish.Provenance.recorded(manifest))


@cli.one_line_errors
def main(argv=None) -> int:
  cli.quiet_tpu_probe()  # JAX's harmless 'no TPU' line would read as a failure.
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  study.add_flags(parser, init_seeds=True)
  args = study.parse_args(parser, argv)
  budget = BUDGETS[args.budget]
  if args.steps:
    budget = dataclasses.replace(
        budget, steps=args.steps,
        warmup_steps=args.steps // 4 if budget.warmup_steps else budget.warmup_steps)
  started = time.perf_counter()
  runs = build_runs(budget, args.dataset, args.seeds or range(budget.seeds), depths=args.depths,
                    overrides=args.overrides, variant=args.variant)
  study.check_runs(runs)
  if args.print_commands:
    return study.print_commands(runs, args)
  # After the configs were built: a bad one writes nothing.
  with study.results_lock(args.results_dir):
    init = measure_init(budget, args.dataset, args.init_seeds or range(budget.init_seeds),
                        args.overrides, args.variant, args.results_dir)
    rows = study.sweep(runs, args)
    measured = measure_trained(rows, budget.measure_batch)
    return analyse(args.results_dir, args.budget, rows, init, measured,
                   publish.Provenance.now(time.perf_counter() - started))


if __name__ == '__main__':
  sys.exit(main())
