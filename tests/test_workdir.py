"""A workdir recorded before a key existed in configs/schema.py still resumes.

A new key defaults to the behaviour from before it existed, so a recorded config that lacks it
ran with its default value: the default is no change, any other value is. (Before this, every
new key made every existing workdir and finished experiment run refuse to resume.)
"""

import json

import pytest

from configs import schema
from resnet_jax import recipes
from resnet_jax.train import workdir as workdir_lib
from tests import helpers

KEY = ('model', 'resnet_d')  # Any key works; this one defaults to False.


def _config(**model):
  config = schema.get_config()
  for name, value in model.items():
    config.model[name] = value
  return recipes.finalize(config)


def _recorded_before_the_key(tmp_path):
  """config.json of a run recorded before config.model.resnet_d existed."""
  recorded = workdir_lib.as_dict(_config())
  del recorded[KEY[0]][KEY[1]]
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(recorded))
  return recorded


def test_a_key_added_since_the_run_was_recorded_at_its_default_is_no_change(tmp_path):
  recorded = _recorded_before_the_key(tmp_path)
  assert workdir_lib.result_changes(recorded, workdir_lib.as_dict(_config())) == []
  workdir_lib.check_same_run(str(tmp_path), _config())  # Resumes: no error.


def test_a_key_added_since_the_run_was_recorded_at_another_value_is_a_change(tmp_path):
  recorded = _recorded_before_the_key(tmp_path)
  changes = workdir_lib.result_changes(recorded, workdir_lib.as_dict(_config(resnet_d=True)))
  assert [(key, new) for key, _, new in changes] == [('model.resnet_d', True)]
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'model\.resnet_d: \(absent: the default False\) -> True'):
    workdir_lib.check_same_run(str(tmp_path), _config(resnet_d=True))


def test_a_key_that_the_code_no_longer_has_is_still_a_change():
  recorded = workdir_lib.as_dict(_config())
  recorded['model']['retired_option'] = 3
  changes = workdir_lib.result_changes(recorded, workdir_lib.as_dict(_config()))
  assert changes == [('model.retired_option', 3, '(absent)')]


def test_an_atomic_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  with helpers.tmpfs(tmp_path / 'disk', '64k') as disk:
    path = disk / 'summary.json'
    workdir_lib.write_atomic(str(path), 'old')
    with pytest.raises(OSError, match=f'No space left on device: .{path}.'):  # Names the file.
      workdir_lib.write_atomic(str(path), 'x' * 200_000)
    assert sorted(p.name for p in disk.iterdir()) == ['summary.json']
    assert path.read_text() == 'old'


def test_a_study_s_results_folder_is_no_workdir(tmp_path):
  """A study's results folder typed for --workdir (its runs are in runs/<name>) is one line,
  exit 2, and the folder's files stay as they were."""
  results = tmp_path / 'study'
  results.mkdir()
  (results / 'results.json').write_text('{"study": "degradation"}')
  before = helpers.tree_digest(results)
  result = helpers.run_main(results)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --workdir={results} holds a study's results (results.json), not a run; the "
      "study's runs are in its runs/ folder. Choose another --workdir.")
  assert helpers.tree_digest(results) == before


@pytest.mark.parametrize('files, message', [
    ({'metrics.jsonl': '{"foreign": 1}\n'}, 'holds metrics.jsonl but no config.json, so no run '
     'of this trainer wrote it; a run there would overwrite it.'),
    ({'metrics.jsonl': '', 'summary.json': '{}'}, 'holds metrics.jsonl and summary.json but no '
     'config.json, so no run of this trainer wrote them'),
    ({'config.json': '[1]'}, 'holds a config.json that no run of this trainer wrote'),
    ({'config.json': '{"name": "bert"}'}, 'holds a config.json that no run of this trainer '
     'wrote (it is no JSON object with model and data keys)'),
])
def test_files_another_tool_left_in_a_new_run_s_folder_are_not_overwritten(tmp_path, files,
                                                                            message):
  """The trainer writes config.json before metrics.jsonl and summary.json: a folder that holds
  those without a run's config.json is not a run of this trainer, and a new run there truncated
  metrics.jsonl and replaced summary.json (a config.json that is no run's raised an
  AssertionError, or listed every key as a change)."""
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  with pytest.raises(workdir_lib.WorkdirError) as error:
    workdir_lib.check_same_run(str(tmp_path), _config())
  assert str(error.value).startswith(f'--workdir={tmp_path} {message}'), str(error.value)


def test_a_foreign_metrics_file_stays_as_it_was(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('{"foreign": 1}\n')
  before = helpers.tree_digest(tmp_path)
  result = helpers.run_main(tmp_path)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith(f'error: --workdir={tmp_path} holds metrics.jsonl but no '
                              'config.json'), lines[-1]
  assert 'Traceback' not in result.stderr
  assert {k: v for k, v in helpers.tree_digest(tmp_path).items() if k != '.lock'} == before
