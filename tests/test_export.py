"""python -m resnet_jax.export and models.load_pretrained: a round trip gives identical logits."""

import re

import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.data import digits
from resnet_jax.train import trained
from tests import helpers
from tests import trained_run


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  return trained_run.quickstart_run(tmp_path_factory)[0]


def _digits_images():
  images, labels = digits._load()['test']  # pylint: disable=protected-access
  return images[:16], labels[:16]


def _normalized(images):
  # The quickstart's eval view: 8x8 digits as stored, normalised with its mean and std.
  return (images.astype(np.float32) - 77.89) / 95.71


def test_export_then_load_pretrained_gives_identical_logits(run, tmp_path):
  out = tmp_path / 'quickstart.safetensors'
  before = trained_run.snapshot(run)
  [result] = helpers.run_modules([
      ('resnet_jax.export', [f'--workdir={run}', '--checkpoint=latest', f'--out={out}'], {})],
      timeout=1800)
  assert result.returncode == 0, result.stderr[-2000:]
  assert trained_run.snapshot(run) == before
  assert (f'wrote {out}: cifar ResNet-20 (full_preact), 10 classes, 271,994 parameters, from '
          f'{run} step {trained_run.STEPS} (newest)') in result.stdout

  images = _normalized(_digits_images()[0])
  checkpoint = trained.load(str(run), 'latest')
  expected = checkpoint.model.apply(checkpoint.variables, images, train=False)
  model, variables = models.load_pretrained(str(out))
  np.testing.assert_array_equal(model.apply(variables, images, train=False), expected)
  # The file is unrolled; a scanned net stacks it again and computes the same function.
  scanned, stacked = models.load_pretrained(str(out), scan=True)
  assert 'stage1_scan' in stacked['params']
  np.testing.assert_allclose(scanned.apply(stacked, images, train=False), expected, atol=1e-5)

  pretrained = models.read_pretrained(str(out))
  assert pretrained.class_names == [str(i) for i in range(10)]
  assert pretrained.model_config['placement'] == 'full_preact'
  assert pretrained.model_config['scan'] is None
  assert pretrained.data_config == {'dataset': 'digits', 'eval_split': 'test', 'image_size': 8,
                                    'mean': [77.89], 'std': [95.71], 'crop_fraction': 0.875}
  kernel = pretrained.variables['params']['stage1_unit1']['conv1']['kernel']
  assert kernel.dtype == np.float32 and kernel.shape == (3, 3, 16, 16)
  assert pretrained.variables['batch_stats']['final_bn']['var'].shape == (64,)


def test_a_damaged_or_foreign_file_is_one_clear_error(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  foreign = tmp_path / 'foreign.safetensors'
  save_file({'w': np.zeros(3, np.float32)}, str(foreign))
  with pytest.raises(models.PretrainedError, match='not a resnet_jax weight file'):
    models.load_pretrained(str(foreign))
  with pytest.raises(models.PretrainedError, match='does not exist'):
    models.load_pretrained(str(tmp_path / 'missing.safetensors'))


@pytest.mark.parametrize('field,value,message', [
    ('model', '{}', "'model' has no 'family'"),
    ('model', '[1, 2]', "'model' is a list, not an object"),
    ('data', '[]', "'data' is a list, not an object"),
    ('data', '{"mean": "x", "std": [1]}', "'data' has a 'mean' that is not a list of numbers"),
    ('class_names', '[1, 2]', "'class_names' is not a list of strings"),
    ('class_names', '{"a": 1}', "'class_names' is not a list of strings"),
])
def test_metadata_of_the_wrong_shape_is_one_line_naming_the_field(tmp_path, field, value,
                                                                  message):
  """issue 20: a weight file is untrusted input; its metadata is checked against what
  save_pretrained writes."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  from resnet_jax.models import weight_file  # pylint: disable=import-outside-toplevel
  metadata = {'format': weight_file.FORMAT, 'format_version': weight_file.FORMAT_VERSION,
              'model': '{"family": "cifar", "depth": 20}', 'data': '{}', 'class_names': 'null',
              field: value}
  path = tmp_path / 'odd.safetensors'
  save_file({'params/head/bias': np.zeros(10, np.float32)}, str(path), metadata=metadata)
  with pytest.raises(models.PretrainedError, match=re.escape(message)):
    models.read_pretrained(str(path))


def test_non_finite_weights_are_an_error_naming_the_tensor(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  from resnet_jax.models import weight_file  # pylint: disable=import-outside-toplevel
  metadata = {'format': weight_file.FORMAT, 'format_version': weight_file.FORMAT_VERSION,
              'model': '{"family": "cifar", "depth": 20}'}
  path = tmp_path / 'nan.safetensors'
  save_file({'params/head/bias': np.array([0.0, np.nan], np.float32)}, str(path),
            metadata=metadata)
  with pytest.raises(models.PretrainedError, match='params/head/bias holds NaN or infinite'):
    models.read_pretrained(str(path))


def test_an_image_over_pil_s_limit_is_one_line(tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from resnet_jax.data import images  # pylint: disable=import-outside-toplevel
  from resnet_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  path = tmp_path / 'big.png'
  Image.new('RGB', (64, 64)).save(path)
  for limit in (64 * 64 - 1, 64 * 64 // 2 - 1):  # PIL's warning, then its error.
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', limit)
    with pytest.raises(DataError, match='more than .* pixels, PIL\'s limit'):
      images.load(str(path), 3)


def test_a_disk_without_room_for_the_file_is_one_line_and_leaves_nothing(run, tmp_path):
  """A full disk (a 64 KiB tmpfs; the file is about 1 MB) ends export in one line, exit 1, with
  no traceback and no half-written file or temporary left; an older file there stays whole."""
  with helpers.tmpfs(tmp_path / 'disk', '64k') as disk:
    old = disk / 'old.safetensors'
    old.write_bytes(b'x' * 1000)
    results = helpers.run_modules([
        ('resnet_jax.export', [f'--workdir={run}', f'--out={disk / name}', '--overwrite'], {})
        for name in ('new.safetensors', 'old.safetensors')], timeout=1800)
    for result, kept in zip(results, ('nothing was written', 'the file there is as it was')):
      assert result.returncode == 1, result.stderr[-2000:]
      [line] = [l for l in result.stderr.splitlines() if l.startswith('error:')]
      assert 'No space left on device' in line and kept in line, line
      assert 'Traceback' not in result.stderr
    assert sorted(p.name for p in disk.iterdir()) == ['old.safetensors']
    assert old.read_bytes() == b'x' * 1000
