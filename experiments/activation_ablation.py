"""Identity Mappings (He et al. 2016), Sec. 4.1, Fig. 4 and Table 2: where the activation sits.

  python -m experiments.activation_ablation --budget cpu --results_dir results/activation_ablation-cpu

Two parts, each paired by seed (a seed gives every placement the same conv weights where their
shapes agree, and every training run the same order of batches):

1. At initialisation, no training: every placement x depth x init seed, on one fixed batch of
   real training images (experiments/probes.py): the initial loss, and per stage the same-shape
   ratios of the residual stream: |dL/dx| at the stage's second unit over that at its last unit
   (gradient ratio: above 1, the gradient grows towards the input; below 1, it attenuates), and
   |x| at its last unit over that at its second (forward growth). These are the mechanisms Sec. 3
   and 4.1 give: Eq. 5 (with an identity shortcut and no activation after the addition, the
   gradient of a lower unit holds that of a higher one unchanged, plus more); ReLU before the
   addition makes every residual non-negative, so the stream can only grow; BN after the
   addition alters the signal on the identity path.
2. A short training of a deeper net, for the placements the paper separates most: the same
   warm-up for every arm, then a constant learning rate (the paper's first 32k steps hold 0.1).
   Sec. 4.1 locates bn_after_add's difficulty in reducing the training loss at the
   beginning of training (its Fig. 6, left): the early training loss is measured there.

Budgets:
  smoke: init: depth 20, 4 placements, 1 seed, batch 16; training: ResNet-20, original and
    bn_after_add, 1 seed, 20 steps of batch 32: checks the machinery (verdicts inconclusive).
  cpu: init: all five placements x depths 20/56/110/164 x 8 seeds, batch 64; training:
    ResNet-56, original/bn_after_add/relu_before_add/full_preact, 5 paired seeds, 160 steps of
    batch 64 (lr 0.05, the paper's 0.1 scaled to batch 64, reached by a linear warm-up over the
    first 40 steps), eval on test[:2000]: the first 0.2 epochs, the very beginning of the
    paper's curves.
  paper: init as cpu; training: ResNet-110 and 164, all five placements, 5 seeds, the paper
    recipe (64k steps, batch 128, lr 0.1 /10 at 32k and 48k, 400-step warm-up at 0.01), early
    training loss over the first 8k steps.

Writes DIR/results.md (the claims tested and their verdicts; per placement and depth the init
measurements; per arm the early training loss and the final test error beside Table 2's
medians), init.jsonl (every init measurement, per unit), init.csv, results.csv, plots and
results.json. init_log.jsonl keeps every init measurement made in DIR, so a rerun resumes.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

from experiments import hypotheses, papers, plots, probes, publish, runner, study
from resnet_jax import cli, models

STUDY = 'activation_ablation'
PLACEMENTS = models.PLACEMENTS  # Every placement of the table (models/placements.py).
STAGES = (1, 2, 3)
INIT_RATIOS = (('grad', 'gradient ratio'), ('growth', 'forward growth'))


@dataclasses.dataclass(frozen=True)
class Budget:
  init_depths: tuple[int, ...]
  init_placements: tuple[str, ...]
  init_seeds: int
  measure_batch: int              # images in the fixed batch of the init measurements
  depths: tuple[int, ...]         # trained
  placements: tuple[str, ...]     # trained
  seeds: int
  steps: int
  batch_size: int
  warmup_steps: int               # the same warm-up for every arm
  early_steps: int                # the early training loss is the mean over these first steps
  eval_split: str
  evals: int
  paper: bool = False
  # The short budgets: the paper's 0.1 at batch 128, scaled to their batch (the linear scaling
  # rule), reached by a linear warm-up. The paper budget keeps the recipe's lr and warm-up.
  learning_rate: float | None = None
  warmup_mode: str = 'constant'


# The arms this study trains, its own choice (the placements Sec. 4.1 and Table 2 separate
# most), not a fact about placements: models.PLACEMENTS lists them all.
TRAINED = (
    'original',
    'bn_after_add',
    'relu_before_add',
    'full_preact',
)
BUDGETS = {
    'smoke': Budget(init_depths=(20,), init_placements=TRAINED, init_seeds=1, measure_batch=16,
                    depths=(20,), placements=('original', 'bn_after_add'), seeds=1, steps=20,
                    batch_size=32, warmup_steps=5, early_steps=20, eval_split='test[:500]',
                    evals=2, learning_rate=0.025, warmup_mode='linear'),
    'cpu': Budget(init_depths=(20, 56, 110, 164), init_placements=PLACEMENTS, init_seeds=8,
                  measure_batch=64, depths=(56,), placements=TRAINED, seeds=5, steps=160,
                  batch_size=64, warmup_steps=40, early_steps=160, eval_split='test[:2000]',
                  evals=2, learning_rate=0.05, warmup_mode='linear'),
    'paper': Budget(init_depths=(20, 56, 110, 164), init_placements=PLACEMENTS, init_seeds=8,
                    measure_batch=64, depths=(110, 164), placements=PLACEMENTS, seeds=5,
                    steps=64_000, batch_size=128, warmup_steps=400, early_steps=8_000,
                    eval_split='test', evals=32, paper=True),
}
DEVIATIONS = [
    *study.COMMON_DEVIATIONS,
    'Shortcuts: option A (zero-padding identity) for the basic-block nets, projection (B) where '
    'dimensions increase in the bottleneck ResNet-164, as the paper describes.',
    'The init measurements use the scanned layout of the nets (config.model.scan=True): the '
    'same distributions, other draws than the unrolled layout of the same seed.',
    'smoke and cpu budgets train briefly: the paper\'s lr 0.1 at batch 128 scaled to their '
    'batch (0.025 at 32, 0.05 at 64), reached by the same linear warm-up over the first quarter '
    'of the steps for every arm, then constant (the paper recipe holds 0.1 until 32k steps); '
    'plain momentum SGD, no decay on BN, nets compiled unrolled; their test error is that of '
    "the last step on the eval split, far from the paper's 64k steps.",
    'The paper reports the median of 5 runs; the verdicts here pair the seeds.',
]


def claims(depth: int, where: str) -> list[hypotheses.Hypothesis]:
  """The claims tested at one depth; `where`: 'init' or 'train'."""
  ratio = 'log same-shape gradient ratio, mean over the stages, per init seed'
  if where == 'init':
    return [
        hypotheses.Hypothesis(
            f'preact_gradient_does_not_attenuate_{depth}',
            'Identity Mappings Eq. 5: with identity shortcuts and no activation after the '
            f'addition (full_preact), the gradient at a lower unit does not vanish (ResNet-{depth})',
            f'full_preact: {ratio}', 'greater'),
        hypotheses.Hypothesis(
            f'after_add_relu_attenuates_{depth}',
            'Identity Mappings Sec. 3: the ReLU after the addition (original) breaks the clean '
            f'identity path of Eq. 5 (ResNet-{depth})',
            f'full_preact minus original: {ratio}', 'greater'),
        hypotheses.Hypothesis(
            f'bn_after_add_impedes_propagation_{depth}',
            'Identity Mappings Sec. 4.1 (Fig. 4b): BN after the addition alters the signal on '
            f'the shortcut and impedes propagation (ResNet-{depth})',
            f'full_preact minus bn_after_add: {ratio}', 'greater'),
        hypotheses.Hypothesis(
            f'relu_before_add_grows_the_stream_{depth}',
            'Identity Mappings Sec. 4.1 (Fig. 4c): ReLU before the addition makes the residual '
            f'non-negative, so the forward signal increases monotonically (ResNet-{depth})',
            'relu_before_add minus full_preact: log forward growth of the stream, mean over '
            'the stages, per init seed', 'greater'),
    ]
  return [
      hypotheses.Hypothesis(
          f'bn_after_add_starts_slowly_{depth}',
          'Identity Mappings Sec. 4.1 (Fig. 6 left): BN after the addition has difficulty '
          f'reducing the training loss at the beginning of training (ResNet-{depth})',
          'bn_after_add minus original: mean training loss over the early steps, per seed',
          'greater'),
      hypotheses.Hypothesis(
          f'relu_before_add_is_worse_{depth}',
          'Identity Mappings Table 2: ReLU before the addition is worse than the original unit '
          f'(7.84% vs 6.61% for ResNet-110) (ResNet-{depth})',
          'relu_before_add minus original: final test error (points), per seed', 'greater'),
      hypotheses.Hypothesis(
          f'full_preact_is_better_{depth}',
          'Identity Mappings Table 2: full pre-activation is better than the original unit '
          f'(6.37% vs 6.61% for ResNet-110) (ResNet-{depth})',
          'full_preact minus original: final test error (points), per seed', 'less'),
  ]


def _config(dataset: str, depth: int, placement: str):
  # Identity Mappings warms every unit up (recipe '2016'); the budgets set one warm-up for all.
  return study.base_config(dataset, f'depth={depth},placement={placement},recipe=2016')


def build_runs(budget: Budget, seeds, dataset: str = 'cifar10', *, depths=None,
               placements=None, overrides=(), variant: str = '',
               report_split: str | None = None) -> list[runner.Run]:
  """The training runs; seeds, depths, placements and --config overrides replace the budget's.
  report_split: select each run's checkpoint on a validation split, report it there."""
  runs = []
  for depth in depths or budget.depths:
    for placement in placements or budget.placements:
      for seed in seeds:
        config = _config(dataset, depth, placement)
        config.seed = seed
        study.apply_budget(config, steps=budget.steps, batch_size=budget.batch_size,
                           eval_split=budget.eval_split, evals=budget.evals, paper=budget.paper,
                           warmup_steps=budget.warmup_steps, unrolled=not budget.paper)
        config.warmup_steps = budget.warmup_steps
        config.warmup_mode = budget.warmup_mode
        if budget.learning_rate is not None:
          config.learning_rate = budget.learning_rate
        if not budget.paper:
          config.lr_schedule = 'constant'
          config.lr_boundaries = ()
        if report_split:
          study.select_on_validation(config)
        study.override(config, overrides)
        runs.append(runner.Run(name=f'{placement}-d{depth}-s{seed}{variant}', config=config,
                               meta={'dataset': dataset, 'placement': placement, 'depth': depth,
                                     'seed': seed, 'early_steps': budget.early_steps},
                               report_split=report_split))
  return runs


