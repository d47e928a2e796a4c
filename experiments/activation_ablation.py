"""Identity Mappings Table 2: the five activation placements of Fig. 4, across depths and seeds.

  python -m experiments.activation_ablation --budget cpu --results_dir results/activation_cpu

Budgets:
  smoke: ResNet-20, 'original' and 'full_preact' only, 1 seed, 30 steps of batch 32, eval on
    test[:500] (under 3 minutes on 2 CPU cores): checks the machinery, shows nothing about the
    placements.
  cpu: ResNet-20, all five placements, 2 seeds, 500 steps of batch 128 (1.3 epochs), the
    paper's schedule shape compressed, eval on the full test set 4 times (about 45 min on 2 CPU
    cores): how fast each placement starts to learn, not where it ends.
  paper: ResNet-110 and ResNet-164, all five placements, 5 seeds, the paper recipe (64k steps,
    batch 128, lr 0.1 /10 at 32k and 48k, 400-step warm-up at 0.01), Nesterov momentum and
    weight decay on BN and biases as fb.resnet.torch does.

Writes DIR/results.md (per placement and depth: median and mean +- std of the final test error
across seeds, beside the paper's medians), results.csv, curves.png, bars.png and results.json.
"""

import argparse
import os
import statistics
import sys
import time

from experiments import papers, plots, publish, runner, study
from resnet_jax import cli, models

STUDY = 'activation_ablation'
PLACEMENTS = models.PLACEMENTS  # Every placement of the table (models/placements.py).
BUDGETS = {
    'smoke': dict(depths=(20,), placements=('original', 'full_preact'), seeds=1, steps=30,
                  batch_size=32, eval_split='test[:500]', evals=2),
    'cpu': dict(depths=(20,), placements=PLACEMENTS, seeds=2, steps=500, batch_size=128,
                eval_split='test', evals=4),
    'paper': dict(depths=(110, 164), placements=PLACEMENTS, seeds=5, steps=64_000,
                  batch_size=128, eval_split='test', evals=32),
}
WHAT_IT_SHOWS = {
    'smoke': 'Checks the machinery only (a few steps of one seed, two placements, 500 test '
             'images): the errors are near chance and say nothing about the placements.',
    'cpu': 'ResNet-20 for 500 steps (1.3 epochs), 2 seeds: it shows how quickly each '
           'placement starts to learn under the compressed schedule. It cannot show the '
           "paper's final differences (pairwise gaps of 0.02 to 1.8 points in Table 2, at 64k "
           'steps of ResNet-110/164).',
    'paper': "The paper's setting: ResNet-110 and ResNet-164, 5 seeds, the full recipe; its "
             "medians are comparable with the paper's Table 2.",
}
DEVIATIONS = [
    *study.COMMON_DEVIATIONS,
    'Shortcuts: option A (zero-padding identity) for the basic-block ResNet-20/110, projection '
    '(B) where dimensions increase in the bottleneck ResNet-164, as the paper describes.',
    'The error reported is that of the final step on the test set (no model selection); the '
    "paper reports the median of 5 runs' final errors.",
    'smoke and cpu budgets shorten the schedule: lr 0.1 divided by 10 at 50% and 75% of the '
    'steps, the 400-step warm-up scaled to the same fraction (64k steps -> 400), plain '
    'momentum SGD with no decay on BN, and nets compiled unrolled (config.model.scan=False).',
]


def build_runs(budget: str, seeds=None, dataset: str = 'cifar10', *, steps: int | None = None,
               depths=None, placements=None, overrides=(), variant: str = '',
               report_split: str | None = None) -> list[runner.Run]:
  """The runs of `budget`; seeds, steps, depths, placements and --config overrides replace its
  own. report_split: select each run's checkpoint on a validation split, report it there."""
  spec = BUDGETS[budget]
  steps = steps or spec['steps']
  runs = []
  for depth in depths or spec['depths']:
    for placement in placements or spec['placements']:
      for seed in seeds or range(spec['seeds']):
        # Identity Mappings warms every unit up (recipe '2016'), so every placement here does.
        config = study.base_config(dataset, f'depth={depth},placement={placement},recipe=2016')
        config.seed = seed
        paper = budget == 'paper'
        study.apply_budget(
            config, steps=steps, batch_size=spec['batch_size'],
            eval_split=spec['eval_split'], evals=spec['evals'], paper=paper,
            warmup_steps=None if paper else round(400 * steps / 64_000), unrolled=not paper)
        if report_split:
          study.select_on_validation(config)
        study.override(config, overrides)
        runs.append(runner.Run(name=f'{placement}-d{depth}-s{seed}{variant}', config=config,
                               meta={'dataset': dataset, 'placement': placement, 'depth': depth,
                                     'seed': seed}, report_split=report_split))
  return runs


