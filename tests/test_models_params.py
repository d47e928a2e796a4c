"""Parameter counts and multiply-adds against the papers; create_model's arguments and errors.

Counts come from jax.eval_shape (nothing is initialised), so even ResNet-1202 costs nothing.
"""

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import models
from resnet_jax import summary


def _counts(family, depth, image_size=32, **kwargs):
  model = models.create_model(family, depth, **kwargs)
  variables = summary.abstract_variables(model, (1, image_size, image_size, 3))
  return summary.param_counts(variables['params'])


# He et al. 2015 Table 6 (option A) and Identity Mappings Table 4 (pre-activation, bottleneck).
# The papers leave BN's scale and bias out of their counts; ResNet-1202's 19.4M is the exception,
# which only the count with BN rounds to (19.42M; 19.33M without). The net itself is fixed by
# 6n+2 with n = 200, option A and widths 16/32/64, so the count is not "fixed" to the rounding.
@pytest.mark.parametrize('depth,placement,millions,digits,with_bn', [
    (20, 'original', 0.27, 2, False), (32, 'original', 0.46, 2, False),
    (44, 'original', 0.66, 2, False), (56, 'original', 0.85, 2, False),
    (110, 'original', 1.7, 1, False), (1202, 'original', 19.4, 1, True),
    (164, 'full_preact', 1.7, 1, False), (1001, 'full_preact', 10.2, 1, False),
])
def test_cifar_counts_match_the_papers(depth, placement, millions, digits, with_bn):
  total, bn = _counts('cifar', depth, placement=placement)
  assert round((total if with_bn else total - bn) / 1e6, digits) == millions


def test_resnet1202_counts_exactly():
  assert _counts('cifar', 1202) == (19_421_274, 89_632)


def test_resnet20_option_a_counts_exactly_as_pytorch():
  total, bn = _counts('cifar', 20)
  assert (total, bn) == (269_722, 1_376)


def test_preact_resnet1001_counts_with_and_without_bn():
  total, bn = _counts('cifar', 1001, placement='full_preact')
  assert round(total / 1e6, 2) == 10.33
  assert round(bn / 1e6, 3) == 0.149
  assert round((total - bn) / 1e6, 2) == 10.18


@pytest.mark.parametrize('depth,count', [
    (18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160), (152, 60_192_808)])
def test_imagenet_counts_equal_torchvision(depth, count):
  # torchvision's nets: shortcut B, bias-free convs, BN, a biased fc; 64x64 inputs suffice.
  assert _counts('imagenet', depth, image_size=64)[0] == count


@pytest.mark.parametrize('depth,paper', [
    (18, 1.8e9), (34, 3.6e9), (50, 3.8e9), (101, 7.6e9), (152, 11.3e9)])
def test_multiply_adds_match_2015_table1(depth, paper):
  # Table 1's nets are v1 (stride on the first 1x1). XLA's cost analysis skips the taps on zero
  # padding, so it reads 2-7% under Table 1; the analytic count (every tap, the paper's
  # convention) is within 2% of it.
  v1 = models.create_model('imagenet', depth, stride_in_3x3=False)
  assert summary.analytic_multiply_adds(v1, (224, 224, 3)) == pytest.approx(paper, rel=0.02)
  assert 0.9 < summary.xla_multiply_adds(v1, (224, 224, 3)) / paper < 1.0


def test_resnet50_v1_5_multiply_adds_from_xla():
  model = models.create_model('imagenet', 50)
  assert 3.8e9 < summary.xla_multiply_adds(model, (224, 224, 3)) < 4.1e9


def test_family_defaults():
  assert models.create_model('cifar', 20).shortcut == 'A'
  assert models.create_model('cifar', 1202).shortcut == 'A'
  assert models.create_model('cifar', 164).shortcut == 'B'
  assert models.create_model('imagenet', 18).shortcut == 'B'
  assert models.create_model('cifar', 20).num_classes == 10
  assert models.create_model('imagenet', 50).num_classes == 1000
  # Option A has no parameters: ResNet-20 B only adds the two projections' conv and BN.
  a, _ = _counts('cifar', 20, shortcut='A')
  b, _ = _counts('cifar', 20, shortcut='B')
  assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_width_and_classes():
  model = models.create_model('cifar', 20, width=2, num_classes=100)
  params = summary.abstract_variables(model, (1, 32, 32, 3))['params']
  assert params['stem_conv']['kernel'].shape == (3, 3, 3, 32)
  assert params['stage3_unit3']['conv2']['kernel'].shape == (3, 3, 128, 128)
  assert params['head']['kernel'].shape == (128, 100)