def measure_init(budget: Budget, dataset: str, seeds, overrides, variant: str, out: str
                 ) -> list[dict]:
  """The init measurements, one record per (placement, depth, seed), logged in
  out/init_log.jsonl as each is made, so a rerun measures only what the log does not hold."""
  arms = []
  for depth in budget.init_depths:
    for placement in budget.init_placements:
      config = _config(dataset, depth, placement)
      study.override(config, overrides)
      arms.append(({'placement': placement, 'depth': depth}, config))
  return probes.measure_at_init(arms, seeds, budget.measure_batch, variant,
                                os.path.join(out, 'init_log.jsonl'), STUDY)


def early_loss(row: dict) -> float:
  """The mean training loss over the log windows that end within the run's first early_steps."""
  if row['status'] != 'ok':
    return float('nan')
  losses = [v for step, v in plots.read_curves(row['workdir'])['train/loss']
            if step <= row['early_steps']]
  return statistics.mean(losses) if losses else float('nan')


def verdicts(init: list[dict], rows: list[dict], expected: int) -> list[dict]:
  """The verdicts of the claims whose placements were measured: the init claims at the depths
  of Table 2 measured (110, 164; else the deepest), the training claims at every trained
  depth."""
  nan = float('nan')
  checked = []
  depths = sorted({r['depth'] for r in init})
  for depth in [d for d in depths if d in (110, 164)] or depths[-1:]:
    seeds = sorted({r['seed'] for r in init if r['depth'] == depth})
    value = {(r['placement'], r['seed']): r for r in init if r['depth'] == depth}
    log = lambda p, kind: [probes.mean_log_ratio(value[(p, s)], kind) if (p, s) in value else nan
                           for s in seeds]
    minus = lambda a, b, kind: [x - y for x, y in zip(log(a, kind), log(b, kind))]
    preact, after_add, bn, relu = claims(depth, 'init')
    tests = [(preact, {'full_preact'}, lambda: log('full_preact', 'grad')),
             (after_add, {'full_preact', 'original'},
              lambda: minus('full_preact', 'original', 'grad')),
             (bn, {'full_preact', 'bn_after_add'},
              lambda: minus('full_preact', 'bn_after_add', 'grad')),
             (relu, {'relu_before_add', 'full_preact'},
              lambda: minus('relu_before_add', 'full_preact', 'growth'))]
    measured = {p for p, _ in value}
    checked += [hypotheses.verdict(claim, differences())
                for claim, arms, differences in tests if arms <= measured]
  for depth in sorted({r['depth'] for r in rows}):
    seeds = sorted({r['seed'] for r in rows if r['depth'] == depth})
    by = {(r['placement'], r['seed']): r for r in rows if r['depth'] == depth}
    ok = lambda p, s: (p, s) in by and by[(p, s)]['status'] == 'ok'
    loss = lambda p: [early_loss(by[(p, s)]) if ok(p, s) else nan for s in seeds]
    error = lambda p: [by[(p, s)]['test_error'] if ok(p, s) else nan for s in seeds]
    minus = lambda a, b: [x - y for x, y in zip(a, b)]
    slow, relu, preact = claims(depth, 'train')
    tests = [(slow, {'bn_after_add', 'original'},
              lambda: minus(loss('bn_after_add'), loss('original'))),
             (relu, {'relu_before_add', 'original'},
              lambda: minus(error('relu_before_add'), error('original'))),
             (preact, {'full_preact', 'original'},
              lambda: minus(error('full_preact'), error('original')))]
    measured = {p for p, _ in by}
    checked += [hypotheses.verdict(claim, differences(), expected)
                for claim, arms, differences in tests if arms <= measured]
  return checked


