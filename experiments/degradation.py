"""He et al. 2015 Fig. 6: plain nets train worse as they get deeper; residual nets do not.

  python -m experiments.degradation --budget cpu --results_dir results/degradation_cpu

Plain nets (config.model.shortcut='none') and residual nets (option A shortcuts, the 'original'
unit) of the same depths, trained with the same recipe. Budgets:
  smoke: depths 20 and 32, 1 seed, 20 steps of batch 32, one eval on test[:500] at the end
    (about 2.5 minutes on 2 CPU cores): checks the machinery only.
  cpu: depths 20/32/44/56, 1 seed, 200 steps of batch 128, the schedule compressed, eval on
    test[:2000] (about 45 min on 2 CPU cores): the start of training, where the plain nets'
    degradation already shows in the paper's Fig. 6.
  paper: depths 20/32/44/56/110, 1 seed (Fig. 6 plots one run per net; --seeds 5 for more), the
    2015 recipe (64k steps, batch 128, lr 0.1 /10 at 32k and 48k; the 110-layer nets warm up at
    0.01 for 400 steps), Nesterov momentum and weight decay on BN as fb.resnet.torch does.

Writes DIR/results.md (final train and test error per depth, and whether deeper plain nets
train worse and deeper residual nets better, decided from the numbers), results.csv,
fig6_curves.png (plain on the left, residual on the right, dashed training error and solid
test error as in Fig. 6) and results.json.
"""

import argparse
import os
import statistics
import sys
import time

from experiments import papers, plots, publish, runner, study
from resnet_jax import cli

STUDY = 'degradation'
NETS = ('plain', 'residual')
BUDGETS = {
    'smoke': dict(depths=(20, 32), seeds=1, steps=20, batch_size=32, eval_split='test[:500]',
                  evals=1),
    'cpu': dict(depths=(20, 32, 44, 56), seeds=1, steps=200, batch_size=128,
                eval_split='test[:2000]', evals=4),
    'paper': dict(depths=(20, 32, 44, 56, 110), seeds=1, steps=64_000, batch_size=128,
                  eval_split='test', evals=32),
}
WHAT_IT_SHOWS = {
    'smoke': 'Checks the machinery only (20 steps of one seed, 500 test images): the errors are '
             'near chance and the depth comparison below means nothing at this budget.',
    'cpu': '200 steps (0.5 epoch) of one seed per net: the early part of the curves of Fig. 6, '
           'where the paper already shows deeper plain nets with higher training error. It '
           'cannot show the final errors (Table 6: residual 8.75% for 20 layers down to 6.97% '
           'for 56), nor whether the ordering survives 64k steps.',
    'paper': "Fig. 6's setting: the full 2015 recipe for plain and residual nets of 20 to 110 "
             'layers.',
}
DEVIATIONS = [
    *study.COMMON_DEVIATIONS,
    'Training error is the running average over the last logging window of augmented training '
    "batches (as Fig. 6's training curves are), test error the final step's on the eval split.",
    'smoke and cpu budgets shorten the schedule (lr 0.1 divided by 10 at 50% and 75% of the '
    'steps, no warm-up at these depths), use plain momentum SGD with no decay on BN, evaluate '
    'on part of the test set, and compile the nets unrolled (config.model.scan=False).',
]


def build_runs(budget: str, seeds: int | None, dataset: str) -> list[runner.Run]:
  spec = BUDGETS[budget]
  runs = []
  for net in NETS:
    for depth in spec['depths']:
      for seed in range(seeds or spec['seeds']):
        shortcut = 'none' if net == 'plain' else 'A'
        config = study.base_config(
            dataset, f'depth={depth},placement=original,shortcut={shortcut},recipe=2015')
        config.model.shortcut = shortcut  # 'none' as a string: the plain net, not the default.
        config.seed = seed
        paper = budget == 'paper'
        study.apply_budget(config, steps=spec['steps'], batch_size=spec['batch_size'],
                           eval_split=spec['eval_split'], evals=spec['evals'], paper=paper,
                           unrolled=not paper)
        runs.append(runner.Run(name=f'{net}-d{depth}-s{seed}', config=config,
                              meta={'dataset': dataset, 'net': net, 'depth': depth,
                                    'seed': seed}))
  return runs