def paper_median(dataset: str, depth: int, placement: str) -> float | None:
  numbers = papers.paper_numbers()
  table = numbers['identity_mappings_table2' if dataset == 'cifar10'
                  else 'identity_mappings_table3_cifar100']
  return table.get(f'ResNet-{depth}', {}).get(placement)


def summarise(rows: list[dict], dataset: str) -> list[dict]:
  """One row per (depth, placement): median, mean and std of the final test error over seeds."""
  cells = []
  for depth in sorted({r['depth'] for r in rows}):
    for placement in [p for p in PLACEMENTS if any(r['placement'] == p for r in rows)]:
      group = [r for r in rows if r['depth'] == depth and r['placement'] == placement]
      test = [r['test_error'] for r in group if r['status'] == 'ok']
      train = [r['train_error'] for r in group if r['status'] == 'ok' and r['train_error'] is not None]
      cells.append({
          'depth': depth, 'placement': placement, 'runs ok': f'{len(test)}/{len(group)}',
          'median test error %': statistics.median(test) if test else None,
          'mean +- std %': (f'{statistics.mean(test):.2f} +- '
                            f'{statistics.stdev(test) if len(test) > 1 else 0.0:.2f}'
                            if test else None),
          'paper median %': paper_median(dataset, depth, placement),
          'median train error %': statistics.median(train) if train else None,
          'test': test,
      })
  return cells


@cli.one_line_errors
def main(argv=None) -> int:
  cli.quiet_tpu_probe()  # JAX's harmless 'no TPU' line would read as a failure.
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  study.add_flags(parser, validation=True)
  parser.add_argument('--placements', type=lambda text: tuple(text.split(',')), default=None,
                      help=f"placements, comma-separated, of {', '.join(PLACEMENTS)}; default: "
                           "the budget's.")
  args = study.parse_args(parser, argv)
  unknown = [p for p in args.placements or () if p not in PLACEMENTS]
  if unknown:
    parser.error(f'--placements: {unknown[0]!r} is not one of {", ".join(PLACEMENTS)}')
  started = time.perf_counter()
  runs = build_runs(args.budget, args.seeds, args.dataset, steps=args.steps, depths=args.depths,
                    placements=args.placements, overrides=args.overrides, variant=args.variant,
                    report_split=args.report_split)
  rows = runner.run_sweep(runs, args.results_dir, jobs=args.jobs)
  wall = time.perf_counter() - started
  cells = summarise(rows, args.dataset)
  out = args.results_dir
  publish.write_csv(rows, os.path.join(out, 'results.csv'))
  title = publish.plot_title(f'{STUDY} ({args.dataset})', args.budget, rows)
  files = ['results.csv']
  files += plots.curves_by_group(
      rows, group='placement', panel='depth', title=title, out_dir=out,
      series=(('eval/error', 'test error (%)', 'test_error_curves.png'),
              ('train/loss', 'training loss', 'train_loss_curves.png')))
  files.append(plots.bars(cells, title=title, path=os.path.join(out, 'bars.png')))

  paper_label = ('Identity Mappings Table 2 (CIFAR-10, median of 5)' if args.dataset == 'cifar10'
                 else 'Identity Mappings Table 3 (CIFAR-100, median of 5)')
  table = publish.markdown_table(cells, ['depth', 'placement', 'runs ok', 'median test error %',
                                         'mean +- std %', 'paper median %',
                                         'median train error %'])
  body = [f'**What this budget shows.** {WHAT_IT_SHOWS[args.budget]}', '',
          '## Final test error per placement and depth', '',
          f'Across seeds; "paper median %" is {paper_label}, for ResNet-110/164 only ("-": the '
          'paper has no such cell).', '', table, '',
          '## Runs', '',
          publish.markdown_table(rows, ['placement', 'depth', 'seed', 'train_error', 'test_error',
                                        'eval_examples', 'steps', 'wall_s', 'status']), '',
          '## Plots', '',
          *[f'![{f}]({f})' for f in files if f.endswith('.png')], '',
          '## Deviations from the paper', '',
          *[f'- {d}' for d in DEVIATIONS], '']
  return publish.publish(out, study=STUDY, title=f'Activation placement ablation, {args.dataset}',
                         budget=args.budget, rows=rows, files=files, body=body,
                         provenance=publish.Provenance.now(wall),
                         notes=WHAT_IT_SHOWS[args.budget], headline=table)


if __name__ == '__main__':
  sys.exit(main())
