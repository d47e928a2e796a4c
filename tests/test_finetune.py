"""Fine-tuning (config.init_from, config.init_head): a fresh run starts from the given weights, with
a fresh optimiser state and step; a resumed run continues from its own checkpoint."""

import functools
import json
import shutil

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import quickstart
from resnet_jax import config_check, export, models, parallel
from resnet_jax.train import init_from, trained
from resnet_jax.train import run as run_lib
from resnet_jax.train.state import create_train_state
from tests import helpers
from tests import trained_run


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  return trained_run.quickstart_run(tmp_path_factory)[0]


@pytest.fixture(scope='module')
def exported(run, tmp_path_factory):
  path = tmp_path_factory.mktemp('exported') / 'quickstart.safetensors'
  export.export(str(run), 'latest', str(path))
  return path


def _config(**keys):
  config = quickstart.get_config()
  config.update(keys)
  return config


def _fresh(config):
  """A fresh train state of `config`'s model, as the trainer makes it, on one device."""
  par = parallel.DataParallel('shard_map', jax.devices()[:1])
  model = run_lib.model(config, False)
  tx = optax.sgd(0.1, momentum=0.9)
  state = par.init_replicated(
      functools.partial(create_train_state, model=model, tx=tx, image_shape=(8, 8, 1)),
      jax.random.key_data(jax.random.key(0)))
  return par, model, state


def _as_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def test_a_fresh_run_starts_from_the_file_or_the_workdir(run, exported, tmp_path):
  file = models.read_pretrained(str(exported)).variables
  config = _config(init_from=str(exported))
  par, model, state = _fresh(config)
  loaded = init_from.initialize(config, str(tmp_path / 'new'), state, model, par)
  helpers.assert_trees_equal(_as_numpy(loaded.params), file['params'])
  helpers.assert_trees_equal(_as_numpy(loaded.batch_stats), file['batch_stats'])
  # The optimiser state, step and RNG are the fresh run's.
  helpers.assert_trees_equal(_as_numpy(loaded.opt_state), _as_numpy(state.opt_state))
  assert int(loaded.step) == 0
  np.testing.assert_array_equal(loaded.rng, state.rng)

  # init_head=False: everything but the classifier, which stays the fresh one.
  config = _config(init_from=str(exported), init_head=False)
  loaded = init_from.initialize(config, str(tmp_path / 'new'), state, model, par)
  np.testing.assert_array_equal(loaded.params['head']['kernel'], state.params['head']['kernel'])
  np.testing.assert_array_equal(loaded.params['stage3_unit3']['conv2']['kernel'],
                                file['params']['stage3_unit3']['conv2']['kernel'])

  # A workdir and a step.
  config = _config(init_from=f'{run}:10')
  loaded = init_from.initialize(config, str(tmp_path / 'new'), state, model, par)
  helpers.assert_trees_equal(_as_numpy(loaded.params),
                             trained.load(str(run), '10').unrolled_variables()['params'])

  # A workdir with checkpoints resumes: the source is not even read.
  config = _config(init_from=str(tmp_path / 'gone.safetensors'))
  assert init_from.initialize(config, str(run), state, model, par) is state


def _with_head(source, target, classes):
  """A copy of weight file `source` whose classifier has `classes` outputs."""
  weights = models.read_pretrained(str(source))
  params = weights.variables['params']
  params['head'] = {'kernel': params['head']['kernel'][:, :classes],
                    'bias': params['head']['bias'][:classes]}
  model = models.from_config(weights.model_config, num_classes=classes)
  models.save_pretrained(str(target), weights.variables, model,
                         {**weights.model_config, 'num_classes': classes}, weights.data_config)


def test_weights_that_do_not_fit_are_one_clear_error(run, exported, tmp_path):
  par, model, state = _fresh(_config())
  new = str(tmp_path / 'new')

  def error(**keys):
    with pytest.raises(config_check.ConfigError) as e:
      init_from.initialize(_config(**keys), new, state, model, par)
    assert '\n' not in str(e.value)
    return str(e.value)

  five = tmp_path / 'five_classes.safetensors'
  _with_head(exported, five, 5)
  assert ('its classifier does not fit this model (2 differences, e.g. params/head/bias has shape '
          '(5,) in the weights, (10,) in this model') in error(init_from=str(five))
  assert 'set --config.init_head=false' in error(init_from=str(five))
  init_from.initialize(_config(init_from=str(five), init_head=False), new, state, model, par)

  deeper = models.create_model('cifar', 32, placement='full_preact', shortcut='B', scan=False)
  variables = deeper.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32), train=False)
  other = tmp_path / 'resnet32.safetensors'
  models.save_pretrained(str(other), variables, deeper, {'family': 'cifar', 'depth': 32}, {})
  assert ('the weights do not fit this model (60 differences, e.g. '
          'batch_stats/stage1_unit4/bn1/mean is not in this model') in error(init_from=str(other))
  assert 'does not exist' in error(init_from=str(tmp_path / 'missing.safetensors'))
  assert "checkpoint '7' is not a saved step" in error(init_from=f'{run}:7')
  with pytest.raises(config_check.ConfigError, match='config.init_from=\' \''):
    config_check.validate(_config(init_from=' '))


def test_fine_tuning_starts_from_the_weights_and_a_resumed_run_from_its_checkpoint(exported,
                                                                                   tmp_path):
  source = tmp_path / 'source.safetensors'
  shutil.copy(exported, source)
  workdir = tmp_path / 'finetune'
  # A learning rate of 0 leaves the params as step 0 had them: the checkpoint of step 1 shows them.
  overrides = (f'--config.init_from={source}', '--config.learning_rate=0',
               '--config.num_train_steps=2', '--config.checkpoint_every_steps=1',
               '--config.keep_checkpoints=5', '--config.eval_every_steps=2',
               '--config.log_every_steps=1')
  first = helpers.run_main(workdir, *overrides, timeout=1800)
  assert first.returncode == 0, first.stderr[-3000:]
  assert f'Initialised from {source}' in first.stderr
  assert 'the optimiser state and the step start fresh' in first.stderr
  _, state = helpers.final_params(workdir)
  file = models.read_pretrained(str(source)).variables
  at_step_1 = _read_step(workdir, 1)
  helpers.assert_trees_equal(at_step_1['params'], file['params'])
  assert int(at_step_1['step']) == 1
  assert json.loads((workdir / 'config.json').read_text())['init_from'] == str(source)

  # Interrupted after step 1: the rerun resumes from its own checkpoint, without the source file.
  shutil.rmtree(workdir / 'checkpoints' / '2')
  (workdir / 'summary.json').unlink()
  source.unlink()
  second = helpers.run_main(workdir, *overrides, timeout=1800)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Resumed from' in second.stderr and 'Initialised from' not in second.stderr
  _, resumed = helpers.final_params(workdir)
  helpers.assert_trees_equal(resumed['batch_stats'], state['batch_stats'])  # Exact resume.


def _read_step(workdir, step):
  """The saved state of `step`, as NumPy (helpers.final_params reads the newest)."""
  path = workdir / 'checkpoints' / str(step) / 'state'
  with ocp.PyTreeCheckpointer() as reader:
    metadata = reader.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    return reader.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
