"""python -m resnet_jax.evaluate: exact counts on any split, read-only, while the run holds its
lock; and one line for each bad argument, for it and for predict, export and convert."""

import fcntl
import json
import shutil

import pytest

from tests import helpers
from tests import trained_run


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  return trained_run.quickstart_run(tmp_path_factory)[0]


def test_evaluate_is_exact_and_changes_nothing_while_the_run_holds_its_lock(run):
  before = trained_run.snapshot(run)
  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  evals = {r['step']: r for r in records if 'eval/accuracy' in r}
  best = max(evals, key=lambda s: (evals[s]['eval/accuracy'], -s))
  with open(run / '.lock') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # As a training run holds it.
    results = helpers.run_modules([
        ('resnet_jax.evaluate', [f'--workdir={run}'], {}),
        ('resnet_jax.evaluate', [f'--workdir={run}', '--checkpoint=latest',
                                 '--split=train[:100]', '--eval_batch_size=64'], {}),
    ], timeout=1800)
  for result in results:
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
  assert trained_run.snapshot(run) == before  # Checkpoints, metrics, config: bytes and mtimes.

  # The best checkpoint by eval accuracy, on the run's eval split: the trainer's own numbers.
  default = json.loads((run / f'eval_test_{best}.json').read_text())
  assert default['step'] == best and default['split'] == 'test'
  assert default['eval/num_examples'] == 360
  assert default['eval/accuracy'] == pytest.approx(evals[best]['eval/accuracy'], abs=1e-6)
  assert default['eval/loss'] == pytest.approx(evals[best]['eval/loss'], rel=1e-5)
  assert f'step {best} (best eval accuracy)' in results[0].stdout
  assert f'top-1 {100 * default["eval/accuracy"]:.2f}%' in results[0].stdout
  # Any split, with a batch size that pads the last batch: every example counted once.
  other = json.loads((run / f'eval_train__100__{trained_run.STEPS}.json').read_text())
  assert other['split'] == 'train[:100]' and other['eval/num_examples'] == 100
  assert 0 <= other['eval/accuracy'] <= other['eval/top5_accuracy'] <= 1


def _bad(module, *args, words):
  return module, [str(a) for a in args], words


