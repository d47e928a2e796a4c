"""Gradient flow through plain, original and pre-activation nets, unit by unit.

  python -m experiments.gradient_flow --budget smoke --results_dir runs/exp/gradient_flow

For each net, on one fixed real batch (no augmentation, the train-mode forward pass, the mean
cross-entropy of the trainer without weight decay), it measures two norms per residual unit
(experiments/probes.py): the loss gradient with respect to the unit's parameters, and with
respect to the unit's input, the residual stream entering the unit.

Nets (He et al. 2015 and 2016): plain (shortcut 'none', the 2015 'original' placement), original
(shortcut A for basic, B for bottleneck nets) and full pre-activation. Each is measured at
initialisation and at the checkpoints of a short training run made by the sweep runner
(experiments/runner.py, hence resnet_jax.train.loop.train_and_evaluate). Identity Mappings Sec. 3
argues that with identity shortcuts and no activation after the addition, the gradient at any unit
contains the gradient at the top unchanged (Eq. 5): that rules out a first-to-last ratio far
below 1 for pre-activation nets, not a ratio above 1 (growth towards the input); the tables
report whatever is measured.
"""

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

from experiments import plots, probes, publish, runner, study
from benchmarks import hardware
from resnet_jax import cli, models
from resnet_jax.train import run as run_lib
from resnet_jax.train import trained

STUDY = 'gradient_flow'
NETS = {  # label -> (placement, shortcut); shortcut None is the family's default (A basic, B bottleneck)
    'plain': ('original', 'none'),
    'original': ('original', None),
    'preact': ('full_preact', None),
}


@dataclasses.dataclass(frozen=True)
class Budget:
  init_depths: tuple[int, ...]      # measured at initialisation only
  train_depths: tuple[int, ...]     # trained, then measured at init and at each checkpoint
  train_steps: int
  checkpoint_every: int
  batch_size: int
  measure_batch: int                # images in the fixed measurement batch
  eval_split: str
  big_measure_batch: int            # for nets of more than 200 units (ResNet-1001, 1202)
  paper_recipe: bool = False        # Nesterov momentum and decay on BN (fb.resnet.torch)


BUDGETS = {
    # Real CIFAR-10, under 3 minutes on 2 cores: depths 20 and 56 at init, ResNet-20 trained 20 steps.
    'smoke': Budget(init_depths=(56,), train_depths=(20,), train_steps=20, checkpoint_every=20,
                    batch_size=32, measure_batch=32, eval_split='test[:500]', big_measure_batch=8),
    # ~25 min on 2 cores: 20/56/110 trained 200 steps; the bottleneck ResNet-164 and 1001 at init.
    'cpu': Budget(init_depths=(164, 1001), train_depths=(20, 56, 110), train_steps=200,
                  checkpoint_every=50, batch_size=32, measure_batch=64, eval_split='test[:2000]',
                  big_measure_batch=8),
    # An accelerator: depths 20 to 1001, the first 16k of the paper recipe's 64k steps (lr 0.1
    # throughout: its first decay is at 32k), measured every 2k steps.
    'paper': Budget(init_depths=(), train_depths=(20, 56, 110, 164, 1001), train_steps=16000,
                    checkpoint_every=2000, batch_size=128, measure_batch=128, eval_split='test',
                    big_measure_batch=64, paper_recipe=True),
}
WHAT_IT_SHOWS = {
    'smoke': 'Checks the machinery only: ResNet-56 at initialisation and ResNet-20 after 20 '
             'steps; the norms are real, but two depths say nothing about a trend.',
    'cpu': 'Plain, original and pre-activation nets of 20, 56 and 110 layers at initialisation '
           'and over 200 steps of training (batch 32), and the bottleneck ResNet-164 and '
           '1001 at initialisation: how the first-to-last ratio of the gradient norms moves '
           'with depth and with the placement, at the start of training only.',
    'paper': 'Depths 20 to 1001 over the first 16k steps of the paper recipe (batch 128).',
}
DEVIATIONS = [
    *study.COMMON_DEVIATIONS,
    'The papers give no numbers for these norms, so there is no paper column; Identity Mappings '
    'Sec. 3 gives the argument that the measurements test.',
    'smoke and cpu budgets train with the shortened schedule (lr 0.1 divided by 10 at 50% and '
    '75% of the steps, a warm-up of 10% of the steps at 0.01), plain momentum SGD and no decay '
    'on BN.',
]


