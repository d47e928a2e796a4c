"""Every bad input on the command line ends in one line, `error: ...` on stderr, that names the key,
file or path and what to do, with exit code 2: no traceback, no dump of every flag, and nothing
written to the workdir.

Each row is a command line (`{tmp}` stands for the test's tmp_path), the words the message must
hold and the exit code. Rows run the quickstart config (offline digits) unless the config is the
point. A group of rows runs in one interpreter that imports JAX once and forks a child per row
(helpers.run_modules), so the whole table costs seconds, not an import of JAX per row.
"""

import shutil
import subprocess
import textwrap

import pytest

from resnet_jax import cli
from resnet_jax.errors import RunError, UserError
from tests import helpers

QUICK = '--config=configs/quickstart.py'
CIFAR = '--config=configs/cifar10_resnet20.py'
D = '--config.distributed'
COORDINATOR = f'{D}.coordinator_address=localhost:1234'

FILES = {
    'syntax_error.py': 'def get_config(:\n  pass\n',
    'no_get_config.py': 'CONFIG = {}\n',
    'raises.py': "def get_config():\n  raise RuntimeError('the config is broken')\n",
    'import_error.py': 'from configs import no_such_config\n',
    'returns_none.py': 'def get_config():\n  pass\n',
    'needs_arg.py': 'from configs import schema\n\n'
                    'def get_config(arg):\n  return schema.get_config()\n',
    'incomplete.py': textwrap.dedent("""\
        from configs import schema

        def get_config():
          config = schema.get_config()
          del config['data']
          del config.model['depth']
          return config
        """),
    'typo_key.py': textwrap.dedent("""\
        from configs import quickstart

        def get_config():
          config = quickstart.get_config()
          config.data.agument = 'none'
          return config
        """),
    'wrong_type.py': textwrap.dedent("""\
        import ml_collections
        from configs import quickstart

        def get_config():
          config = quickstart.get_config().to_dict()
          config['batch_size'] = '128'
          return ml_collections.ConfigDict(config)
        """),
}


def row(*args, words, code=2, env=None, module='resnet_jax.main', workdir=True):
  """A command line of `module`; resnet_jax.main rows get a fresh --workdir unless `workdir` is
  False."""
  return dict(args=args, words=words, code=code, env=env or {}, module=module,
              workdir=workdir and module == 'resnet_jax.main')


