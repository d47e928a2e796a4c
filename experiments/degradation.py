"""He et al. 2015, Sec. 4.2 and Fig. 6: deeper plain nets train worse; deeper ResNets do not.

  python -m experiments.degradation --budget cpu --results_dir results/degradation-cpu

Plain nets (config.model.shortcut='none') and residual nets (option A shortcuts, the 'original'
unit) at a shallow and a deep depth, trained with the same recipe, seed for seed: a seed gives
the plain net and the ResNet of one depth the same initial weights (option A has no parameters)
and every net the same order of batches. Fig. 6 plots training error, so that is what is
measured: the error on the training set itself.

Budgets:
  smoke: depths 20 and 32, 1 seed, 20 steps of batch 32 on the first 256 training images:
    checks the machinery (its verdicts are inconclusive by design).
  cpu: depths 20 and 56, 5 paired seeds, 200 steps of batch 128 on the first 1,280 training
    images without augmentation (20 epochs of them), lr rising linearly to 0.1 over the first
    50 steps, then divided by 10 at 50% and 75% of the steps; the training error is that of the
    whole subset, evaluated at the end. Five seeds are the fewest with which the exact sign-flip
    test can reach p <= 0.05. The warm-up is the same for every net: without it, ResNet-56
    (seed 0) blew up on reaching 0.1 (training loss 7.0 at step 25) and ended at chance, and an
    untrained ResNet says nothing about degradation.
  paper: depths 20 and 56 (add 32 44 110 with --depths), 5 seeds, the 2015 recipe on the whole
    training set with augmentation (64k steps, batch 128), the running training error of the
    last log window as Fig. 6's curves, and the test error.

Writes DIR/results.md (the claims tested and their verdicts, the errors per net and depth),
results.csv, fig6_curves.png (plain nets on the left, ResNets on the right, as in Fig. 6) and
results.json.
"""

import argparse
import os
import statistics
import sys
import time

from experiments import hypotheses, papers, plots, publish, runner, study
from resnet_jax import cli

STUDY = 'degradation'
NETS = ('plain', 'residual')
BUDGETS = {
    'smoke': dict(depths=(20, 32), seeds=1, steps=20, batch_size=32, subset='train[:256]',
                  evals=1, warm_up=True),
    'cpu': dict(depths=(20, 56), seeds=5, steps=200, batch_size=128, subset='train[:1280]',
                evals=4, warm_up=True),
    # warm_up: a linear warm-up over the first quarter of the steps, for every net; False: the
    # 2015 recipe's own (none below 110 layers, 0.01 for 400 steps from 110 on).
    'paper': dict(depths=(20, 56), seeds=5, steps=64_000, batch_size=128, subset=None,
                  evals=32, warm_up=False),
}
DEVIATIONS = [
    *study.COMMON_DEVIATIONS,
    'smoke and cpu budgets train on a fixed subset of the training set, without augmentation, '
    'for a shortened schedule (lr 0.1 divided by 10 at 50% and 75% of the steps, after a linear '
    'warm-up of a quarter of the steps, the same for every net; the paper warms up only '
    'ResNet-110) with plain momentum SGD and no decay on BN; their training error is the '
    'error on the whole subset at the end, not the running error of Fig. 6.',
    'The paper shows one run per net; the verdicts here pair 5 seeds.',
]