def test_bad_arguments_end_in_one_line_with_exit_code_2(run, tmp_path):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'not_an_image.png').write_text('hello')
  (tmp_path / 'not_weights.safetensors').write_bytes(b'\x00' * 64)
  (tmp_path / 'a_dir').mkdir()
  steps = '10, 20'
  # A run's files are untrusted input too: a config.json of the wrong shape (and no config saved
  # with the checkpoints, which is read first).
  for name, text in (('listconfig', '[1]'), ('badmodel', '{"model": 3}')):
    shutil.copytree(run, tmp_path / name, ignore=shutil.ignore_patterns('.lock'))
    for saved in (tmp_path / name / 'checkpoints').glob('*/config'):
      shutil.rmtree(saved)
    (tmp_path / name / 'config.json').write_text(text)
  rows = [
      _bad('resnet_jax.evaluate', f'--workdir={tmp_path}/listconfig',
           words=['listconfig records a config that is a JSON list, not an object']),
      _bad('resnet_jax.export', f'--workdir={tmp_path}/badmodel', f'--out={tmp_path}/m',
           words=['badmodel records a config that does not fit configs/schema.py',
                  'config.model=3 must be a ConfigDict']),
      _bad('resnet_jax.evaluate', f'--workdir={run}', '--checkpoint=7',
           words=['--checkpoint=7 is not a saved step', f'saved steps: {steps}']),
      _bad('resnet_jax.evaluate', f'--workdir={run}', '--checkpoint=newest',
           words=['--checkpoint=newest is no checkpoint', 'best, latest or a step number']),
      _bad('resnet_jax.evaluate', f'--workdir={tmp_path}/nope', words=['nope does not exist']),
      _bad('resnet_jax.evaluate', f'--workdir={tmp_path}/empty',
           words=['empty holds no checkpoint']),
      _bad('resnet_jax.evaluate', f'--workdir={run}', '--split=validation',
           words=["--split=validation", "'validation'", "'train', 'test'"]),
      # A split of the command line, not of a config: no config key is named.
      _bad('resnet_jax.evaluate', f'--workdir={run}', '--split=test[:0]',
           words=["--split=test[:0]: Split 'test[:0]' of dataset 'digits' selects 0 examples "
                  "(the splits hold 'train': 1437, 'test': 360)."]),
      _bad('resnet_jax.evaluate', words=['give either --workdir', 'or --model']),
      # Empty paths would name the current directory.
      _bad('resnet_jax.evaluate', '--workdir=',
           words=['--workdir= is empty; give it a value, or leave the flag out.']),
      _bad('resnet_jax.export', f'--workdir={run}', '--out=',
           words=['--out= is empty; give it a value.']),
      _bad('resnet_jax.predict', '--model=', f'{tmp_path}/x.png', words=['--model= is empty']),
      _bad('resnet_jax.evaluate', f'--workdir={run}', f'--model={tmp_path}/m.safetensors',
           words=['not both']),
      _bad('resnet_jax.evaluate', f'--model={tmp_path}/not_weights.safetensors',
           words=['not_weights.safetensors is not a safetensors file']),
      _bad('resnet_jax.evaluate', f'--workdir={run}', '--eval_batch_size=0',
           words=['--eval_batch_size=0 must be positive']),
      _bad('resnet_jax.predict', f'--workdir={run}', words=['give one or more image files']),
      _bad('resnet_jax.predict', f'--workdir={run}', f'{tmp_path}/missing.png',
           words=['missing.png does not exist']),
      _bad('resnet_jax.predict', f'--workdir={run}', f'{tmp_path}/not_an_image.png',
           words=['not_an_image.png cannot be read as an image']),
      _bad('resnet_jax.predict', f'--model={tmp_path}/none.safetensors', 'x.png',
           words=['none.safetensors does not exist']),
      _bad('resnet_jax.export', f'--workdir={run}', words=['--out must be given']),
      _bad('resnet_jax.export', f'--workdir={run}', f'--out={tmp_path}/no/dir/m.safetensors',
           words=['the directory', 'does not exist']),
      _bad('resnet_jax.export', f'--workdir={run}', f'--out={tmp_path}/a_dir',
           words=['a_dir is a directory']),
      _bad('resnet_jax.export', f'--workdir={run}', '--checkpoint=5', f'--out={tmp_path}/m',
           words=['--checkpoint=5 is not a saved step']),
      _bad('resnet_jax.convert', '--arch=resnet50', words=['give IN and OUT']),
      _bad('resnet_jax.convert', '--arch=resnet51', 'a', 'b',
           words=['--arch', 'resnet50']),
      _bad('resnet_jax.convert', '--arch=resnet18', f'{tmp_path}/in.safetensors',
           f'{tmp_path}/out.safetensors', words=['in.safetensors does not exist']),
      _bad('resnet_jax.convert', '--arch=resnet18', f'{tmp_path}/not_weights.safetensors',
           f'{tmp_path}/out.safetensors', words=['cannot be read as a safetensors file']),
      _bad('resnet_jax.convert', '--arch=resnet18', f'{tmp_path}/not_an_image.png',
           f'{tmp_path}/out.safetensors', words=['give a .pth', '.safetensors file']),
  ]
  try:
    import torch  # noqa: F401  # pylint: disable=unused-import,import-outside-toplevel
  except ImportError:
    (tmp_path / 'weights.pth').write_bytes(b'PK')
    rows.append(_bad('resnet_jax.convert', '--arch=resnet18', f'{tmp_path}/weights.pth',
                     f'{tmp_path}/out.safetensors', words=['torch is not installed']))
  results = helpers.run_modules([(module, args, {}) for module, args, _ in rows], timeout=1800)
  failures = []
  for (module, args, words), result in zip(rows, results):
    lines = result.stderr.strip().splitlines()
    last = lines[-1] if lines else ''
    problems = [f'exit code {result.returncode}'] if result.returncode != 2 else []
    problems += ['a traceback'] if 'Traceback' in result.stderr else []
    problems += ['not one error line'] if sum(l.startswith('error: ') for l in lines) != 1 else []
    problems += [f'no {w!r}' for w in words if w not in last]
    if problems:
      failures.append(f'python -m {module} {" ".join(args)}: {"; ".join(problems)}\n{last}')
  assert not failures, '\n\n'.join(failures)
  assert not list(tmp_path.glob('out.safetensors*')) and not list(run.glob('eval_*_5.json'))


def test_helpshort_lists_each_commands_flags():
  commands = {'resnet_jax.evaluate': ['--workdir', '--checkpoint', '--split'],
              'resnet_jax.predict': ['--workdir', '--model', '--top'],
              'resnet_jax.export': ['--workdir', '--out'],
              'resnet_jax.convert': ['--from', '--arch', '--crop_fraction']}
  results = helpers.run_modules([(m, ['--helpshort'], {}) for m in commands], timeout=1800)
  for (module, flags), result in zip(commands.items(), results):
    assert result.returncode == 0, (module, result.stderr[-2000:])
    for flag in flags:
      assert flag in result.stdout, (module, result.stdout)