GROUPS = {
    # Unknown keys and typos: ml_collections' "did you mean", not its KeyError traceback.
    'unknown keys': [
        row(QUICK, '--config.foo=1', words=["config has no key 'foo'", 'configs/schema.py']),
        row(QUICK, '--config.batch_szie=3',
            words=['batch_szie', 'did you mean --config.batch_size?']),
        row(QUICK, '--config.model.depht=20',
            words=['depht', 'did you mean --config.model.depth?']),
        row(QUICK, '--config.data.agument=none', words=['did you mean --config.data.augment?']),
        row(QUICK, f'{D}.proces_id=0', words=['did you mean --config.distributed.process_id?']),
        row(QUICK, '--config.foo.bar=1', words=["config has no key 'foo'"]),
        row(QUICK, '--config.batch_size.x=1',
            words=['config.batch_size is a value', '--config.batch_size=VALUE']),
        row(QUICK, '--config.model=3',
            words=['config.model is a group of keys', 'depth', '--config.model.KEY=VALUE']),
    ],
    # Values that do not parse as the key's type.
    'unparsable values': [
        row(QUICK, '--config.batch_size=abc',
            words=['config.batch_size takes an integer', "'abc'"]),
        row(QUICK, '--config.model.depth=1.5',
            words=['config.model.depth takes an integer', "'1.5'"]),
        row(QUICK, '--config.seed=1e3', words=['config.seed takes an integer']),
        row(QUICK, '--config.learning_rate=fast', words=['config.learning_rate takes a number']),
        row(QUICK, '--config.model.scan=maybe', words=['config.model.scan takes true or false']),
        row(QUICK, f'{D}.num_processes=two', words=['num_processes takes an integer', "'two'"]),
        row(QUICK, '--config.lr_boundaries=abc', words=['config.lr_boundaries', 'numbers only']),
        row(QUICK, "--config.data.mean=(1, 'a')", words=['config.data.mean', 'numbers only']),
    ],
    # Values that parse but cannot train: rejected before anything compiles.
    'values that cannot train': [
        row(QUICK, '--config.learning_rate=inf', words=['config.learning_rate=inf', 'finite']),
        row(QUICK, '--config.learning_rate=nan', words=['config.learning_rate=nan', 'finite']),
        row(QUICK, '--config.weight_decay=-inf', words=['config.weight_decay=-inf', 'finite']),
        row(QUICK, '--config.data.std=(1e999,)', words=['config.data.std=(inf,)', 'finite']),
        row(QUICK, '--config.data.std=(0.0,)', words=['config.data.std=(0.0,)', '> 0']),
        row(QUICK, '--config.data.std=(-1.0,)', words=['config.data.std=(-1.0,)', '> 0']),
        row(QUICK, '--config.data.mean=(77.0, 77.0)',
            words=['config.data.mean=(77.0, 77.0)', 'one value per image channel']),
        row(QUICK, '--config.lr_decay_factor=0', words=['config.lr_decay_factor=0', '> 0']),
        row(QUICK, '--config.lr_decay_factor=-0.1', words=['config.lr_decay_factor=-0.1', '> 0']),
        row(QUICK, '--config.data.pad=-1', words=['config.data.pad=-1', '>= 0']),
        row(QUICK, '--config.data.crop_fraction=0',
            words=['config.data.crop_fraction=0', '(0, 1]']),
        row(QUICK, '--config.data.crop_fraction=1.5', words=['config.data.crop_fraction=1.5']),
        row(QUICK, '--config.batch_size=0', words=['config.batch_size=0', 'positive integer']),
        row(QUICK, '--config.eval_batch_size=-5', words=['config.eval_batch_size=-5', 'positive']),
        row(QUICK, '--config.keep_checkpoints=0', words=['config.keep_checkpoints=0', 'positive']),
        row(QUICK, '--config.seed=-1', words=['config.seed=-1', '[0, 2**32)']),
        row(QUICK, '--config.momentum=1.0', words=['config.momentum=1.0', '[0, 1)']),
        row(QUICK, '--config.learning_rate=-0.1', words=['config.learning_rate=-0.1', '>= 0']),
        row(QUICK, '--config.data.image_size=0', words=['config.data.image_size=0', 'positive']),
        row(QUICK, '--config.optimizer=adam', words=["config.optimizer='adam'", "'nesterov'"]),
        row(QUICK, '--config.data.train_split=train[:0]',
            words=["config.data.train_split='train[:0]'", 'selects 0 examples', "'train': 1437"]),
        row(QUICK, '--config.data.eval_split=test[360:]',
            words=["config.data.eval_split='test[360:]'", 'selects 0']),
        row(QUICK, '--config.data.train_split=validation',
            words=["config.data.train_split='validation'", "split 'validation'", "'train'"]),
        # tfds's message for a split it cannot parse has two lines: joined into the one.
        row(QUICK, '--config.data.eval_split=test[:50',
            words=["config.data.eval_split='test[:50'", 'Unrecognized split format']),
    ],
    'config files': [
        row('--config=configs/nope.py', words=["'configs/nope.py' does not exist"]),
        row('--config=configs/quickstat.py', words=['did you mean configs/quickstart.py?']),
        row('--config=configs', words=["'configs' is a directory"]),
        row('--config=', words=["config file '' does not exist"]),
        row('--config={tmp}/syntax_error.py',
            words=['syntax_error.py has a syntax error on line 1']),
        row('--config={tmp}/no_get_config.py',
            words=['no_get_config.py defines no get_config()']),
        row('--config={tmp}/raises.py',
            words=['raises.py raised RuntimeError', 'the config is broken']),
        row('--config={tmp}/import_error.py',
            words=['loading', 'import_error.py raised ImportError', 'no_such_config']),
        row('--config={tmp}/returns_none.py',
            words=['returns_none.py returns a config that cannot work', 'NoneType']),
        row('--config={tmp}/needs_arg.py', words=['needs_arg.py needs an argument']),
        row('--config={tmp}/incomplete.py',
            words=['missing keys config.data, config.model.depth', 'configs/schema.py']),
        row('--config={tmp}/typo_key.py',
            words=['unknown key config.data.agument', 'did you mean config.data.augment?']),
        row('--config={tmp}/wrong_type.py',
            words=["config.batch_size='128' must be an integer"]),
    ],
    # Arguments of a config file, FILE:ARG.
    'config arguments': [
        row('--config=configs/cifar10.py:depth=abc',
            words=['configs/cifar10.py:depth=abc', "depth='abc' must be an integer"]),
        row('--config=configs/cifar10.py:depth', words=["'depth' is not key=value", 'depth=110']),
        row('--config=configs/cifar10.py:recipe=2017', words=['recipe', '2017']),
        row('--config=configs/cifar10.py:colour=red',
            words=["colour='red' is not a model key", 'placement']),
        row('--config=configs/cifar10.py:scan=maybe',
            words=["scan='maybe' must be true or false"]),
        row('--config=configs/cifar10.py:width=wide', words=["width='wide' must be a number"]),
        row('--config=configs/cifar10.py:depth=20,depth=56', words=['depth is given twice']),
        row('--config=configs/quickstart.py:depth=20',
            words=['configs/quickstart.py takes no argument', '--config.KEY=VALUE']),
    ],
    # Checked before jax.distributed.initialize would fail with a traceback or wait forever.
    'distributed settings': [
        row(QUICK, f'{D}.initialize=on',
            words=["initialize='on' needs a coordinator", 'coordinator_address=HOST:PORT']),
        row(QUICK, f'{D}.initialize=yes', words=["initialize='yes' is not allowed", "'auto'"]),
        row(QUICK, f'{D}.num_processes=2', words=['coordinator_address, process_id missing']),
        row(QUICK, COORDINATOR, words=['num_processes, process_id missing']),
        row(QUICK, f'{D}.coordinator_address=localhost', f'{D}.num_processes=2',
            f'{D}.process_id=0', words=["coordinator_address='localhost' is not HOST:PORT"]),
        row(QUICK, COORDINATOR, f'{D}.num_processes=0', f'{D}.process_id=0',
            words=['num_processes=0 must be >= 1']),
        row(QUICK, COORDINATOR, f'{D}.num_processes=2', f'{D}.process_id=2',
            words=['process_id=2 is not in [0, num_processes=2)']),
        row(QUICK, COORDINATOR, f'{D}.num_processes=2', f'{D}.process_id=-1',
            words=['process_id=-1 is not in [0, num_processes=2)']),
        row(QUICK, f'{D}.initialize=off', f'{D}.process_id=1',
            words=["initialize='off' contradicts process_id=1"]),
        row(QUICK, f'{D}.process_id=1', env={'SLURM_JOB_ID': '1'},
            words=['process_id=1 is given without num_processes']),
    ],
    'flags': [
        row('--workdir={tmp}/run', workdir=False, words=['--config must be given']),
        row(QUICK, workdir=False, words=['--workdir must be given']),
        # Empty, it would name the current directory: the run trained there.
        row(QUICK, '--workdir=', workdir=False,
            words=['error: --workdir= is empty; give it a value.']),
        row(QUICK, '--workdri={tmp}/run', workdir=False,
            words=["Unknown command line flag 'workdri'", 'workdir']),
        row(QUICK, 'train', words=["unexpected arguments ['train']"]),
        row('--config.batch_size=3', QUICK,
            words=['--config.batch_size=3', 'before a value for --config']),
    ],
    # python -m resnet_jax.summary: the same one line, not its 59 lines of flag help.
    'summary': [
        row(module='resnet_jax.summary', words=['give --config=FILE', '--table']),
        row('--config=configs/schema.py', '--depth=56', module='resnet_jax.summary',
            words=["Unknown command line flag 'depth'"]),
        row('--config=configs/cifar10.py:depth=abc', module='resnet_jax.summary',
            words=["depth='abc' must be an integer"]),
        row('--config=configs/cifar10.py', '--config.model.depth=21', module='resnet_jax.summary',
            words=['depth=21 is not a cifar depth']),
        row('--config=configs/cifar10.py', '--config.model.dtype=float64',
            module='resnet_jax.summary', words=["dtype='float64'"]),
        row('extra', module='resnet_jax.summary', words=["unexpected arguments ['extra']"]),
        row('--config=configs/nope.py', module='resnet_jax.summary', words=['does not exist']),
        row('--config=configs/schema.py', '--config.model.depht=56', module='resnet_jax.summary',
            words=['did you mean --config.model.depth?']),
    ],
    # python -m benchmarks.compile_time: the same one line as every other command.
    'compile_time': [
        row('--nope', module='benchmarks.compile_time', words=["Unknown command line flag 'nope'"]),
        row('--depth=21', module='benchmarks.compile_time', words=['depth=21', '20, 32, 44']),
        row('--placement=foo', module='benchmarks.compile_time',
            words=["placement='foo'", "'full_preact'"]),
        row('--scan=maybe', module='benchmarks.compile_time', words=["--scan: 'maybe'"]),
        row('--batch=0', module='benchmarks.compile_time', words=['--batch=0', 'at least 1']),
        # An empty list timed nothing, exit 0.
        row('--scan=', module='benchmarks.compile_time',
            words=['--scan is empty; give true, false or both.']),
    ],
    # python -m benchmarks.op_profile: --steps=0 failed on its empty profile ('a bug').
    'op_profile': [
        row('--steps=0', module='benchmarks.op_profile', words=['--steps=0 must be at least 1.']),
        row('--top=-1', module='benchmarks.op_profile', words=['--top=-1 must be at least 0.']),
        row('--warmup=-2', module='benchmarks.op_profile',
            words=['--warmup=-2 must be at least 0.']),
    ],
}


