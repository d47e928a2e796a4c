"""The studies of experiments/ at their smoke budget, on the real CIFAR-10, as a user runs them.

Skipped, with the reason, when CIFAR-10 is not prepared in TFDS_DATA_DIR.
"""

import csv
import fcntl
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments import activation_ablation, papers, publish, runner, study
from tests import helpers

ROOT = helpers.ROOT
# The tests of the smoke studies (ablation, degradation: session fixtures) run on one xdist worker,
# so each study trains once: as module fixtures on both workers they were trained 2-3 times.
on_the_studies_worker = pytest.mark.xdist_group('cifar_studies')
needs_cifar10 = pytest.mark.skipif(
    helpers.shared_tfds_dataset('cifar10') is None,
    reason='CIFAR-10 (tfds array_record) not found under $TFDS_DATA_DIR; '
           'see ../shared/data/README.md')


def _study(name, results_dir, *extra, timeout=helpers.HANG_S):
  command = [sys.executable, '-m', f'experiments.{name}', '--budget', 'smoke',
             '--results_dir', str(results_dir), *extra]
  return subprocess.run(command, cwd=ROOT, env=helpers.env(1), capture_output=True, text=True,
                        timeout=timeout)


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _is_png(path):
  data = pathlib.Path(path).read_bytes()
  return len(data) > 1000 and data[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='session')
def ablation(tmp_path_factory):
  out = tmp_path_factory.mktemp('ablation')
  started = time.perf_counter()
  result = _study('activation_ablation', out)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return out, time.perf_counter() - started


@pytest.fixture(scope='session')
def degradation(tmp_path_factory):
  out = tmp_path_factory.mktemp('degradation')
  result = _study('degradation', out)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return out, result.stdout


@needs_cifar10
@on_the_studies_worker
def test_activation_ablation_smoke_writes_table_csv_and_plots(ablation):
  out, _ = ablation  # How long it took is the benchmarks' business, not a test's.
  rows = _csv(out / 'results.csv')
  assert [r['placement'] for r in rows] == ['original', 'bn_after_add']
  for column in ('dataset', 'placement', 'depth', 'seed', 'config.model.placement',
                 'train_error', 'test_error', 'wall_s', 'hardware', 'status'):
    assert column in rows[0], column
  for row in rows:
    assert row['status'] == 'ok'
    assert 0 <= float(row['test_error']) <= 100 and 0 <= float(row['train_error']) <= 100
  md = (out / 'results.md').read_text()
  assert '| 20 | original | 1/1 |' in md and '| 20 | bn_after_add | 1/1 |' in md
  assert 'python -m experiments.activation_ablation --budget smoke' in md
  for png in ('test_error_curves.png', 'train_loss_curves.png', 'init_gradient_ratio.png',
              'init_forward_growth.png'):
    assert _is_png(out / png), png
  # The init part: one record per placement of the budget, the ratios of every stage.
  init = [json.loads(line) for line in (out / 'init.jsonl').read_text().splitlines()]
  assert [r['placement'] for r in init] == list(activation_ablation.TRAINED)
  for record in init:
    assert len(record['input']) == 9 and record['loss'] > 0
    assert all(record[f'{kind}_{s}'] > 0 for kind in ('grad', 'growth') for s in (1, 2, 3))
  # One seed: every claim whose placements ran gets a computed verdict that says why it is
  # inconclusive (4 at init; bn_after_add against original in training).
  manifest = json.loads((out / 'results.json').read_text())
  assert len(manifest['hypotheses']) == 5
  assert {h['verdict'] for h in manifest['hypotheses']} == {'inconclusive'}
  assert '## Claims tested' in md and 'bn_after_add minus original' in md


@needs_cifar10
@on_the_studies_worker
def test_degradation_smoke_writes_table_verdict_and_fig6(degradation):
  out, stdout = degradation
  rows = _csv(out / 'results.csv')
  assert [(r['net'], r['depth']) for r in rows] == [
      ('plain', '20'), ('plain', '32'), ('residual', '20'), ('residual', '32')]
  assert all(r['status'] == 'ok' for r in rows)
  md = (out / 'results.md').read_text()
  assert '## Claims tested' in md and 'plain-32 minus plain-20' in md
  # One seed: the verdicts are computed, and say why they cannot be more than inconclusive.
  manifest = json.loads((out / 'results.json').read_text())
  assert [h['verdict'] for h in manifest['hypotheses']] == ['inconclusive'] * 3
  assert all('5 or more seeds can' in h['why'] for h in manifest['hypotheses'])
  assert _is_png(out / 'fig6_curves.png')