def build_runs(budget: str, seeds=None, dataset: str = 'cifar10', *, steps: int | None = None,
               depths=None, overrides=(), variant: str = '') -> list[runner.Run]:
  """The runs of `budget`; seeds, steps, depths and --config overrides replace its own."""
  spec = BUDGETS[budget]
  runs = []
  for net in NETS:
    for depth in depths or spec['depths']:
      for seed in seeds or range(spec['seeds']):
        shortcut = 'none' if net == 'plain' else 'A'
        config = study.base_config(
            dataset, f'depth={depth},placement=original,shortcut={shortcut},recipe=2015')
        config.seed = seed
        paper = budget == 'paper'
        total = steps or spec['steps']
        study.apply_budget(config, steps=total, batch_size=spec['batch_size'],
                           eval_split=spec['subset'] or 'test', evals=spec['evals'],
                           paper=paper, unrolled=not paper,
                           warmup_steps=total // 4 if spec['warm_up'] else None)
        if spec['warm_up']:
          config.warmup_mode = 'linear'
        if spec['subset']:
          config.data.train_split = spec['subset']
          config.data.augment = 'none'
        study.override(config, overrides)
        runs.append(runner.Run(name=f'{net}-d{depth}-s{seed}{variant}', config=config,
                               meta={'dataset': dataset, 'net': net, 'depth': depth,
                               'seed': seed, 'subset': spec['subset'] or 'train'}))
  return runs


def claims(shallow: int, deep: int) -> list[hypotheses.Hypothesis]:
  unit = 'points of training error, per seed'
  return [
      hypotheses.Hypothesis(
          'plain_degrades',
          'He et al. 2015 (Sec. 4.2, Fig. 6 left): the deeper plain net has the higher training '
          'error (the degradation problem)',
          f'plain-{deep} minus plain-{shallow}, {unit}', 'greater'),
      hypotheses.Hypothesis(
          'residual_does_not_degrade',
          'He et al. 2015 (Sec. 4.2, Fig. 6 right): the deeper ResNet has the lower training '
          'error',
          f'ResNet-{deep} minus ResNet-{shallow}, {unit}', 'less'),
      hypotheses.Hypothesis(
          'shortcuts_remove_the_degradation',
          'He et al. 2015 (Sec. 4.2): the degradation is the plain nets\'; identity shortcuts '
          'remove it',
          f'(plain-{deep} minus plain-{shallow}) minus (ResNet-{deep} minus ResNet-{shallow}), '
          f'{unit}', 'greater'),
  ]


def verdicts(rows: list[dict]) -> list[dict]:
  """The claims' verdicts from the paired seeds of the shallowest and the deepest depth."""
  depths = sorted({r['depth'] for r in rows})
  shallow, deep = depths[0], depths[-1]
  seeds = sorted({r['seed'] for r in rows})
  error = {(r['net'], r['depth'], r['seed']): study.train_error(r) for r in rows}
  nan = float('nan')
  gap = {net: [error.get((net, deep, s), nan) - error.get((net, shallow, s), nan) for s in seeds]
         for net in NETS}
  plain, residual, both = claims(shallow, deep)
  return [hypotheses.verdict(plain, gap['plain'], len(seeds)),
          hypotheses.verdict(residual, gap['residual'], len(seeds)),
          hypotheses.verdict(both, [p - r for p, r in zip(gap['plain'], gap['residual'])],
                             len(seeds))]


def per_depth(rows: list[dict]) -> list[dict]:
  """Mean and range over seeds of the training error, and the test error, per net and depth."""
  table = []
  for net in NETS:
    for depth in sorted({r['depth'] for r in rows if r['net'] == net}):
      group = [r for r in rows if r['net'] == net and r['depth'] == depth]
      ok = [r for r in group if r['status'] == 'ok']
      train = [study.train_error(r) for r in ok]
      table.append({'net': net, 'depth': depth, 'runs ok': f'{len(ok)}/{len(group)}',
                    'train error %': (f'{statistics.mean(train):.2f} ({min(train):.2f}-'
                                      f'{max(train):.2f})' if train else None),
                    'paper test error %': (papers.paper_numbers()['resnet2015_table6']
                                           ['residual'].get(depth) if net == 'residual'
                                           else None)})
  return table


def analyse(out: str, budget: str, rows: list[dict], provenance: publish.Provenance) -> int:
  """The verdicts, tables, plot, results.md and results.json of `rows` in `out`, whose runs'
  curves are out/runs/<name>/metrics.jsonl: what a study run writes at its end, and what
  `republish` recomputes from committed files."""
  dataset = rows[0]['dataset']
  publish.write_csv(publish.portable(rows, out), os.path.join(out, 'results.csv'))
  title = publish.plot_title(f'{STUDY} ({dataset}, He et al. 2015 Fig. 6 layout)', budget, rows)
  subset = rows[0]['subset']
  figure = plots.curves(
      rows, group='depth', panel='net', panel_order=list(NETS),
      panel_label=lambda net: f'{net} nets' if net == 'plain' else 'ResNets (option A)',
      metrics=([('eval/error', '-', '')] if subset != 'train' else
               [('train/error', '--', ' train'), ('eval/error', '-', ' test')]),
      ylabel=f'error on {subset} (%)' if subset != 'train' else 'error (%)', title=title,
      path=os.path.join(out, 'fig6_curves.png'))
  checked = verdicts(rows)
  for record in checked:
    print(f'{record["name"]}: {hypotheses.describe(record)}', flush=True)
  table_md = publish.markdown_table(per_depth(rows), ['net', 'depth', 'runs ok', 'train error %',
                                                      'paper test error %'])
  body = ['## Training error per net and depth', '',
          'Mean (lowest-highest) over the seeds; the paper reports residual nets\' test errors '
          '(He et al. 2015, Table 6, the full recipe) and shows the plain nets as curves only.',
          '', table_md, '',
          '## Runs', '',
          publish.markdown_table(rows, ['net', 'depth', 'seed', 'train_error', 'test_error',
                                        'eval_examples', 'steps', 'wall_s', 'status']), '',
          '`test_error` is the error on the eval split: the training subset itself in the smoke '
          'and cpu budgets.', '',
          '## Plot', '', f'![{figure}]({figure})', '',
          '## Deviations from the paper', '', *[f'- {d}' for d in DEVIATIONS], '']
  return publish.publish(out, study=STUDY, title=f'Degradation: plain vs residual nets, {dataset}',
                         budget=budget, rows=rows, files=['results.csv', figure],
                         provenance=provenance, body=body, notes='', headline=table_md,
                         hypotheses=checked)


def republish(out: str) -> int:
  """`analyse` again from the folder's results.json and runs' metrics.jsonl alone."""
  manifest, rows = publish.read_manifest(out)
  return analyse(out, manifest['budget'], rows, publish.Provenance.recorded(manifest))


@cli.one_line_errors
def main(argv=None) -> int:
  cli.quiet_tpu_probe()  # JAX's harmless 'no TPU' line would read as a failure.
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  study.add_flags(parser)
  args = study.parse_args(parser, argv)
  started = time.perf_counter()
  runs = build_runs(args.budget, args.seeds, args.dataset, steps=args.steps, depths=args.depths,
                    overrides=args.overrides, variant=args.variant)
  study.check_runs(runs)
  if args.print_commands:
    return study.print_commands(runs, args)
  with study.results_lock(args.results_dir):
    rows = study.sweep(runs, args)
    return analyse(args.results_dir, args.budget, rows,
                   publish.Provenance.now(time.perf_counter() - started))


if __name__ == '__main__':
  sys.exit(main())