def _problems(result, words, code, workdir) -> list[str]:
  """What is wrong with how a bad input ended; [] when it ended in the one expected line."""
  lines = result.stderr.strip().splitlines()
  last = lines[-1] if lines else ''
  problems = []
  if result.returncode != code:
    problems.append(f'exit code {result.returncode}, not {code}')
  if 'Traceback' in result.stderr:
    problems.append('a traceback')
  if 'USAGE' in result.stdout + result.stderr or 'flags:' in result.stderr:
    problems.append('a dump of the flags')
  if not last.startswith('error: ') or sum(l.startswith('error: ') for l in lines) != 1:
    problems.append('not one line "error: ..." at the end of stderr')
  problems += [f'no {word!r} in the message' for word in words if word not in last]
  if helpers.workdir_files(workdir):  # Rejected before training: no checkpoint, no config.json.
    problems.append(f'wrote {helpers.workdir_files(workdir)} to the workdir')
  return problems


def _run_rows(tmp_path, rows):
  """Runs the rows; fails naming every row that did not end as it should, with its stderr."""
  commands, workdirs = [], []
  for i, r in enumerate(rows):
    workdirs.append(tmp_path / f'run{i}')
    args = [a.format(tmp=tmp_path) for a in r['args']]
    commands.append((r['module'], args + [f'--workdir={workdirs[-1]}'] * r['workdir'], r['env']))
  failures = []
  for r, (module, args, _), result, workdir in zip(rows, commands, helpers.run_modules(commands),
                                                   workdirs):
    problems = _problems(result, r['words'], r['code'], workdir)
    if problems:
      failures.append(f'python -m {module} {" ".join(args)}: {"; ".join(problems)}\n'
                      f'{result.stderr[-1500:]}')
  assert not failures, '\n\n'.join(failures)