@needs_cifar10
@on_the_studies_worker
def test_rerun_skips_finished_runs(ablation):
  out, _ = ablation
  runs = sorted((out / 'runs').glob('*/*'))
  before = {path: path.stat().st_mtime_ns for path in runs}
  result = _study('activation_ablation', out)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.count('finished before, skipped') == 2, result.stdout
  assert 'submitted' not in result.stdout, result.stdout  # Ray was not even started.
  assert {path: path.stat().st_mtime_ns for path in runs} == before


@needs_cifar10
@on_the_studies_worker
def test_report_publishes_the_studies_between_markers(ablation, degradation, tmp_path):
  docs = tmp_path / 'results.md'
  docs.write_text('# Measured results\n\nHand-written part.\n')
  command = [sys.executable, '-m', 'experiments.report', '--docs', str(docs),
             '--results_dir', str(ablation[0]), str(degradation[0])]
  for _ in range(2):  # The second run replaces the generated part instead of adding another.
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            timeout=helpers.HANG_S)
    assert result.returncode == 0, result.stderr
  text = docs.read_text()
  assert text.startswith('# Measured results\n\nHand-written part.\n')
  assert text.count('<!-- experiments:begin') == 1 and text.count('<!-- experiments:end') == 1
  assert '### activation_ablation (smoke budget)' in text and '### degradation (smoke budget)' in text
  # The command that reproduces each study, with a results folder anyone can use.
  assert ('`python -m experiments.activation_ablation --budget smoke --results_dir '
          'results/activation_ablation-smoke`') in text
  assert '| 20 | bn_after_add | 1/1 |' in text  # The headline table of the study.
  assert _is_png(tmp_path / 'results' / 'degradation-smoke' / 'fig6_curves.png')


@needs_cifar10
@on_the_studies_worker
def test_the_report_rebuilds_a_study_from_its_committed_files_alone(degradation, tmp_path):
  """What docs/results/ commits (results.json, the files it lists, each run's metrics.jsonl and
  config.json) is enough to recompute the study's tables, plot and verdicts."""
  docs = tmp_path / 'results.md'
  docs.write_text('# Measured results\n')
  command = [sys.executable, '-m', 'experiments.report', '--docs', str(docs)]
  result = subprocess.run(command + ['--results_dir', str(degradation[0])], cwd=ROOT,
                          capture_output=True, text=True, timeout=helpers.HANG_S)
  assert result.returncode == 0, result.stderr
  folder = tmp_path / 'results' / 'degradation-smoke'
  assert sorted(p.name for p in (folder / 'runs').iterdir()) == [
      'plain-d20-s0', 'plain-d32-s0', 'residual-d20-s0', 'residual-d32-s0']
  assert not list((folder / 'runs').glob('*/checkpoints'))  # Curves and configs, not weights.
  before = {name: (folder / name).read_text() for name in ('results.md', 'results.csv')}
  verdicts = json.loads((folder / 'results.json').read_text())['hypotheses']
  for name in ('results.md', 'results.csv', 'fig6_curves.png'):
    (folder / name).unlink()
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=helpers.HANG_S)
  assert result.returncode == 0, result.stderr
  assert {name: (folder / name).read_text() for name in before} == before
  assert json.loads((folder / 'results.json').read_text())['hypotheses'] == verdicts
  assert _is_png(folder / 'fig6_curves.png')
  assert '### degradation (smoke budget)' in docs.read_text()


def test_the_committed_results_rebuild_to_the_same_verdicts_and_tables(tmp_path):
  """docs/results/ as committed: `experiments.report` recomputes every folder that holds its
  runs' rows (results.json), with the same verdicts and the same tables."""
  import shutil
  shutil.copytree(ROOT / 'docs', tmp_path / 'docs')
  folders = [f for f in (tmp_path / 'docs' / 'results').iterdir()
             if (f / 'results.json').exists()
             and json.loads((f / 'results.json').read_text()).get('rows')]
  assert folders, 'no committed study folder holds its rows'
  before = {f.name: (json.loads((f / 'results.json').read_text())['hypotheses'],
                     (f / 'results.csv').read_text()) for f in folders}
  result = subprocess.run([sys.executable, '-m', 'experiments.report', '--docs',
                           str(tmp_path / 'docs' / 'results.md')], cwd=ROOT,
                          capture_output=True, text=True, timeout=helpers.HANG_S)
  assert result.returncode == 0, result.stderr[-3000:]
  after = {f.name: (json.loads((f / 'results.json').read_text())['hypotheses'],
                    (f / 'results.csv').read_text()) for f in folders}
  assert after == before
  assert (tmp_path / 'docs' / 'results.md').read_text() == (ROOT / 'docs' / 'results.md').read_text()


