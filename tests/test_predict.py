"""python -m resnet_jax.predict: PNG files through the eval preprocessing, top 5 with names."""

import pathlib

import numpy as np
import pytest
from PIL import Image
import jax

from resnet_jax import export
from resnet_jax.data import digits
from resnet_jax.train import trained
from tests import helpers
from tests import trained_run


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  return trained_run.quickstart_run(tmp_path_factory)[0]


def _blocks(stdout):
  """{path: [(probability in %, name), ...]} from predict's output."""
  blocks, path = {}, None
  for line in stdout.splitlines()[1:]:
    if line.startswith('  '):
      percent, name = line.split('%')
      blocks[path].append((float(percent), name.strip()))
    else:
      path = line
      blocks[path] = []
  return blocks


def test_predict_matches_the_model_on_the_eval_view_of_the_same_digits(run, tmp_path):
  images, _ = digits._load()['test']  # pylint: disable=protected-access
  paths = []
  for i in range(3):
    paths.append(tmp_path / f'digit{i}.png')
    Image.fromarray(images[i, ..., 0]).save(paths[-1])  # 8x8 grayscale: lossless.
  # A 32x32 RGB file: converted to grayscale, resized and centre-cropped to 8x8.
  big = tmp_path / 'big.png'
  Image.fromarray(images[0, ..., 0]).convert('RGB').resize((32, 32), Image.NEAREST).save(big)
  model_file = tmp_path / 'model.safetensors'
  export.export(str(run), 'latest', str(model_file))
  by_run, by_file = helpers.run_modules([
      ('resnet_jax.predict', [f'--workdir={run}', '--checkpoint=latest', *paths, big], {}),
      ('resnet_jax.predict', [f'--model={model_file}', '--top=3', *paths], {}),
  ], timeout=1800)
  assert by_run.returncode == 0 and by_file.returncode == 0, by_run.stderr + by_file.stderr

  checkpoint = trained.load(str(run), 'latest')
  x = (images[:3].astype(np.float32) - 77.89) / 95.71
  probabilities = np.asarray(jax.nn.softmax(
      checkpoint.model.apply(checkpoint.variables, x, train=False)))
  predicted = _blocks(by_run.stdout)
  from_file = _blocks(by_file.stdout)
  for path, p in zip(paths, probabilities):
    top = np.argsort(-p)[:5]
    assert [name for _, name in predicted[str(path)]] == [str(c) for c in top]
    np.testing.assert_allclose([q for q, _ in predicted[str(path)]], 100 * p[top], atol=0.006)
    assert from_file[str(path)] == predicted[str(path)][:3]
  assert len(predicted[str(big)]) == 5
  assert {name for _, name in predicted[str(big)]} <= {str(i) for i in range(10)}


def test_export_writes_only_its_own_files(run, tmp_path):
  """issue 21: a destination inside the run, or an existing file that is no weight file, is
  refused before any work, and nothing changes (checked by hash); a weight file is replaced."""
  import hashlib
  from resnet_jax.errors import UserError

  def digest(folder):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(folder).rglob('*')) if p.is_file()}

  before = digest(run)
  for inside in (run / 'metrics.jsonl', run / 'model.safetensors',
                 run / 'checkpoints' / 'model.safetensors'):
    with pytest.raises(UserError, match='lies inside the training run'):
      export.export(str(run), 'latest', str(inside))
  assert digest(run) == before
  notes = tmp_path / 'notes.txt'
  notes.write_text('mine')
  with pytest.raises(UserError, match='exists and is not a file this command wrote'):
    export.export(str(run), 'latest', str(notes))
  assert notes.read_text() == 'mine'
  out = tmp_path / 'model.safetensors'
  export.export(str(run), 'latest', str(out))
  export.export(str(run), 'latest', str(out))  # Its own file: replaced.
  export.export(str(run), 'latest', str(notes), overwrite=True)
  from safetensors.numpy import load_file  # The header's key order varies: compare tensors.
  ours, replaced = load_file(out), load_file(notes)
  assert ours.keys() == replaced.keys()
  assert all(np.array_equal(ours[k], replaced[k]) for k in ours)