def train_table(rows: list[dict], dataset: str) -> list[dict]:
  """Per depth and placement: the early training loss and the final test error over seeds."""
  numbers = papers.paper_numbers()
  table = numbers['identity_mappings_table2' if dataset == 'cifar10'
                  else 'identity_mappings_table3_cifar100']
  cells = []
  for depth in sorted({r['depth'] for r in rows}):
    for placement in [p for p in PLACEMENTS if any(r['placement'] == p for r in rows)]:
      group = [r for r in rows if r['depth'] == depth and r['placement'] == placement]
      ok = [r for r in group if r['status'] == 'ok']
      loss = [early_loss(r) for r in ok]
      test = [r['test_error'] for r in ok]
      spread = lambda v, f: f'{statistics.mean(v):{f}} ({min(v):{f}}-{max(v):{f}})' if v else None
      cells.append({'depth': depth, 'placement': placement, 'runs ok': f'{len(ok)}/{len(group)}',
                    'early training loss': spread(loss, '.3f'),
                    'final test error %': spread(test, '.2f'), 'test': test,
                    'paper median %': table.get(f'ResNet-{depth}', {}).get(placement)})
  return cells


def analyse(out: str, budget_name: str, rows: list[dict], init: list[dict],
            provenance: publish.Provenance) -> int:
  """Verdicts, tables, plots, results.md and results.json from the training rows (their curves
  in out/runs/<name>/metrics.jsonl) and the init records: what the study writes at its end, and
  what `republish` recomputes from committed files."""
  dataset = rows[0]['dataset'] if rows else 'cifar10'
  seeds = len({r['seed'] for r in rows})
  publish.write_csv(publish.portable(rows, out), os.path.join(out, 'results.csv'))
  # The records of this result (the log may hold other settings' too), per unit.
  probes.write_jsonl(os.path.join(out, 'init.jsonl'), init)
  publish.write_csv(publish.scalars(init), os.path.join(out, 'init.csv'))
  title = publish.plot_title(f'{STUDY} ({dataset})', budget_name, rows)
  files = ['results.csv', 'init.csv', 'init.jsonl']
  arms = [p for p in PLACEMENTS if any(r['placement'] == p for r in init)]
  files.append(plots.stage_ratios(
      init, 'placement', arms, 'grad', '|dL/dx| second unit / last unit',
      f'{title}\nsame-shape gradient ratio per stage at init (geometric mean, band: '
      'lowest-highest seed)', os.path.join(out, 'init_gradient_ratio.png')))
  files.append(plots.stage_ratios(
      init, 'placement', arms, 'growth', '|x| last unit / second unit',
      f'{title}\nforward growth of the residual stream per stage at init',
      os.path.join(out, 'init_forward_growth.png')))
  if rows:
    files += plots.curves_by_group(
        rows, group='placement', panel='depth', title=title, out_dir=out,
        series=(('train/loss', 'training loss', 'train_loss_curves.png'),
                ('eval/error', 'test error (%)', 'test_error_curves.png')))
  checked = verdicts(init, rows, seeds)
  for record in checked:
    print(f'{record["name"]}: {hypotheses.describe(record)}', flush=True)
  init_md = probes.init_table(init, 'placement', PLACEMENTS, INIT_RATIOS)
  init_columns = ['depth', 'placement', 'seeds', 'initial loss',
                  *[f'gradient ratio, stage {s}' for s in STAGES],
                  *[f'forward growth, stage {s}' for s in STAGES]]
  train_md = publish.markdown_table(
      train_table(rows, dataset),
      ['depth', 'placement', 'runs ok', 'early training loss', 'final test error %',
       'paper median %'])
  body = ['## At initialisation', '',
          f'One fixed batch of {init[0]["batch"] if init else "-"} training images, train-mode '
          'BN. Gradient '
          'ratio: |dL/dx| at the stage\'s second unit over that at its last; forward growth: '
          '|x| at the last unit over that at the second (same-shape tensors). Geometric mean '
          'over the seeds (lowest-highest).', '',
          publish.markdown_table(init_md, init_columns), '',
          '## Training', '',
          'Early training loss: the mean of the logged training loss over the first '
          f'{rows[0]["early_steps"] if rows else "-"} steps; final test error: the last step\'s, on the eval split. '
          'Mean (lowest-highest) over the seeds; "paper median %" is Identity Mappings '
          'Table 2 (ResNet-110/164 only, after 64k steps).', '', train_md, '',
          '## Runs', '',
          publish.markdown_table(rows, ['placement', 'depth', 'seed', 'train_error', 'test_error',
                                        'eval_examples', 'steps', 'wall_s', 'status']), '',
          '## Plots', '', *[f'![{f}]({f})' for f in files if f.endswith('.png')], '',
          '## Deviations from the paper', '', *[f'- {d}' for d in DEVIATIONS], '']
  return publish.publish(out, study=STUDY, title=f'Activation placement ablation, {dataset}',
                         budget=budget_name, rows=rows, files=files, body=body,
                         provenance=provenance, notes='', headline=train_md, hypotheses=checked)