def net_config(dataset, depth, net, budget: Budget, seed: int, overrides=()):
  placement, shortcut = NETS[net]
  config = study.base_config(dataset)
  config.seed = seed
  config.model.depth = depth
  config.model.placement = placement
  config.model.shortcut = shortcut
  points = budget.train_steps // budget.checkpoint_every
  study.apply_budget(config, steps=budget.train_steps, batch_size=budget.batch_size,
                     eval_split=budget.eval_split, evals=points, paper=budget.paper_recipe,
                     unrolled=False,
                     warmup_steps=None if budget.paper_recipe else budget.train_steps // 10)
  # Keep every checkpoint: each one is a measurement point.
  config.keep_checkpoints = points + 1
  config.keep_best_checkpoint = False
  study.override(config, overrides)
  return config


def build_runs(budget: Budget, dataset: str, seeds=(0,), overrides=(), variant='') -> list:
  runs = []
  for depth in budget.train_depths:
    for net in NETS:
      for seed in seeds:
        runs.append(runner.Run(
            name=f'{net}{depth}_s{seed}{variant}',
            config=net_config(dataset, depth, net, budget, seed, overrides),
            meta={'study': STUDY, 'net': net, 'depth': depth}))
  return runs


def _ratio_rows(measurements):
  rows = []
  for m in measurements:
    rows.append({
        'net': m['net'], 'depth': m['depth'], 'seed': m['seed'], 'step': m['step'],
        'units': len(m['units']), 'loss': round(m['loss'], 4),
        'param_first': float(m['param'][0]), 'param_last': float(m['param'][-1]),
        'param_first/last': float(m['param'][0] / m['param'][-1]),
        'input_first': float(m['input'][0]), 'input_last': float(m['input'][-1]),
        'input_first/last': float(m['input'][0] / m['input'][-1]),
        'batch': m['batch'], 'scan': m['scan'], 'hardware': m['hardware'],
        'wall_s': round(m['wall_s'], 1)})
  return rows


def _plot(measurements, path, title, kind):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  steps = sorted({m['step'] for m in measurements})
  fig, axes = plt.subplots(1, len(steps), figsize=(5.5 * len(steps), 4.2), squeeze=False)
  for ax, step in zip(axes[0], steps):
    for m in measurements:
      if m['step'] != step or m['seed'] != 0:
        continue
      ax.semilogy(np.arange(1, len(m['units']) + 1), m[kind], label=f"{m['net']}-{m['depth']}",
                  lw=1.2)
    ax.set_xlabel('unit index (input side = 1)')
    ax.set_ylabel({'param': '|dL/d unit params|', 'input': '|dL/d unit input|'}[kind])
    ax.set_title(f'step {step}' + (' (init)' if step == 0 else ''))
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  plots.save(fig, path)


def measure(model, variables, images, labels, fn, **meta):
  started = time.perf_counter()
  result = probes.unit_norms(model, variables, images, labels, fn)
  return {**meta, **result, 'wall_s': time.perf_counter() - started,
          'hardware': hardware.devices_line()}


@cli.one_line_errors
def main(argv=None):
  cli.quiet_tpu_probe()  # JAX's harmless 'no TPU' line would read as a failure.
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  study.add_flags(parser)
  args = study.parse_args(parser, argv)
  budget = BUDGETS[args.budget]
  if args.steps:
    budget = dataclasses.replace(budget, train_steps=args.steps,
                                 checkpoint_every=min(budget.checkpoint_every, args.steps))
  if args.depths:
    budget = dataclasses.replace(budget, train_depths=args.depths, init_depths=())
  dataset = args.dataset
  seeds = args.seeds or (0,)
  results_dir = os.path.abspath(args.results_dir)
  started = time.perf_counter()

  runs = build_runs(budget, dataset, seeds, args.overrides, args.variant)
  os.makedirs(results_dir, exist_ok=True)  # After the configs were built: a bad one writes none.
  train_rows = runner.run_sweep(runs, results_dir, jobs=args.jobs)

  images = labels = None
  measurements = []
  points = [(r.config, r.meta, r.config.seed, row['workdir']) for r, row in zip(runs, train_rows)]
  points += [(net_config(dataset, d, net, budget, 0, args.overrides),
              {'study': STUDY, 'net': net, 'depth': d}, 0, None)
             for d in budget.init_depths for net in NETS]
  for config, meta, seed, workdir in points:
    steps = trained.saved_steps(workdir) if workdir else []
    if workdir and not steps:
      continue  # A failed run: its row in the training table says why.
    if workdir:  # The run's own config and net, in the layout of its checkpoints.
      first = trained.load(workdir, str(steps[0]))
      prepared, model = run_lib.prepare(first.config, open_data=False), first.model
    else:
      prepared = run_lib.prepare(config, open_data=False)
      model = run_lib.model(prepared.config)
    n_images = (budget.big_measure_batch if len(models.unit_names(model)) > 200
                else budget.measure_batch)
    if images is None or images.shape[0] < n_images:
      images, labels = probes.fixed_batch(prepared.config, max(n_images, budget.measure_batch))
    x, y = images[:n_images], labels[:n_images]
    fn = probes.unit_norms_fn(model)
    for step in [0] + steps:
      variables = (run_lib.initial_variables(prepared, model) if step == 0
                   else trained.read_variables(workdir, step))
      m = measure(model, variables, x, y, fn, net=meta['net'], depth=meta['depth'], seed=seed,
                  step=step, batch=n_images, scan=model.scan)
      measurements.append(m)
      print(f"{STUDY}: {m['net']}-{m['depth']} seed {seed} step {step}: |dL/dx| first/last "
            f"{m['input'][0] / m['input'][-1]:.3g}, |dL/dw| first/last "
            f"{m['param'][0] / m['param'][-1]:.3g} ({m['wall_s']:.1f} s)", flush=True)

  return write_results(results_dir, args.budget, measurements, train_rows,
                       time.perf_counter() - started)


def headline_rows(measurements) -> list[dict]:
  """Per net and depth: the first-to-last ratios at initialisation and at the last step measured."""
  rows = []
  for key in dict.fromkeys((m['net'], m['depth'], m['seed']) for m in measurements):
    ms = sorted((m for m in measurements if (m['net'], m['depth'], m['seed']) == key),
                key=lambda m: m['step'])
    first, last = ms[0], ms[-1]
    ratio = lambda m, kind: f"{m[kind][0] / m[kind][-1]:.3g}"
    rows.append({'net': key[0], 'depth': key[1], 'seed': key[2], 'units': len(first['units']),
                 'input first/last at init': ratio(first, 'input'),
                 'param first/last at init': ratio(first, 'param'),
                 'last step': last['step'] if last['step'] else None,
                 'input first/last then': ratio(last, 'input') if last['step'] else None,
                 'param first/last then': ratio(last, 'param') if last['step'] else None})
  return rows


def _fmt(x: float) -> str:
  return f'{x:.3g}' if np.isfinite(x) else 'nan (the gradient overflowed float32)'


def _trend(pairs) -> str:
  values = [r for _, r in pairs if np.isfinite(r)]
  if len(values) < 2:
    return 'cannot be compared'
  if all(b > a for a, b in zip(values, values[1:])):
    return 'rises with depth'
  if all(b < a for a, b in zip(values, values[1:])):
    return 'falls with depth'
  return 'does not change monotonically with depth'


def verdict(measurements) -> str:
  """What the first-to-last ratio of |dL/d unit input| does with depth, at initialisation and at
  the last checkpoint, per net (seed 0), decided from the numbers."""
  ratio = lambda m: float(m['input'][0] / m['input'][-1])
  last = max(m['step'] for m in measurements)
  at = lambda step: {net: [(m['depth'], ratio(m)) for m in sorted(measurements,
                                                                 key=lambda m: m['depth'])
                           if m['net'] == net and m['step'] == step and m['seed'] == 0]
                     for net in NETS}
  listing = lambda pairs: ', '.join(f'{d} layers {_fmt(r)}' for d, r in pairs)
  sentences = ['At initialisation, |dL/dx| first/last ' + '; '.join(
      f'{_trend(pairs)} for the {net} nets ({listing(pairs)})'
      for net, pairs in at(0).items() if pairs) + '.']
  if last > 0:
    trained = {net: pairs for net, pairs in at(last).items() if pairs}
    spans = {net: [r for _, r in pairs if np.isfinite(r)] for net, pairs in trained.items()}
    sentences.append(f'After {last} training steps it ' + '; '.join(
        f'{_trend(pairs)} for the {net} nets ({listing(pairs)})'
        for net, pairs in trained.items()) + '.')
    sentences.append('Across the trained depths it spans ' + '; '.join(
        f'{_fmt(min(v))} to {_fmt(max(v))} for the {net} nets' for net, v in spans.items() if v)
        + '.')
  return ' '.join(sentences)


def write_results(results_dir, budget, measurements, train_rows, wall_s) -> int:
  title = publish.plot_title(STUDY, budget, train_rows)
  files = []
  for kind in ('input', 'param'):
    name = f'gradient_{kind}_norms.png'
    _plot(measurements, os.path.join(results_dir, name),
          f'{title}\n|dL/d unit {"input" if kind == "input" else "parameters"}| per unit', kind)
    files.append(name)

  rows = _ratio_rows(measurements)
  publish.write_csv(rows, os.path.join(results_dir, 'results.csv'))
  per_unit = [{'net': m['net'], 'depth': m['depth'], 'seed': m['seed'], 'step': m['step'],
               'unit': i + 1, 'name': name, 'input_grad_norm': float(m['input'][i]),
               'param_grad_norm': float(m['param'][i])}
              for m in measurements for i, name in enumerate(m['units'])]
  publish.write_csv(per_unit, os.path.join(results_dir, 'per_unit.csv'))
  files += ['results.csv', 'per_unit.csv']

  fmt = lambda r: {**r, **{k: f'{r[k]:.3g}' for k in r if isinstance(r[k], float)}}
  headline = publish.markdown_table(headline_rows(measurements), [
      'net', 'depth', 'units', 'input first/last at init', 'param first/last at init',
      'last step', 'input first/last then', 'param first/last then'])
  conclusion = verdict(measurements)
  body = [
      f'**What this budget shows.** {WHAT_IT_SHOWS[budget]}', '',
      'Norms of the gradient of the mean cross-entropy on one fixed batch of real training '
      'images (train-mode BN, no weight decay), per residual unit, unit 1 nearest the input. '
      '`input first/last` is |dL/dx| at the first unit over that at the last; '
      '`param first/last` the same for the units\' parameters. Step 0 is initialisation (the '
      'trainer\'s own init); later steps are the training runs\' checkpoints.', '',
      f'**From the numbers below.** {conclusion}', '',
      '## First-to-last ratios', '', headline, '',
      '## Every measurement', '',
      publish.markdown_table([fmt(r) for r in rows],
                             ['net', 'depth', 'seed', 'step', 'units', 'batch', 'loss',
                              'input_first/last', 'param_first/last', 'input_first', 'input_last',
                              'wall_s']),
      '', '## Training runs (through experiments/runner.py)', '',
      publish.markdown_table(train_rows, ['net', 'depth', 'seed', 'steps', 'train_error',
                                          'test_error', 'eval_examples', 'wall_s', 'status']),
      '', 'Per-unit norms: per_unit.csv. Plots: ' + ', '.join(
          f'[{f}]({f})' for f in files if f.endswith('.png')), '',
      '## Deviations from the papers', '', *[f'- {d}' for d in DEVIATIONS], '']
  return publish.publish(results_dir, study=STUDY, title='Gradient flow per unit', budget=budget,
                         rows=train_rows, files=files, body=body,
                         provenance=publish.Provenance.now(wall_s),
                         notes=f'{WHAT_IT_SHOWS[budget]} {conclusion}', headline=headline)


if __name__ == '__main__':
  sys.exit(main())