def test_the_table_has_at_least_60_bad_inputs():
  assert sum(map(len, GROUPS.values())) >= 60


@pytest.mark.parametrize('group', GROUPS)
def test_bad_inputs_end_in_one_line_with_exit_code_2(tmp_path, group):
  for name, text in FILES.items():
    (tmp_path / name).write_text(text)
  _run_rows(tmp_path, GROUPS[group])


SHARD = 'cifar10-train.array_record-00002-of-00004'
# How each damage to a copy of CIFAR-10 must be reported, besides how to rebuild the data.
DAMAGED_DATA = {
    'truncate': [SHARD, 'not an ArrayRecord file'],
    'garbage': [SHARD, 'not an ArrayRecord file'],
    'delete': [SHARD, 'is missing', 'does not train on part of a split'],
    'dataset_info.json': ['dataset_info.json cannot be read', 'JSONDecodeError'],
}


def test_damaged_data_ends_in_one_line_with_exit_code_2(tmp_path):
  source = helpers.shared_tfds_dataset()
  if source is None:
    pytest.skip('CIFAR-10 is not prepared in TFDS_DATA_DIR (../shared/data/tfds)')
  rows = []
  for kind, words in DAMAGED_DATA.items():
    data_dir = tmp_path / kind
    copy = helpers.tfds_copy(source, data_dir)
    if kind == 'dataset_info.json':
      (copy / kind).unlink()
      (copy / kind).write_text('{"name": "cifar10", "splits": [')
    else:
      helpers.damage(copy, kind, SHARD)
    rows.append(row(CIFAR, f'--config.data.data_dir={data_dir}', words=[
        *words, f'tfds build cifar10 --data_dir={data_dir} --file_format=array_record',
        "pip install 'resnet_jax[prepare]'"]))
  nothing = tmp_path / 'no_data'
  rows.append(row(CIFAR, f'--config.data.data_dir={nothing}', words=[
      f"Dataset 'cifar10' is not prepared in {nothing}", 'TFDS_DATA_DIR', 'tfds build cifar10']))
  _run_rows(tmp_path, rows)