@pytest.mark.slow
@needs_cifar10
@on_the_studies_worker
def test_sweep_killed_mid_run_resumes_to_the_same_results(degradation, tmp_path):
  out = tmp_path / 'killed'
  # Two of the study's four runs, with a checkpoint at step 10 of 20, which the smoke budget does
  # not save: that changes no result, but gives the runs names of their own,
  # plain-d20-s0-v<hash of the changed settings>. The kill is the point. (A resume between two
  # log steps, which needs the train metrics the checkpoint holds, is tests/test_resume.py's: the
  # driver's kill reaches the Ray worker too late to stop a 20-step run between them here.)
  command = [sys.executable, '-m', 'experiments.degradation', '--budget', 'smoke',
             '--results_dir', str(out), '--depths', '20', '--config.checkpoint_every_steps=10']
  proc = subprocess.Popen(command, cwd=ROOT, env=helpers.env(1), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  saved = lambda: [p for p in (out / 'runs').glob('plain-d20-s0-v*/checkpoints/*')
                   if p.name.isdigit() and int(p.name) < 20]
  deadline = time.time() + 300
  while not saved() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  os.killpg(proc.pid, signal.SIGKILL)  # Mid-run: a step before the 20th saved, the rest not.
  proc.wait()
  assert saved(), 'the run ended before a checkpoint could be seen'
  run_dir = saved()[0].parent.parent
  assert not (run_dir / 'summary.json').exists()
  result = subprocess.run(command, cwd=ROOT, env=helpers.env(1), capture_output=True, text=True,
                          timeout=helpers.HANG_S)
  assert result.returncode == 0, result.stderr[-3000:]
  # Resumed, not retrained: a run started afresh would give the same numbers. From step 10, or
  # from step 20 where the kill came after the last save and before the summary: the save of
  # step 10 finishes in the background, and ten steps of batch 32 can pass before it is seen.
  # (tests/test_runner_ray.py kills its runs at a step they cannot reach so fast.)
  log = (out / 'logs' / f'{run_dir.name}.log').read_text()
  assert re.search(r'Resumed from .* at step (10|20)\.', log), log[-2000:]
  columns = lambda rows: [(r['net'], r['depth'], r['test_error'], r['train_error'])
                          for r in rows if r['depth'] == '20']
  resumed, uninterrupted = _csv(out / 'results.csv'), _csv(degradation[0] / 'results.csv')
  assert columns(resumed) == columns(uninterrupted) and len(columns(resumed)) == 2


def test_paper_numbers_match_the_reference_file():
  reference = ROOT.parent / 'shared' / 'reference' / 'papers.md'
  if not reference.exists():
    pytest.skip(f'{reference} not found')
  text = reference.read_text()
  table2 = papers.paper_numbers()['identity_mappings_table2']
  rows = [line for line in text.splitlines() if line.startswith('| (')]
  assert len(rows) == 5
  for line, placement in zip(rows, ('original', 'bn_after_add', 'relu_before_add',
                                    'relu_only_preact', 'full_preact')):
    cells = [c.strip() for c in line.strip('|').split('|')]
    assert float(cells[1]) == table2['ResNet-110'][placement]
    assert float(cells[2]) == table2['ResNet-164'][placement]
  assert papers.paper_numbers()['resnet2015_table6']['residual'][20] == 8.75


def test_markdown_table_and_csv(tmp_path):
  rows = [{'a': 1, 'b': 2.5}, {'a': 2, 'c': None}]
  assert publish.markdown_table(rows, ['a', 'b']) == '| a | b |\n|---|---|\n| 1 | 2.50 |\n| 2 | - |'
  publish.write_csv(rows, tmp_path / 'r.csv')
  assert _csv(tmp_path / 'r.csv') == [{'a': '1', 'b': '2.5', 'c': ''}, {'a': '2', 'b': '', 'c': ''}]
  assert (tmp_path / 'r.csv').read_bytes().startswith(b'a,b,c\r\n1,2.5,\r\n')  # csv's line ends.
  before = (tmp_path / 'r.csv').read_bytes()

  class Unwritable:
    def __str__(self):
      raise OSError('No space left on device')

  with pytest.raises(OSError):  # A write that fails halfway leaves the old table whole.
    publish.write_csv([{'a': 3}, {'a': Unwritable()}], tmp_path / 'r.csv')
  assert (tmp_path / 'r.csv').read_bytes() == before


def _digits_run(seed: int) -> runner.Run:
  from configs import quickstart
  config = quickstart.get_config()
  config.seed = seed
  study.apply_budget(config, steps=20, batch_size=64, eval_split='test', evals=2, paper=False,
                     warmup_steps=0, unrolled=True)
  return runner.Run(name=f'digits-s{seed}', config=config, meta={'seed': seed})


def test_jobs_train_at_once_on_ray_with_the_results_of_one_at_a_time(tmp_path, capsys):
  runs = [_digits_run(0), _digits_run(1)]
  parallel = runner.run_sweep(runs, tmp_path / 'two', runner.Placement(jobs=2))
  assert 'submitted' in capsys.readouterr().out
  alone = runner.run_sweep(runs[:1], tmp_path / 'one')
  assert [r['status'] for r in parallel] == ['ok', 'ok']
  for key in ('train_error', 'test_error', 'eval_examples', 'steps'):
    assert parallel[0][key] == alone[0][key], key
  assert parallel[0]['test_error'] != parallel[1]['test_error'] or (
      parallel[0]['train_error'] != parallel[1]['train_error'])  # Two seeds, two runs.
  assert (tmp_path / 'two' / 'logs' / 'digits-s1.log').stat().st_size > 0
  # A rerun with jobs=2 trains nothing.
  again = runner.run_sweep(runs, tmp_path / 'two', runner.Placement(jobs=2))
  assert capsys.readouterr().out.count('finished before, skipped') == 2
  assert [r['test_error'] for r in again] == [r['test_error'] for r in parallel]


def test_a_run_selected_on_validation_reports_its_best_checkpoint_on_test(tmp_path):
  from resnet_jax.train import loop, trained
  run = _digits_run(0)
  study.select_on_validation(run.config)
  run.report_split = 'test'
  [row] = runner.run_sweep([run], tmp_path)
  assert row['status'] == 'ok' and row['selected_step'] in (10, 20), row
  weights = trained.open_weights(str(tmp_path / 'runs' / run.name), checkpoint='best')
  assert weights.step == row['selected_step']
  direct = loop.evaluate_weights(weights, 'test', 360)
  assert row['test_error'] == round(100 * (1 - direct['eval/accuracy']), 4)
  assert row['eval_examples'] == 360 and 0 <= row['val_error'] <= 100
  [again] = runner.run_sweep([run], tmp_path)  # Finished: skipped, and the row is the same.
  assert again == row


def _study_configs(budget):
  from experiments import degradation, gradient_flow, lesion
  ablation = activation_ablation.BUDGETS[budget]
  configs = [r.config for r in activation_ablation.build_runs(ablation, range(1), 'cifar10')]
  configs += [r.config for r in degradation.build_runs(budget, None, 'cifar10')]
  configs += [r.config for r in gradient_flow.build_runs(gradient_flow.BUDGETS[budget],
                                                         'cifar10', range(1))]
  configs += [lesion.net_config('cifar10', net, lesion.BUDGETS[budget], 0) for net in lesion.NETS]
  return configs


@pytest.mark.parametrize('budget', study.BUDGETS)
def test_every_budget_builds_configs_that_validate(budget):
  from resnet_jax import config_check, recipes
  for config in _study_configs(budget):
    config_check.validate(recipes.finalize(config))


def test_paper_budgets_follow_the_authors_code_and_the_shortened_ones_do_not():
  """fb.resnet.torch: Nesterov momentum, weight decay on BN and biases; the paper's schedule."""
  for config in _study_configs('paper'):
    assert config.optimizer == 'nesterov' and config.decay_bn_and_bias
    assert config.batch_size == 128 and config.learning_rate == 0.1
    assert tuple(config.lr_boundaries) == (32_000, 48_000)
  for config in _study_configs('cpu'):
    assert config.optimizer == 'momentum' and not config.decay_bn_and_bias


def test_the_ablation_arms_share_one_warm_up_and_an_lr_scaled_to_their_batch():
  """Every trained arm of a short budget gets the same linear warm-up to 0.1 x batch/128, and
  finalize keeps it (recipe=auto would otherwise pick a placement's own warm-up)."""
  from resnet_jax import recipes
  for name in ('smoke', 'cpu'):
    budget = activation_ablation.BUDGETS[name]
    configs = [recipes.finalize(r.config) for r in activation_ablation.build_runs(budget, range(1))]
    assert {c.model.placement for c in configs} == set(budget.placements)
    for config in configs:
      assert config.learning_rate == pytest.approx(0.1 * budget.batch_size / 128)
      assert (config.warmup_mode, config.warmup_steps) == ('linear', budget.steps // 4)


def test_a_run_process_sets_its_config_xla_and_a_contradiction_fails_only_that_run(
    tmp_path, monkeypatch):
  run = _digits_run(0)
  run.config.xla.cpu_concurrency_optimized_scheduler = False
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_enable_concurrency_optimized_scheduler=true')
  [row] = runner.run_sweep([run], tmp_path, runner.Placement(jobs=2))
  assert row['status'] == (
      'failed: config.xla.cpu_concurrency_optimized_scheduler=False contradicts XLA_FLAGS, which '
      'sets --xla_cpu_enable_concurrency_optimized_scheduler=true; drop one of them.')
  assert not (tmp_path / 'runs' / run.name / 'checkpoints').exists()


@pytest.mark.parametrize('module', ['experiments.activation_ablation', 'experiments.degradation',
                                    'experiments.gradient_flow', 'experiments.lesion'])
def test_a_bad_count_or_setting_is_one_line_before_anything_runs(module, tmp_path):
  cases = [(['--jobs=0'], "argument --jobs: invalid integer >= 1 value: '0'"),
           (['--seeds=-1'], "argument --seeds: invalid count (3) or list of seeds (3,4) value: "
                            "'-1'"),
           (['--seeds=2,2'], "argument --seeds: invalid count (3) or list of seeds (3,4) value: "
                             "'2,2'"),
           (['--steps=0'], "argument --steps: invalid integer >= 1 value: '0'"),
           # 2 steps put both boundaries on step 1 (one division by 10 fewer, silently); 1 step
           # on step 0, which named config.lr_boundaries, a key the command line never set.
           (['--steps=2'], '--steps=2: the shortened schedule divides the learning rate at 50% '
                           'and 75% of the steps, which needs at least 3 steps.'),
           (['--config.nope=1'], "--config.nope=1: the config has no key 'nope'"),
           (['--config.batch_size=big'], "--config.batch_size=big: batch_size takes int values"),
           (['--stesp=3'], "unrecognized argument '--stesp=3'"),
           (['--config.warmup_rule=loss'], "config.warmup_rule='loss' is not allowed"),
           (['--config.model.shortcut=Q'], "config.model: shortcut='Q' is not allowed"),
           (['--resources=TPU'], "argument --resources: invalid list of NAME=N (TPU=4) value: "
                                 "'TPU'"),
           (['--gpus_per_run=-1'], "argument --gpus_per_run: invalid number >= 0 value: '-1'"),
           (['--cluster=127.0.0.1:1'], '--cluster=127.0.0.1:1: no Ray cluster answers there '
                                       '(Connection refused); start one'),
           (['--cluster=auto', '--jobs=2'], '--jobs applies to the embedded local instance '
                                            'only'),
           # An empty --results_dir would name the current directory: the study would write
           # its runs there.
           (['--results_dir=', '--print_commands'],
            "argument --results_dir: invalid path (not empty) value: ''")]
  results = helpers.run_modules([
      (module, ['--budget=smoke', f'--results_dir={tmp_path / "r"}', *args], None)
      for args, _ in cases])
  for result, (args, message) in zip(results, cases):
    assert result.returncode == 2, (args, result.stderr[-2000:])
    assert message in result.stderr.strip().splitlines()[-1], (args, result.stderr[-500:])
    assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'r').exists()


def test_changed_settings_make_runs_of_their_own():
  from experiments import degradation
  plain = degradation.build_runs('cpu')
  assert [r.name for r in plain[:2]] == ['plain-d20-s0', 'plain-d20-s1']
  changed = degradation.build_runs('cpu', (3, 4), steps=50, depths=(20,), variant='-vabcdef',
                                   overrides=[('optimizer', 'nesterov')])
  assert [r.name for r in changed] == ['plain-d20-s3-vabcdef', 'plain-d20-s4-vabcdef',
                                       'residual-d20-s3-vabcdef', 'residual-d20-s4-vabcdef']
  assert {(r.config.num_train_steps, r.config.optimizer) for r in changed} == {(50, 'nesterov')}


def test_ablation_verdicts_are_computed_from_paired_init_seeds():
  # Five seeds where full_preact's gradient ratio beats every other placement's in every stage,
  # and relu_before_add's stream grows less than full_preact's: the three gradient claims are
  # shown, the growth claim is not, and no training claim is made without training runs.
  init = []
  for seed in range(5):
    for placement, grad, growth in (('full_preact', 4.0, 2.0), ('original', 2.0, 1.5),
                                    ('bn_after_add', 1.5, 1.0), ('relu_before_add', 3.0, 1.2)):
      ratios = {f'{kind}_{s}': value * (1 + 0.01 * seed)
                for kind, value in (('grad', grad), ('growth', growth)) for s in (1, 2, 3)}
      init.append({'placement': placement, 'depth': 110, 'seed': seed, **ratios})
  checked = activation_ablation.verdicts(init, [], 5)
  assert [(h['name'], h['verdict']) for h in checked] == [
      ('preact_gradient_does_not_attenuate_110', 'shown'),
      ('after_add_relu_attenuates_110', 'shown'),
      ('bn_after_add_impedes_propagation_110', 'shown'),
      ('relu_before_add_grows_the_stream_110', 'not shown')]
  assert checked[1]['n_seeds'] == 5 and abs(checked[1]['effect'] - 0.6931) < 1e-3
  # A placement not measured: its claims are left out, not given a verdict.
  partial = activation_ablation.verdicts([r for r in init if r['placement'] != 'original'], [], 5)
  assert 'after_add_relu_attenuates_110' not in [h['name'] for h in partial]


def test_a_report_that_cannot_publish_says_so_in_one_line_and_changes_nothing(tmp_path, capsys):
  """issue 21: a missing, file or garbage results dir, a docs path that is a folder, and a
  report that finds no study leave docs/results.md and docs/results/ byte for byte."""
  import hashlib
  from experiments import report
  docs = tmp_path / 'docs'
  (docs / 'results' / 'other-cpu').mkdir(parents=True)
  (docs / 'results' / 'other-cpu' / 'note.txt').write_text('kept')
  page = docs / 'results.md'
  page.write_text(f'# Measured results\n\nhand-written\n\n{report.BEGIN}\n## Studies\n\n'
                  f'### old (cpu budget)\n\ntext\n{report.END}\n')
  (tmp_path / 'afile').write_text('x')
  for name, content in (('garbage', '{not json'), ('alist', '[1, 2]'),
                        ('nostudy', '{"budget": "cpu", "files": []}'),
                        ('badstudy', '{"study": "nope", "budget": "cpu", "files": []}'),
                        ('badfiles', '{"study": "lesion", "budget": "cpu", "files": "x"}')):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'results.json').write_text(content)

  def digest():
    return {str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(docs.rglob('*')) if p.is_file()}

  before = digest()
  cases = [(['--results_dir', str(tmp_path / 'missing')], 'is not a directory'),
           (['--results_dir', str(tmp_path / 'afile')], 'is not a directory'),
           (['--results_dir', str(tmp_path / 'garbage')], 'cannot be read as JSON'),
           (['--results_dir', str(tmp_path / 'alist')], 'is not a JSON object'),
           (['--results_dir', str(tmp_path / 'nostudy')], "has no 'study'"),
           (['--results_dir', str(tmp_path / 'badstudy')], "has no 'study'"),
           (['--results_dir', str(tmp_path / 'badfiles')], "has no 'files' list"),
           (['--docs', str(docs)], 'must name a file in an existing directory'),
           # An empty path would name the current directory.
           (['--results_dir', ''], "argument --results_dir: invalid path (not empty) value: ''"),
           (['--docs', ''], "argument --docs: invalid path (not empty) value: ''")]
  for argv, message in cases:
    with pytest.raises(SystemExit) as exit_:
      report.main([*argv, '--docs', str(page)] if argv[0] != '--docs' else argv)
    err = capsys.readouterr().err.strip().splitlines()
    # One line, or argparse's usage and its one line.
    assert exit_.value.code == 2 and message in err[-1], (argv, err)
    assert len(err) == 1 or err[0].startswith('usage:'), (argv, err)
    assert digest() == before, argv
  # Nothing under docs/results/ holds a manifest: the old section stays, exit 1.
  assert report.main(['--docs', str(page)]) == 1
  assert 'is left as it was' in capsys.readouterr().err
  assert digest() == before


