"""python -m resnet_jax.convert --from=torchvision: torchvision's ResNets ported exactly.

tests/fixtures/torchvision_logits.npz holds torchvision's own eval-mode logits for seeded weights
(tests/fixtures/make_torchvision_fixture.py, run once with torch and torchvision). Here the same
weights are regenerated from the seed with NumPy, converted and run through this project's net:
no torch is needed. With torch installed, the last test also compares training mode.
"""

import pathlib

import jax
import numpy as np
import pytest

from resnet_jax import convert, models
from resnet_jax.data import datasets
from resnet_jax.models import torchvision as tv
from tests import helpers
from tests.fixtures import torchvision_weights

FIXTURE = np.load(pathlib.Path(__file__).parent / 'fixtures' / 'torchvision_logits.npz')
SEED = int(FIXTURE['seed'])
INPUT_SHAPE = tuple(int(d) for d in FIXTURE['input_shape'])


def _logits(model, variables, nchw):
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, nchw.transpose(0, 2, 3, 1)))


def test_converted_resnet18_file_gives_torchvisions_logits(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  weights = tmp_path / 'resnet18.safetensors'
  save_file(torchvision_weights.state_dict('resnet18', SEED), str(weights))
  out = tmp_path / 'converted.safetensors'
  result, again = helpers.run_modules([
      ('resnet_jax.convert', ['--from=torchvision', '--arch=resnet18', weights, out], {}),
      ('resnet_jax.convert', ['--arch=resnet18', out, tmp_path / 'twice.safetensors'], {}),
  ], timeout=1800)
  assert result.returncode == 0, result.stderr[-2000:]
  assert again.returncode == 2 and again.stderr.strip().endswith(
      'is a resnet_jax weight file already; load it as it is (models.load_pretrained, --model, '
      '--config.init_from).'), again.stderr[-2000:]
  assert f'wrote {out}: torchvision resnet18 as imagenet ResNet-18 (v1.5), 1000 classes, ' \
         '11,689,512 parameters' in result.stdout  # torchvision's count, BN included.
  model, variables = models.load_pretrained(str(out))
  logits = _logits(model, variables, torchvision_weights.image(SEED, INPUT_SHAPE))
  difference = np.abs(logits - FIXTURE['logits_resnet18']).max()
  assert difference < 1e-4, f'largest difference from torchvision: {difference:.3g}'
  pretrained = models.read_pretrained(str(out))
  assert pretrained.data_config['image_size'] == 224
  assert pretrained.data_config['mean'] == list(datasets.TABLE['imagenet2012'].mean)


def test_converted_resnet50_gives_torchvisions_logits():
  config, variables = tv.from_torchvision(torchvision_weights.state_dict('resnet50', SEED),
                                          'resnet50')
  assert config['stride_in_3x3'] and config['shortcut'] == 'B'
  model = models.create_model('imagenet', 50, num_classes=1000, scan=False)
  logits = _logits(model, variables, torchvision_weights.image(SEED, INPUT_SHAPE))
  difference = np.abs(logits - FIXTURE['logits_resnet50']).max()
  assert difference < 1e-4, f'largest difference from torchvision: {difference:.3g}'


@pytest.mark.parametrize('arch', list(tv.ARCHS))
def test_every_arch_converts_both_ways_by_name_and_shape(arch):
  """Names and shapes of ResNet-18 ... 152 against the fixture's independent list (the values
  and layouts are checked by the logits above)."""
  shapes = {name: shape for name, (shape, _) in torchvision_weights.shapes(arch, 7).items()}
  config, variables = tv.from_torchvision(
      {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}, arch)
  assert config['num_classes'] == 7 and config['depth'] == tv.ARCHS[arch]
  back = tv.to_torchvision(variables)
  assert {k: v.shape for k, v in back.items()} == {
      k: shape for k, shape in shapes.items() if not k.endswith('num_batches_tracked')}


def test_the_wrong_arch_names_the_first_differences():
  with pytest.raises(ValueError, match=r"not those of torchvision's resnet50 \(\d+ differences, "
                                       r'e\.g\. layer1\.0\.bn3\.running_mean is missing'):
    tv.from_torchvision(torchvision_weights.state_dict('resnet18', 0), 'resnet50')
  state_dict = torchvision_weights.state_dict('resnet18', 0)
  state_dict['fc.weight'] = state_dict['fc.weight'][:, :100]
  with pytest.raises(ValueError, match=r'1 difference: fc\.weight has shape \(1000, 100\) in the '
                                       r"weights, \(1000, 512\) in torchvision's resnet18"):
    tv.from_torchvision(state_dict, 'resnet18')


def test_training_mode_matches_torch_up_to_its_unbiased_running_variance():
  """With torch and torchvision (e.g. /root/venv-bench): one train-mode forward of a batch of 4.

  Compared: the train-mode logits (BN normalises with the batch statistics in both), and the
  updated running statistics of every BN layer. running_mean matches; PyTorch updates
  running_var with the unbiased batch variance, n / (n - 1) times the biased one that Flax uses
  (n = N * H * W per channel), so its running_var is compared after undoing that factor.
  """
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  arch = 'resnet18'
  state_dict = torchvision_weights.state_dict(arch, SEED)
  net = getattr(torchvision.models, arch)(weights=None)
  net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
  net.train()
  # N * H * W of each BN layer's input: the n of PyTorch's unbiased variance.
  counts = {}

  def count(name):
    def hook(module, inputs, out):  # Returns None: the output stays as it is.
      counts[name] = out.shape[0] * out.shape[2] * out.shape[3]
    return hook
  hooks = [m.register_forward_hook(count(name)) for name, m in net.named_modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
  x = np.random.default_rng(SEED + 2).standard_normal((4, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    torch_logits = net(torch.from_numpy(x)).numpy()
  for hook in hooks:
    hook.remove()
  torch_stats = {k: v.numpy().copy() for k, v in net.state_dict().items()}

  config, variables = tv.from_torchvision(state_dict, arch)
  model = models.create_model('imagenet', 18, num_classes=1000, scan=False)
  logits, updates = model.apply(variables, x.transpose(0, 2, 3, 1), train=True,
                                mutable=['batch_stats'])
  assert np.abs(np.asarray(logits) - torch_logits).max() < 1e-4
  ours = tv.to_torchvision({'batch_stats': updates['batch_stats']})
  momentum = 1 - config['bn_momentum']  # PyTorch's momentum is the weight of the new value.
  for name, value in ours.items():
    expected = torch_stats[name]
    if name.endswith('running_var'):
      # Undo PyTorch's Bessel correction: old + m * (n/(n-1) * v - old) -> old + m * (v - old).
      n = counts[name[:-len('.running_var')]]
      old = state_dict[name]
      batch_var = (expected - (1 - momentum) * old) / momentum * (n - 1) / n
      expected = (1 - momentum) * old + momentum * batch_var
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5, err_msg=name)



def test_a_converted_net_evaluates_imagenet_style_data(tmp_path):
  """evaluate --model on tfds's mock imagenet2012 (images of random sizes, resized and cropped)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from resnet_jax.train import loop  # pylint: disable=import-outside-toplevel
  from resnet_jax.train import trained  # pylint: disable=import-outside-toplevel
  config, variables = tv.from_torchvision(torchvision_weights.state_dict('resnet18', 0),
                                          'resnet18')
  path = tmp_path / 'resnet18.safetensors'
  models.save_pretrained(str(path), variables, models.from_config(config),
                         config, convert.data_config())
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=20):
    weights = trained.open_weights(model_file=str(path))
    assert weights.data.dataset == 'imagenet2012' and weights.data.eval_split == 'validation'
    weights.data.image_size = 64  # For speed; the file records torchvision's 224.
    result = loop.evaluate_weights(weights, 'validation', 8, devices=jax.devices()[:1])
  assert result['eval/num_examples'] == 20
  assert 0 <= result['eval/accuracy'] <= result['eval/top5_accuracy'] <= 1
