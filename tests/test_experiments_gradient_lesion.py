"""The gradient-flow and lesion studies: their measurements on tiny nets, and their smoke budgets."""

import csv
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import gradient_flow, hypotheses, lesion, probes
from resnet_jax import models
from resnet_jax.models.units import ResidualUnit
from tests.test_models_util import random_variables
from tests import helpers
from tests import trained_run

SHAPE = (4, 8, 8, 3)


def _batch():
  images = jnp.asarray(np.random.default_rng(1).normal(size=SHAPE), jnp.float32)
  return images, jnp.array([0, 1, 2, 3])


def _perturbed_input_grads(model, variables, images, labels):
  """|dL/d unit input| the slow, obvious way: flax's perturb on each unit's input (unrolled)."""
  def perturb_inputs(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(context.module, ResidualUnit):
      args = (context.module.perturb('input', args[0]),) + tuple(args[1:])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(perturb_inputs):
    perturbations = model.apply(variables, images, train=True, mutable=['batch_stats',
                                                                        'perturbations'])[1]
  perturbations = perturbations['perturbations']

  def loss_fn(p):
    with nn.intercept_methods(perturb_inputs):
      logits, _ = model.apply({**variables, 'perturbations': p}, images, train=True,
                              mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  grads = jax.grad(loss_fn)(perturbations)
  return np.array([float(jnp.linalg.norm(grads[name]['input']))
                   for name in models.unit_names(model)])


def test_plain_net_norms_at_init_are_finite_positive_and_one_per_unit():
  model = models.create_model('cifar', 20, shortcut='none', scan=False)
  variables = random_variables(model, SHAPE)
  result = probes.unit_norms(model, variables, *_batch())
  assert result['units'] == models.unit_names(model) and len(result['units']) == 9
  for kind in ('param', 'input'):
    assert result[kind].shape == (9,)
    assert np.all(np.isfinite(result[kind])) and np.all(result[kind] > 0)


def test_input_norms_are_the_gradients_wrt_each_unit_input_scanned_or_not():
  # The tap must give exactly |dL/dx| at each unit's input (checked against flax's perturb), must
  # not scale any branch (the loss is the plain loss), and must work the same under nn.scan.
  model = models.create_model('cifar', 20, placement='full_preact', shortcut='B', scan=False)
  variables = random_variables(model, SHAPE)
  images, labels = _batch()
  result = probes.unit_norms(model, variables, images, labels)
  np.testing.assert_allclose(result['input'],
                             _perturbed_input_grads(model, variables, images, labels), rtol=1e-4)
  logits, _ = model.apply(variables, images, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(
      result['loss'], optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
      rtol=1e-6)
  scanned = probes.unit_norms(
      model.clone(scan=True), models.unrolled_to_scan(variables, model), images, labels)
  for kind in ('param', 'input'):
    np.testing.assert_allclose(scanned[kind], result[kind], rtol=1e-4)


def test_activation_norms_are_those_of_each_unit_input_scanned_or_not():
  model = models.create_model('cifar', 20, placement='relu_before_add', scan=False)
  variables = random_variables(model, SHAPE)
  images, labels = _batch()
  seen = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(context.module, ResidualUnit):
      seen.append(float(jnp.linalg.norm(args[0])))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, images, train=True, mutable=['batch_stats'])
  result = probes.unit_norms(model, variables, images, labels)
  np.testing.assert_allclose(result['activation'], seen, rtol=1e-5)
  np.testing.assert_allclose(
      result['weight'], [np.sqrt(sum(float(jnp.sum(leaf ** 2)) for leaf in
                                     jax.tree.leaves(variables['params'][name])))
                         for name in models.unit_names(model)], rtol=1e-5)
  scanned = probes.unit_norms(model.clone(scan=True), models.unrolled_to_scan(variables, model),
                              images, labels)
  for kind in ('activation', 'weight'):
    np.testing.assert_allclose(scanned[kind], result[kind], rtol=1e-4)


def test_stage_ratios_compare_same_shape_inputs_only():
  model = models.create_model('cifar', 20)  # 3 stages of 3 units
  assert probes.stage_spans(model) == [(1, 1, 2), (2, 4, 5), (3, 7, 8)]
  assert probes.stage_spans(model.clone(stage_sizes=(2, 2, 2))) == []
  measured = {'input': np.arange(1.0, 10.0), 'activation': np.arange(1.0, 10.0) ** 2,
              'param': np.arange(1.0, 10.0) ** 3, 'weight': np.arange(1.0, 10.0)}
  ratios = probes.stage_ratios(measured, probes.stage_spans(model))
  assert ratios['grad_2'] == 5 / 6 and ratios['growth_3'] == 81 / 64
  assert ratios['update_1'] == 4 / 9  # |g|/|w| = unit^2: unit 2 over unit 3.


def test_lesion_units_mark_the_downsampling_units():
  units = lesion.lesion_units(models.create_model('cifar', 20))
  assert len(units) == 9 and [u['index'] for u in units] == list(range(9))
  assert [u['name'] for u in units if u['downsampling']] == ['stage2_unit1', 'stage3_unit1']
  assert [u['changes_shape'] for u in units] == [u['downsampling'] for u in units]
  bottleneck = lesion.lesion_units(models.create_model('cifar', 164))
  assert len(bottleneck) == 54
  assert [u['index'] for u in bottleneck if u['downsampling']] == [18, 36]
  # The first bottleneck unit widens 16 -> 64 channels without striding.
  assert [u['index'] for u in bottleneck if u['changes_shape']] == [0, 18, 36]


def test_lesion_masks_bookkeeping():
  units = lesion.lesion_units(models.create_model('cifar', 20))
  for mask_shape_changing in (False, True):
    masks = lesion.lesion_masks(units, draws=3, mask_shape_changing=mask_shape_changing)
    assert masks[0]['kind'] == 'intact' and masks[0]['deleted'] == []
    single = {method: [m['unit'] for m in masks if m['kind'] == 'single'
                       and m['method'] == method] for method in ('mask', 'skip')}
    assert single['skip'] == [0, 1, 2, 4, 5, 7, 8]  # not the downsampling units 3 and 6
    assert single['mask'] == ([3, 6] if mask_shape_changing else [])
    random = [m for m in masks if m['kind'] == 'random']
    assert {m['method'] for m in random} == {'skip'}
    assert sorted({m['k'] for m in random}) == list(range(1, 8))
    assert len(random) == 3 * 6 + 1  # k = all 7 has one set.
    for m in random:
      assert len(m['deleted']) == m['k'] == len(set(m['deleted']))
      assert not set(m['deleted']) & {3, 6}


def test_single_deletions_are_numbered_as_the_downsampling_marks():
  units = lesion.lesion_units(models.create_model('cifar', 20))
  lesions = [m for m in lesion.lesion_masks(units, draws=1, mask_shape_changing=True)
             if m['kind'] == 'single']
  records = [lesion.record(m, 90.0 if units[m['unit']]['downsampling'] else 10.0, units,
                           net='r', depth=20, seed=0, checkpoint_step=1, eval_split='test')
             for m in lesions]
  numbers, errors = lesion.single_deletions(records, 'r', 'mask')
  marks = [u['index'] + 1 for u in units if u['downsampling']]  # Where the plot draws them.
  assert numbers == marks == [4, 7] and errors == [90.0, 90.0]
  assert lesion.single_deletions(records, 'r', 'skip')[0] == [1, 2, 3, 5, 6, 8, 9]


def test_the_lesion_claims_pair_unit_positions_of_the_nets_of_one_seed():
  def records(net, intact, rises):
    return ([{'net': net, 'depth': 32, 'seed': 0, 'kind': 'intact', 'method': 'none',
              'unit': None, 'error': intact}]
            + [{'net': net, 'depth': 32, 'seed': 0, 'kind': 'single', 'method': 'skip',
                'unit': u, 'error': intact + r} for u, r in enumerate(rises, 1)]
            + [{'net': net, 'depth': 32, 'seed': 0, 'kind': 'single', 'method': 'mask',
                'unit': 99, 'error': 90.0}])  # Downsampling: reported apart, not tested.
  plain = records('plain', 30.0, [60, 55, 58, 40, 62, 59])
  got, barely = lesion.verdicts(plain + records('residual', 20.0, [1, 0.5, 2, 0.2, 0.3, 1]))
  assert got['name'] == 'plain_breaks_more_than_residual_32' and got['verdict'] == 'shown'
  assert got['n_seeds'] == 6 and got['replicate'] == 'unit position'
  assert got['differences'] == [59, 54.5, 56, 39.8, 61.7, 58]
  assert '6 paired unit positions' in hypotheses.describe(got)
  # "Barely changes": every rise below lesion.BARELY (5 points).
  assert barely['name'] == 'residual_barely_changes_32' and barely['verdict'] == 'shown'
  assert barely['differences'] == pytest.approx([-4, -4.5, -3, -4.8, -4.7, -4])
  same, broken = lesion.verdicts(plain + records('residual', 30.0, [60, 55, 58, 40, 62, 59]))
  assert same['verdict'] == 'not shown' and broken['verdict'] == 'not shown'


def test_deleting_units_of_a_preact_net_is_skipping_them_and_plain_nets_lose_their_only_path():
  images, labels = _batch()
  preact = models.create_model('cifar', 20, placement='full_preact', scan=False)
  plain = models.create_model('cifar', 20, shortcut='none', scan=False)
  for model in (preact, plain):
    variables = random_variables(model, SHAPE)
    wrong = lesion.make_error_fn(model)
    logits = lambda mask, skip: jax.jit(
        lambda v, m, s: _logits_with(model, v, images, m, s))(variables, mask, skip)
    ones, zeros = np.ones(9, np.float32), np.zeros(9, np.float32)
    one = zeros.copy()
    one[4] = 1
    masked, skipped = logits(ones - one, zeros), logits(ones, one)
    if model is preact:  # An identity-shortcut pre-activation unit with no branch is the identity.
      np.testing.assert_allclose(masked, skipped, rtol=1e-5, atol=1e-6)
    else:  # No shortcut: masking zeroes the unit's output, every input gives the same logits.
      assert np.allclose(masked, masked[:1], atol=1e-5)
      assert not np.allclose(skipped, skipped[:1], atol=1e-5)
    errors = lesion.run_lesions(model, variables, [(images, labels)],
                                [{'method': 'none', 'deleted': []}], 9)
    assert errors[0] == 100 * float(wrong(variables, images, labels, ones, zeros)) / 4


def _logits_with(model, variables, images, mask, skip):
  with nn.intercept_methods(lesion._skip_units(models.unit_names(model), skip)):
    return model.apply(variables, images, train=False, unit_mask=mask)


def _cifar10_present():
  root = os.environ.get('TFDS_DATA_DIR', '')
  return bool(root) and os.path.isdir(os.path.join(root, 'cifar10'))


needs_cifar10 = pytest.mark.skipif(not _cifar10_present(),
                                   reason='real CIFAR-10 (tfds ArrayRecord) is not in $TFDS_DATA_DIR')


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_study(study, results_dir):
  """The one command of a study, as a user runs it: its own process, the machine's real devices
  (not the 8 fake CPU devices of conftest.py, which a 500-image eval batch does not divide over)."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run([sys.executable, '-m', f'experiments.{study}', '--budget', 'smoke',
                         '--results_dir', results_dir], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=helpers.HANG_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _check_outputs(results_dir, study, n_plots):
  with open(os.path.join(results_dir, 'results.json')) as f:
    manifest = json.load(f)
  assert manifest['study'] == study and manifest['budget'] == 'smoke'
  assert manifest['hardware'] and manifest['versions'] and manifest['wall_s'] > 0
  assert f'experiments.{study}' in manifest['command']
  for name in manifest['files']:
    assert os.path.getsize(os.path.join(results_dir, name)) > 0, name
  pngs = [f for f in manifest['files'] if f.endswith('.png')]
  assert n_plots is None and pngs or len(pngs) == n_plots
  for name in pngs:
    with open(os.path.join(results_dir, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(os.path.join(results_dir, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  with open(os.path.join(results_dir, 'results.md')) as f:
    text = f.read()
  assert 'smoke budget' in text and manifest['hardware'].split(',')[0] in text
  return manifest, rows, text


@needs_cifar10
@pytest.mark.slow
def test_gradient_flow_smoke_budget(tmp_path):
  results_dir = str(tmp_path / 'gradient_flow')
  out = _run_study('gradient_flow', results_dir)
  manifest, rows, text = _check_outputs(results_dir, 'gradient_flow', n_plots=None)
  budget = gradient_flow.BUDGETS['smoke']
  nets = list(gradient_flow.NETS)
  assert len(rows) == len(nets) * len(budget.train_depths) * budget.seeds
  init = probes.read_jsonl(os.path.join(results_dir, 'init.jsonl'))
  assert sorted((r['net'], r['depth']) for r in init) == sorted(
      (n, d) for n in nets for d in budget.init_depths)
  for r in init:  # ResNet-20: 3 units per stage, one same-shape span each.
    assert len(r['input']) == 9 and all(
        r[f'{k}_{s}'] > 0 for k in ('grad', 'growth', 'update') for s in (1, 2, 3))
  measured = probes.read_jsonl(os.path.join(results_dir, 'trained.jsonl'))
  assert sorted((r['run'], r['step']) for r in measured) == sorted(
      (f'{n}-d20-s0', step) for n in nets for step in (0, budget.steps))
  for r in measured:
    assert r['trained'] == (r['train_error'] < gradient_flow.TRAINED_BELOW)
  assert ('Every finished run trained.' in text) == all(r['trained'] for r in measured)
  names = {h['name']: h for h in manifest['hypotheses']}
  assert set(names) == {'plain_gradient_does_not_vanish_init_20',
                        'preact_gradient_does_not_vanish_init_20',
                        'plain_gradient_does_not_vanish_trained_20',
                        'preact_gradient_does_not_vanish_trained_20'}
  assert all(h['verdict'] == 'inconclusive' for h in names.values())  # One seed.
  assert 'init ' in out

  out = _run_study('gradient_flow', results_dir)  # a rerun trains and measures nothing anew
  assert out.count('finished before, skipped') == len(rows)
  assert 'init ' not in out
  before = open(os.path.join(results_dir, 'results.md')).read()
  os.remove(os.path.join(results_dir, 'results.md'))
  gradient_flow.republish(results_dir)  # From results.json, init.jsonl and trained.jsonl alone.
  # The same text, but for the command's wall time, which results.json keeps rounded.
  same = lambda text: [line for line in text.splitlines() if 'the command took' not in line]
  assert same(open(os.path.join(results_dir, 'results.md')).read()) == same(before)


def _records(net, depth, grads, trained=None, step=0):
  """Measurement records of `net` with one seed per gradient ratio (the same in each stage)."""
  return [{'run': f'{net}-{s}', 'net': net, 'depth': depth, 'seed': s, 'step': step,
           'trained': trained[s] if trained else True,
           **{f'grad_{k}': g for k in (1, 2, 3)}} for s, g in enumerate(grads)]


def test_gradient_flow_verdicts_use_only_nets_that_trained():
  init = (_records('plain', 56, [1.5, 1.2, 1.3, 1.4, 1.1])
          + _records('preact', 56, [0.5, 0.6, 0.7, 0.4, 0.8]) + _records('plain', 20, [0.1] * 5))
  trained = (_records('plain', 56, [2.0] * 5, trained=[True, True, False, True, True], step=9)
             + _records('preact', 56, [2.0, 3.0, 2.5, 2.2, 2.4], step=9))
  got = {r['name']: r for r in gradient_flow.verdicts(init, trained, 5)}
  assert set(got) == {'plain_gradient_does_not_vanish_init_56',
                      'preact_gradient_does_not_vanish_init_56',
                      'plain_gradient_does_not_vanish_trained_56',
                      'preact_gradient_does_not_vanish_trained_56'}  # Depth 20 < 56: no claim.
  assert got['plain_gradient_does_not_vanish_init_56']['verdict'] == 'shown'
  assert got['preact_gradient_does_not_vanish_init_56']['verdict'] == 'not shown'
  assert got['preact_gradient_does_not_vanish_trained_56']['verdict'] == 'shown'
  excluded = got['plain_gradient_does_not_vanish_trained_56']
  assert excluded['verdict'] == 'inconclusive' and excluded['n_seeds'] == 4
  assert excluded['why'] == ('1 of 5 paired seeds did not finish or did not train (training '
                             'error >= 80%)')


@needs_cifar10
@pytest.mark.slow
def test_lesion_smoke_budget(tmp_path):
  results_dir = str(tmp_path / 'lesion')
  _run_study('lesion', results_dir)
  manifest, rows, text = _check_outputs(results_dir, 'lesion', n_plots=2)
  assert {r['net'] for r in rows} == set(lesion.NETS) and len(rows) == 2
  records = probes.read_jsonl(os.path.join(results_dir, 'lesions.jsonl'))
  for net, masked in (('residual', [4, 7]), ('plain', [])):
    mine = [r for r in records if r['net'] == net]
    single = [r for r in mine if r['kind'] == 'single']
    assert sorted(r['unit'] for r in single if r['method'] == 'skip') == [1, 2, 3, 5, 6, 8, 9]
    assert sorted(r['unit'] for r in single if r['method'] == 'mask') == masked
    assert all(r['downsampling'] == (r['method'] == 'mask') for r in single)
    assert {r['method'] for r in mine if r['kind'] == 'random'} == {'skip'}
    assert all(0 <= r['error'] <= 100 for r in mine)
    assert len([r for r in mine if r['kind'] == 'intact']) == 1
  claim, barely = manifest['hypotheses']
  assert claim['name'] == 'plain_breaks_more_than_residual_20' and claim['n_seeds'] == 7
  assert barely['name'] == 'residual_barely_changes_20' and barely['n_seeds'] == 7
  assert '## Deleting one unit' in text and '## Deleting k random same-shape units' in text

  assert _run_study('lesion', results_dir).count('finished before, skipped') == 2
  before = open(os.path.join(results_dir, 'results.md')).read()
  os.remove(os.path.join(results_dir, 'results.md'))
  lesion.republish(results_dir)  # From results.json, lesions.jsonl and units.json alone.
  # The same text, but for the command's wall time, which results.json keeps rounded.
  same = lambda text: [line for line in text.splitlines() if 'the command took' not in line]
  assert same(open(os.path.join(results_dir, 'results.md')).read()) == same(before)


def test_lesion_from_a_finished_run_measures_it_and_leaves_it_as_it_was(tmp_path_factory,
                                                                       tmp_path):
  """--from_workdir lesions a run trained elsewhere (the quickstart: digits, 360 test images)
  instead of training; the smoke budget's split (test[:500]) does not exist there, which is one
  line before the results dir is made, and the paper budget (the whole test split) measures it."""
  run, _ = trained_run.quickstart_run(tmp_path_factory)
  before = trained_run.snapshot(run)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  command = lambda budget, out: subprocess.run(
      [sys.executable, '-m', 'experiments.lesion', '--budget', budget, '--results_dir', str(out),
       '--from_workdir', str(run)], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=helpers.HANG_S)
  refused = command('smoke', tmp_path / 'smoke')
  assert refused.returncode == 2, refused.stderr[-2000:]
  assert refused.stderr.strip().splitlines()[-1] == (
      f"error: --from_workdir={run}: the smoke budget measures the lesions on 'test[:500]' of the "
      "run's dataset, which it cannot give (Bad split 'test[:500]' for dataset 'digits' (splits: "
      "'train', 'test'): Requested slice [:500] incompatible with 360 examples.)")
  assert not (tmp_path / 'smoke').exists()
  done = command('paper', tmp_path / 'paper')
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / 'paper' / 'results.json') as f:
    [row] = json.load(f)['rows']
  assert row['net'] == f'residual:{run.name}' and row['status'] == 'ok (from --from_workdir)'
  records = probes.read_jsonl(str(tmp_path / 'paper' / 'lesions.jsonl'))
  [intact] = [r for r in records if r['kind'] == 'intact']
  summary = json.loads((run / 'summary.json').read_text())
  # The lesion's intact net is the run's final checkpoint on the run's test split.
  assert intact['error'] == pytest.approx(100 * (1 - summary['eval/accuracy']), abs=1e-3)
  assert trained_run.snapshot(run) == before


def test_plots_are_saved_small_enough_to_commit(tmp_path):
  import matplotlib.pyplot as plt
  from experiments import plots
  def figure():  # Five panels of jagged lines, like the gradient-flow plot of ResNet-1001.
    fig, axes = plt.subplots(1, 5, figsize=(27.5, 4.2))
    rng = np.random.default_rng(0)
    for ax in axes:
      for _ in range(15):
        ax.semilogy(np.exp(rng.normal(size=333).cumsum() / 5), lw=1.2)
    return fig
  fig = figure()
  fig.savefig(tmp_path / 'plain.png', dpi=110)
  assert (tmp_path / 'plain.png').stat().st_size > plots.MAX_PNG_BYTES  # Too big as it is.
  path = tmp_path / 'small.png'
  assert plots.save(figure(), str(path)) == 'small.png'
  assert 0 < path.stat().st_size <= plots.MAX_PNG_BYTES
  # On a full disk the figure already there stays whole (savefig wrote over it in place), no
  # temporary is left, and the error names the figure.
  with helpers.tmpfs(tmp_path / 'disk', '1m') as disk:
    old = disk / 'small.png'
    old.write_bytes(path.read_bytes())
    (disk / 'filler').write_bytes(b'\0' * (shutil.disk_usage(disk).free - 8192))  # < a figure.
    with pytest.raises(OSError, match=f'No space left on device: .{old}.'):
      plots.save(figure(), str(old))
    assert old.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in disk.iterdir()) == ['filler', 'small.png']