def republish(out: str) -> int:
  """`analyse` again from the folder's results.json, init.jsonl and runs' metrics.jsonl alone."""
  manifest, rows = publish.read_manifest(out)
  return analyse(out, manifest['budget'], rows, probes.read_jsonl(os.path.join(out, 'init.jsonl')),
                 publish.Provenance.recorded(manifest))


@cli.one_line_errors
def main(argv=None) -> int:
  cli.quiet_tpu_probe()  # JAX's harmless 'no TPU' line would read as a failure.
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  study.add_flags(parser, validation=True, init_seeds=True)
  parser.add_argument('--placements', type=lambda text: tuple(text.split(',')), default=None,
                      help=f"trained placements, comma-separated, of {', '.join(PLACEMENTS)}; "
                           "default: the budget's.")
  args = study.parse_args(parser, argv)
  unknown = [p for p in args.placements or () if p not in PLACEMENTS]
  if unknown:
    parser.error(f'--placements: {unknown[0]!r} is not one of {", ".join(PLACEMENTS)}')
  budget = BUDGETS[args.budget]
  if args.steps:
    budget = dataclasses.replace(budget, steps=args.steps,
                                 early_steps=min(budget.early_steps, args.steps),
                                 warmup_steps=min(budget.warmup_steps, args.steps // 4))
  started = time.perf_counter()
  runs = build_runs(budget, args.seeds or range(budget.seeds), args.dataset, depths=args.depths,
                    placements=args.placements, overrides=args.overrides, variant=args.variant,
                    report_split=args.report_split)
  study.check_runs(runs)
  if args.print_commands:
    return study.print_commands(runs, args)
  # After the configs were built: a bad one writes nothing.
  with study.results_lock(args.results_dir):
    init = measure_init(budget, args.dataset, args.init_seeds or range(budget.init_seeds),
                        args.overrides, args.variant, args.results_dir)
    rows = study.sweep(runs, args)
    return analyse(args.results_dir, args.budget, rows, init,
                   publish.Provenance.now(time.perf_counter() - started))


if __name__ == '__main__':
  sys.exit(main())
