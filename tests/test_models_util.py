"""Helpers shared by the model tests; this module holds no tests of its own.

`random_variables` fills a model's variables from NumPy instead of `model.init`: on this CPU XLA
takes about half a second to compile each jax.random call, so a real init of even ResNet-20 costs
seconds, while the tests only need some weights.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import models
from resnet_jax.summary import abstract_variables


def random_variables(model, input_shape, seed=0):
  """He-scaled kernels and non-trivial BN parameters and statistics, in `model`'s layout."""
  rng = np.random.default_rng(seed)
  unrolled = model.clone(scan=False)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == 'kernel':
      value = rng.normal(0.0, math.sqrt(2.0 / math.prod(shape[:-1])), shape)
    elif name == 'scale':
      value = 1.0 + 0.2 * rng.normal(size=shape)
    elif name == 'var':
      value = rng.uniform(0.5, 1.5, shape)
    else:  # bias, mean
      value = 0.2 * rng.normal(size=shape)
    return jnp.asarray(value, leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(fill, abstract_variables(unrolled, input_shape))
  return models.unrolled_to_scan(variables, model) if model.scan else variables


@dataclasses.dataclass
class Op:
  path: tuple[str, ...]  # module path below the root; () for the root's own ops
  kind: str              # conv, bn, dense, relu, add, maxpool
  ins: set               # jaxpr variables it reads from outside itself
  outs: set              # jaxpr variables it writes
  primitives: set = dataclasses.field(default_factory=set)


_ELEMENTARY = {'custom_jvp_call': 'relu', 'max': 'relu', 'add': 'add',
               'reduce_window_max': 'maxpool'}


def _module_kind(primitives):
  if 'conv_general_dilated' in primitives:
    return 'conv'
  if 'rsqrt' in primitives:
    return 'bn'
  if 'dot_general' in primitives:
    return 'dense'
  return 'other'


def trace_ops(model, variables, images):
  """The ops of an eval forward pass in program order, read from the jaxpr.

  Flax runs each module under a jax.named_scope, so an equation's name stack says which module it
  belongs to. The equations of one leaf module (a conv, a BN, the head) make one op, classified by
  what they compute; the equations a unit or the root runs itself (ReLU, the addition, the
  max-pool) are one op each. Everything else (reshapes, casts, the mean) is left out.
  """
  closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
  ops = []
  for eqn in closed.jaxpr.eqns:
    # Drop the root's name and the scopes of methods other than __call__ ('ResNet._stem').
    path = tuple(p for p in str(eqn.source_info.name_stack).split('/')[1:] if '.' not in p)
    ins = {v for v in eqn.invars if not hasattr(v, 'val')}  # literals have a .val
    name = eqn.primitive.name
    if path and not path[-1].startswith('stage'):  # inside a leaf module
      if ops and ops[-1].path == path and ops[-1].kind == 'module':
        ops[-1].ins |= ins - ops[-1].outs
        ops[-1].outs |= set(eqn.outvars)
        ops[-1].primitives.add(name)
        continue
      ops.append(Op(path, 'module', ins, set(eqn.outvars), {name}))
    else:
      ops.append(Op(path, _ELEMENTARY.get(name, 'other'), ins, set(eqn.outvars), {name}))
  for op in ops:
    if op.kind == 'module':
      op.kind = _module_kind(op.primitives)
  return [op for op in ops if op.kind != 'other']


def unit_ops(ops, unit):
  """The ops of one unit (its submodules' and its own), in order."""
  return [op for op in ops if op.path[:1] == (unit,)]


def find(ops, *path):
  """The op of the module at `path`."""
  matches = [op for op in ops if op.path == path]
  assert len(matches) == 1, (path, [op.path for op in ops])
  return matches[0]


def reads(consumer, producer):
  """True if `consumer` reads a value that `producer` wrote."""
  return bool(consumer.ins & producer.outs)