def test_a_second_study_on_a_results_dir_in_use_is_refused_before_it_writes(tmp_path):
  """issue 21: the study holds its results dir's lock, as a run holds its workdir's; the second
  one is one line, exit 2, and the dir holds nothing new."""
  from resnet_jax.train import workdir as workdir_lib
  out = tmp_path / 'busy'
  out.mkdir()
  with workdir_lib.lock(str(out), flag='--results_dir', holder='study'):
    result = subprocess.run(
        [sys.executable, '-m', 'experiments.degradation', '--budget', 'smoke',
         '--results_dir', str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=helpers.HANG_S)
  assert result.returncode == 2, result.stderr[-2000:]
  [line] = result.stderr.strip().splitlines()
  assert line.startswith(f'error: --results_dir={out} is in use by another study (pid '
                         f'{os.getpid()} on '), line
  assert line.endswith('; wait for it to finish, stop it, or choose another --results_dir.')
  assert sorted(p.name for p in out.iterdir()) == ['.lock']


def test_a_results_dir_whose_study_still_runs_is_not_published(tmp_path, capsys):
  """The report holds each --results_dir's lock while it reads it: a study running there (it
  holds the lock) is one line, exit 2, and docs/ stays as it was; once it is done, the folder
  publishes."""
  from experiments import report
  from resnet_jax.train import workdir as workdir_lib
  measured = tmp_path / 'degradation-cpu'
  shutil.copytree(os.path.join(ROOT, 'docs', 'results', 'degradation-cpu'), measured)
  page = tmp_path / 'docs' / 'results.md'
  (tmp_path / 'docs').mkdir()
  with workdir_lib.lock(str(measured), flag='--results_dir', holder='study'):
    with pytest.raises(SystemExit) as exit_:
      report.main(['--docs', str(page), '--results_dir', str(measured)])
  [line] = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2 and line.startswith(
      f'error: --results_dir={measured} is in use by another study (pid {os.getpid()}'), line
  assert sorted(p.name for p in (tmp_path / 'docs').iterdir()) == []
  assert report.main(['--docs', str(page), '--results_dir', str(measured)]) == 0
  assert (tmp_path / 'docs' / 'results' / 'degradation-cpu' / 'results.json').exists()


def test_a_study_refused_while_a_report_reads_its_folder_names_the_report(tmp_path, capsys):
  """The lock file names its holder: a study started while a report copies its folder is told
  that a report holds it (not 'another study'), and a lock file of an older version (the pid
  only) still reads as one line."""
  import contextlib
  from experiments import degradation, report
  out = tmp_path / 'degradation-smoke'
  out.mkdir()
  with contextlib.ExitStack() as stack:
    report.hold(stack, str(out))
    with pytest.raises(SystemExit) as exit_:
      degradation.main(['--budget', 'smoke', '--results_dir', str(out)])
  [line] = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2 and line.startswith(
      f'error: --results_dir={out} is in use by another report (pid {os.getpid()} on '), line
  (out / '.lock').write_text('pid 7 on elsewhere, started 2026-01-01T00:00:00')
  with open(out / '.lock') as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(SystemExit):
      degradation.main(['--budget', 'smoke', '--results_dir', str(out)])
  [line] = capsys.readouterr().err.strip().splitlines()
  assert line.startswith(f'error: --results_dir={out} is in use by another study (pid 7 on '
                         'elsewhere, started 2026-01-01T00:00:00); wait'), line
  assert sorted(p.name for p in out.iterdir()) == ['.lock']


@pytest.mark.parametrize('inside', ['', 'sub'])
def test_a_study_refuses_a_results_dir_in_a_training_run(tmp_path, inside):
  """A run's workdir typed for --results_dir (the run's folder, or one inside it) is one line,
  exit 2, and the run's files stay as they were."""
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text('{}')
  (run / 'metrics.jsonl').write_text('')
  before = helpers.tree_digest(run)
  out = run / inside if inside else run
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.degradation', '--budget', 'smoke', '--results_dir',
       str(out)], cwd=ROOT, capture_output=True, text=True, timeout=helpers.HANG_S)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [
      f'error: --results_dir={out} lies inside the training run {run}, whose files only the '
      'trainer writes; give a folder outside it.']
  assert helpers.tree_digest(run) == before and sorted(p.name for p in run.iterdir()) == [
      'config.json', 'metrics.jsonl']