def per_depth(rows: list[dict]) -> list[dict]:
  """Median final train and test error over seeds, per net and depth."""
  table = []
  for net in NETS:
    for depth in sorted({r['depth'] for r in rows if r['net'] == net}):
      group = [r for r in rows if r['net'] == net and r['depth'] == depth]
      ok = [r for r in group if r['status'] == 'ok']
      train = [r['train_error'] for r in ok if r['train_error'] is not None]
      test = [r['test_error'] for r in ok]
      table.append({'net': net, 'depth': depth, 'runs ok': f'{len(ok)}/{len(group)}',
                    'train error %': statistics.median(train) if train else None,
                    'test error %': statistics.median(test) if test else None,
                    'paper test error %': (papers.paper_numbers()['resnet2015_table6']
                                           ['residual'].get(depth) if net == 'residual'
                                           else None)})
  return table


def _trend(errors: list[tuple[int, float]]) -> str:
  """'rises', 'falls' or 'does not change monotonically' with depth."""
  values = [e for _, e in errors]
  if all(b > a for a, b in zip(values, values[1:])):
    return 'rises'
  if all(b < a for a, b in zip(values, values[1:])):
    return 'falls'
  return 'does not change monotonically'


def verdict(table: list[dict]) -> str:
  """Whether deeper plain nets train worse, and deeper residual nets better, from the numbers."""
  sentences = []
  for net, expected in (('plain', 'rises'), ('residual', 'falls')):
    errors = [(c['depth'], c['train error %']) for c in table
              if c['net'] == net and c['train error %'] is not None]
    if len(errors) < 2:
      sentences.append(f'Too few finished {net} runs to compare depths.')
      continue
    trend = _trend(errors)
    listing = ', '.join(f'{d} layers {e:.2f}%' for d, e in errors)
    worse, better = ('worse', 'better') if net == 'plain' else ('better', 'worse')
    deeper_is_worse = errors[-1][1] > errors[0][1]
    if trend == expected:
      answer = f'yes: every deeper {net} net trains {worse} than the shallower ones'
    elif deeper_is_worse == (net == 'plain'):
      answer = (f'partly: the deepest {net} net trains {worse} than the shallowest, but not '
                'at every step in depth')
    else:
      answer = f'no: the deepest {net} net trains {better} than the shallowest here'
    sentences.append(f'{net.capitalize()} nets, final training error ({listing}) {trend} with '
                     f'depth; {answer}.')
  return ' '.join(sentences)


@cli.one_line_errors
def main(argv=None) -> int:
  cli.quiet_tpu_probe()  # JAX's harmless 'no TPU' line would read as a failure.
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  study.add_flags(parser)
  args = parser.parse_args(argv)
  started = time.perf_counter()
  rows = runner.run_sweep(build_runs(args.budget, args.seeds, args.dataset), args.results_dir,
                         jobs=args.jobs)
  wall = time.perf_counter() - started
  out = args.results_dir
  publish.write_csv(rows, os.path.join(out, 'results.csv'))
  table = per_depth(rows)
  title = publish.plot_title(f'{STUDY} ({args.dataset}, He et al. 2015 Fig. 6 layout)',
                           args.budget, rows)
  figure = plots.curves(
      rows, group='depth', panel='net', panel_order=list(NETS),
      panel_label=lambda net: f'{net} nets' if net == 'plain' else 'ResNets (option A)',
      metrics=[('train/error', '--', ' train'), ('eval/error', '-', ' test')],
      ylabel='error (%)', title=title + ' - dashed: training error, solid: test error',
      path=os.path.join(out, 'fig6_curves.png'))
  conclusion = verdict(table)
  table_md = publish.markdown_table(table, ['net', 'depth', 'runs ok', 'train error %',
                                          'test error %', 'paper test error %'])
  body = [f'**What this budget shows.** {WHAT_IT_SHOWS[args.budget]}', '',
          f'**From the numbers below.** {conclusion}', '',
          '## Final error per depth (median over seeds)', '',
          '"paper test error %" is Table 6 of He et al. 2015 (residual nets, full recipe); the '
          'paper gives the plain nets as curves only (Fig. 6).', '', table_md, '',
          '## Runs', '',
          publish.markdown_table(rows, ['net', 'depth', 'seed', 'train_error', 'test_error',
                                      'eval_examples', 'steps', 'wall_s', 'status']), '',
          '## Plot', '', f'![{figure}]({figure})', '',
          '## Deviations from the paper', '', *[f'- {d}' for d in DEVIATIONS], '']
  print(conclusion, flush=True)
  return publish.publish(out, study=STUDY, title=f'Degradation: plain vs residual nets, '
                       f'{args.dataset}', budget=args.budget, rows=rows,
                       files=['results.csv', figure], wall_s=wall, body=body,
                       notes=f'{WHAT_IT_SHOWS[args.budget]} {conclusion}', headline=table_md)


if __name__ == '__main__':
  sys.exit(main())