def test_stride_placement_v1_and_v1_5():
  def first_strided_conv(model):
    variables = summary.abstract_variables(model, (1, 32, 32, 3))
    _, state = jax.eval_shape(lambda v: model.apply(
        v, jnp.zeros((1, 32, 32, 3)), train=False, capture_intermediates=True,
        mutable=['intermediates']), variables)
    unit = state['intermediates']['stage2_unit1']  # a stride-2 unit
    halved = unit['__call__'][0].shape[1]
    return next(n for n in ('conv1', 'conv2') if unit[n]['__call__'][0].shape[1] == halved)
  assert first_strided_conv(models.create_model('imagenet', 50)) == 'conv2'  # the 3x3
  assert first_strided_conv(models.create_model('imagenet', 50, stride_in_3x3=False)) == 'conv1'
  # CIFAR bottleneck nets stride the first 1x1, as resnet-1k-layers' ResNet-1001 does.
  assert first_strided_conv(models.create_model('cifar', 164, scan=False)) == 'conv1'


@pytest.mark.parametrize('kwargs,message', [
    (dict(family='cifar', depth=21), 'depth=21 is not a cifar depth; the allowed depths are 20, '
     '32, 44, 56, 110, 1202 (basic units) and 164, 1001 (bottleneck units)'),
    # 26 = 6n+2 (n = 4) is still refused: the message lists depths, it gives no rule.
    (dict(family='cifar', depth=26), 'depth=26 is not a cifar depth; the allowed depths are 20, '
     '32, 44, 56, 110, 1202 (basic units) and 164, 1001 (bottleneck units)'),
    (dict(family='imagenet', depth=20),
     'the allowed depths are 18, 34 (basic units) and 50, 101, 152, 200 (bottleneck units)'),
    (dict(family='mnist', depth=20), "family='mnist' is not allowed; allowed: 'cifar', 'imagenet'"),
    (dict(placement='preact'), "placement='preact' is not allowed; allowed: 'original', "
     "'bn_after_add', 'relu_before_add', 'relu_only_preact', 'full_preact'"),
    (dict(shortcut='D'), "shortcut='D' is not allowed; allowed: 'A', 'B', 'C', 'none'"),
    (dict(dtype='float64'), "dtype='float64' is not supported; allowed: float32, bfloat16"),
    (dict(param_dtype=jnp.int32), 'param_dtype='),
    (dict(stochastic_depth=-0.1), 'stochastic_depth=-0.1 must be in [0, 1)'),
    (dict(stochastic_depth=1.0), 'stochastic_depth=1.0 must be in [0, 1)'),
    (dict(num_classes=0), 'num_classes=0 must be a positive integer'),
    (dict(width=0), 'width=0 must be a positive number'),
    (dict(width=0.01), 'width=0.01 leaves a layer with no channels'),
    (dict(scan='yes'), "scan='yes' must be True or False or None"),
    (dict(remat=1), 'remat=1 must be True or False'),
    (dict(scan_unroll=0), 'scan_unroll=0 must be a positive integer'),
    (dict(resnet_d=True), "resnet_d=True is for family='imagenet' only"),
    (dict(shortcut='none', zero_init_last=True), "zero_init_last=True with shortcut='none'"),
    (dict(bn_momentum=1.5), 'bn_momentum=1.5 must be in [0, 1)'),
    (dict(axis_name=3), 'axis_name=3 must be a string'),
])
def test_invalid_arguments_name_the_argument_and_the_allowed_values(kwargs, message):
  kwargs = dict(dict(family='cifar', depth=20), **kwargs)
  with pytest.raises(ValueError) as error:
    models.create_model(kwargs.pop('family'), kwargs.pop('depth'), **kwargs)
  assert message in str(error.value)


def test_dtypes_by_name_or_type():
  a = models.create_model('cifar', 20, dtype='bfloat16', param_dtype='float32')
  b = models.create_model('cifar', 20, dtype=jnp.bfloat16, param_dtype=jnp.float32)
  assert a == b and a.dtype == jnp.bfloat16
