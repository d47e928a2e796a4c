"""benchmarks.flops: matrix FLOPs counted on the jaxpr, the same on every backend."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from benchmarks import flops
from resnet_jax import summary
from resnet_jax.models import abstract_variables, create_model

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _conv(stride):
  return lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), 'SAME',
                                                   dimension_numbers=NHWC)


def _spec(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_a_convolution_and_a_dot_count_two_flops_per_multiply_add():
  assert flops.count(_conv(1), _spec(8, 32, 32, 16), _spec(3, 3, 16, 32)) == (
      2 * 8 * 32 * 32 * 32 * 3 * 3 * 16)
  assert flops.count(_conv(2), _spec(8, 32, 32, 16), _spec(3, 3, 16, 32)) == (
      2 * 8 * 16 * 16 * 32 * 3 * 3 * 16)
  assert flops.count(lambda a, b: a @ b, _spec(8, 16), _spec(16, 4)) == 2 * 8 * 16 * 4
  grouped = lambda x, w: jax.lax.conv_general_dilated(  # pylint: disable=g-long-lambda
      x, w, (1, 1), 'SAME', dimension_numbers=NHWC, feature_group_count=4)
  assert flops.count(grouped, _spec(2, 8, 8, 16), _spec(3, 3, 4, 16)) == 2 * 2 * 8 * 8 * 16 * 9 * 4


@pytest.mark.parametrize('stride', [1, 2])
def test_each_gradient_of_a_convolution_costs_what_its_forward_does(stride):
  """The input gradient of a strided conv runs on a dilated input whose holes are not counted."""
  x, w = jnp.zeros((4, 16, 16, 8)), jnp.zeros((3, 3, 8, 8))
  forward = flops.count(_conv(stride), x, w)
  # Each gradient's jaxpr also holds the forward (the primal), hence 2x.
  assert flops.count(jax.grad(lambda x: _conv(stride)(x, w).sum()), x) == 2 * forward
  assert flops.count(jax.grad(lambda w: _conv(stride)(x, w).sum()), w) == 2 * forward


def test_loops_and_branches_count_what_runs():
  def scanned(x, w):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)[0]

  assert flops.count(scanned, _spec(8, 16), _spec(16, 16)) == 5 * 2 * 8 * 16 * 16
  branch = lambda p, a, b: jax.lax.cond(p, lambda: (a @ b) @ b, lambda: a @ b)
  assert flops.count(branch, True, _spec(8, 16), _spec(16, 16)) == 2 * 2 * 8 * 16 * 16


def test_a_step_mapped_over_devices_counts_every_device():
  assert jax.device_count() >= 2  # conftest: 8 host devices.
  devices = jax.devices()[:2]
  a, b = _spec(8, 16), _spec(16, 16)
  sharded = jax.jit(jax.shard_map(lambda a, b: a @ b, mesh=Mesh(devices, ('d',)),
                                  in_specs=(P('d'), P()), out_specs=P('d')))
  assert flops.count(sharded, a, b) == 2 * 8 * 16 * 16
  mapped = jax.pmap(lambda a, b: a @ b, devices=devices)
  assert flops.count(mapped, _spec(2, 4, 16), _spec(2, 16, 16)) == 2 * 8 * 16 * 16


@pytest.mark.parametrize('family,depth,image,scan', [('cifar', 20, (32, 32, 3), False),
                                                     ('cifar', 110, (32, 32, 3), True),
                                                     ('imagenet', 50, (224, 224, 3), False)])
def test_a_resnet_forward_is_summary_s_analytic_count(family, depth, image, scan):
  """Two independent counts agree: the jaxpr's, and summary's per-layer arithmetic. A scanned
  net counts each stage's body once per unit."""
  model = create_model(family, depth, scan=scan)
  x = jax.ShapeDtypeStruct((1,) + image, jnp.float32)
  variables = abstract_variables(model, x.shape)
  forward = flops.count(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert forward == 2 * summary.analytic_multiply_adds(model.clone(scan=False), image)