def test_the_console_script_helpshort_lists_its_flags():
  # absl lists the flags of the module that sys.argv[0] names: the script, not resnet_jax.main.
  script = shutil.which('resnet-jax') or str(helpers.ROOT / '.venv' / 'bin' / 'resnet-jax')
  result = subprocess.run([script, '--helpshort'], capture_output=True, text=True,
                          timeout=helpers.HANG_S,
                          env=helpers.env())
  for flag in ('--config', '--workdir'):
    assert flag in result.stdout, result.stdout
  assert result.returncode == 0, result.stderr[-2000:]


def _fails_with(error):
  @cli.one_line_errors
  def main():
    raise error
  return main


@pytest.mark.parametrize('error, code, line', [
    (UserError('--results_dir=x: not writable.'), 2, 'error: --results_dir=x: not writable.'),
    (RunError('the run diverged at step 3.'), 1, 'error: the run diverged at step 3.'),
    (IsADirectoryError(21, 'Is a directory', '/tmp/out'), 1,
     'error: /tmp/out: Is a directory (RESNET_JAX_DEBUG=1 shows the traceback)'),
    (KeyError('model'), 1, "error: unexpected KeyError: 'model' (a bug: RESNET_JAX_DEBUG=1 shows "
                           'the traceback)'),
])
def test_every_command_s_errors_end_in_one_line_unless_debug_asks(error, code, line, capsys,
                                                                  monkeypatch):
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  with pytest.raises(SystemExit) as exit_:
    _fails_with(error)()
  assert exit_.value.code == code
  assert capsys.readouterr().err == line + '\n'
  monkeypatch.setenv(cli.DEBUG_ENV, '1')  # The traceback, for a bug report.
  with pytest.raises(type(error)):
    _fails_with(error)()