def test_the_same_study_and_budget_from_other_hardware_is_published_beside_the_first(
    tmp_path, capsys):
  """--name publishes a results folder under a name of its own; two folders that would share one
  name, --name with two folders, a name that is no folder name, or one that holds another study
  are one line, and change nothing."""
  from experiments import report
  measured = tmp_path / 'degradation-cpu'
  shutil.copytree(os.path.join(ROOT, 'docs', 'results', 'degradation-cpu'), measured)
  lesion = tmp_path / 'lesion-cpu'
  shutil.copytree(os.path.join(ROOT, 'docs', 'results', 'lesion-cpu'), lesion)
  page = tmp_path / 'docs' / 'results.md'
  (tmp_path / 'docs' / 'results' / 'notes').mkdir(parents=True)
  (tmp_path / 'docs' / 'results' / 'notes' / 'kept.md').write_text('hand-written')
  assert report.main(['--docs', str(page), '--results_dir', str(measured)]) == 0
  before = page.read_text()
  for argv, message in (
      (['--results_dir', str(measured), str(measured)], 'would both be published as'),
      (['--results_dir', str(measured), str(measured), '--name', 'x'], 'publish them one at a'),
      (['--results_dir', str(measured), '--name', '../x'], 'is no folder name'),
      (['--results_dir', str(lesion), '--name', 'degradation-cpu'],
       'holds degradation (cpu budget), which publishing lesion (cpu budget) there would replace'),
      (['--results_dir', str(lesion), '--name', 'notes'], 'holds no study\'s results.json')):
    with pytest.raises(SystemExit) as exit_:
      report.main(['--docs', str(page), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and message in err[0], (argv, err)
    assert page.read_text() == before
  assert report.main(['--docs', str(page), '--results_dir', str(measured),
                      '--name', 'degradation-cpu-h200']) == 0
  text = page.read_text()
  assert sorted(p.name for p in (tmp_path / 'docs' / 'results').iterdir()) == [
      'degradation-cpu', 'degradation-cpu-h200', 'notes']
  assert (tmp_path / 'docs' / 'results' / 'notes' / 'kept.md').read_text() == 'hand-written'
  assert text.count('### degradation (cpu budget)\n') == 1
  assert '### degradation (cpu budget): degradation-cpu-h200\n' in text
  assert '--results_dir results/degradation-cpu-h200`' in text


def test_a_second_report_on_one_docs_folder_is_refused_and_changes_nothing(tmp_path, capsys):
  """Two reports on one docs/ would each stage, rename and rewrite results.md: the second is one
  line, exit 2, and docs/ is as it was (the lock is on the folder itself: no lock file in it)."""
  from experiments import report
  from resnet_jax.train import workdir as workdir_lib
  measured = tmp_path / 'degradation-cpu'
  shutil.copytree(os.path.join(ROOT, 'docs', 'results', 'degradation-cpu'), measured)
  docs = tmp_path / 'docs'
  docs.mkdir()
  page = docs / 'results.md'
  assert report.main(['--docs', str(page), '--results_dir', str(measured)]) == 0
  before = helpers.tree_digest(docs)
  with workdir_lib.lock_folder(str(docs), 'held by the test'):
    with pytest.raises(SystemExit) as exit_:
      report.main(['--docs', str(page), '--results_dir', str(measured)])
  [line] = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2 and line == (
      f'error: --docs={page}: another report is updating {docs}; wait for it to finish.'), line
  assert helpers.tree_digest(docs) == before
  assert report.main(['--docs', str(page)]) == 0  # Released: the next report goes on.


def test_a_report_that_is_killed_or_runs_out_of_disk_publishes_no_half_copy(tmp_path, capsys):
  """A copy into docs/results/ is made under a hidden name and renamed over the old folder: a
  half copy that a killed report left is not published by the next report, and a disk that fills
  up during the copy is one line, exit 1, with the old folder and docs/results.md as they were
  and nothing of the copy left."""
  from experiments import report
  measured = tmp_path / 'degradation-cpu'
  shutil.copytree(os.path.join(ROOT, 'docs', 'results', 'degradation-cpu'), measured)
  with helpers.tmpfs(tmp_path / 'disk', '600k') as disk:
    page = disk / 'results.md'
    assert report.main(['--docs', str(page), '--results_dir', str(measured)]) == 0
    # What a report killed in its copy leaves: a partial folder under the hidden staging name.
    (disk / 'results' / f'.degradation-cpu.new-{os.getpid() + 1}').mkdir()
    shutil.copyfile(measured / 'results.json',
                    disk / 'results' / f'.degradation-cpu.new-{os.getpid() + 1}' / 'results.json')
    assert report.main(['--docs', str(page)]) == 0
    assert page.read_text().count('### ') == 1, page.read_text()
    capsys.readouterr()
    before = helpers.tree_digest(disk)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / 'fill').write_bytes(b'\0' * max(0, free - 100 * 1024))  # 100 KiB left: too little.
    with pytest.raises(SystemExit) as exit_:
      report.main(['--docs', str(page), '--results_dir', str(measured)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and 'No space left on device' in err[0], err
    (disk / 'fill').unlink()
    assert helpers.tree_digest(disk) == before
