"""A minimal Flax peer: the ResNet and train step of the Flax ImageNet example, nothing more.

What a careful user writes from google/flax examples/imagenet (models.py, train.py) without this
project: Linen blocks taking `conv` / `norm` / `act` partials, BatchNorm with mutable
batch_stats, the example's L2 penalty in the loss, optax SGD with momentum, and one
`jax.jit(train_step, donate_argnums=0)` of `jax.value_and_grad`. No named axis, no metrics
collection and no non-finite checks: the project's step does all three, so the ratio against
this peer is what they (and the project's model code) cost.

The nets: for 'cifar' the 2015 paper's 6n+2 nets (basic blocks, 16/32/64 channels, option A
shortcuts); for 'imagenet' the example's ResNet-18 ... 200 (the bottleneck ones stride in the
3x3 conv, v1.5, as the example and torchvision do).
"""

import functools
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from benchmarks import flops  # The FLOP count every implementation is held to.

ModuleDef = Any

IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                   152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}


class ResNetBlock(nn.Module):
  """The example's basic block; `option_a` gives the CIFAR nets' parameter-free shortcut."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: tuple[int, int] = (1, 1)
  option_a: bool = False

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm()(y)
    if residual.shape != y.shape:
      if self.option_a:  # He et al. 2015, Sec. 4.2: subsample and zero-pad the new channels.
        residual = residual[:, ::self.strides[0], ::self.strides[1], :]
        residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0),
                                      (0, self.filters - residual.shape[-1])))
      else:
        residual = self.conv(self.filters, (1, 1), self.strides, name='conv_proj')(residual)
        residual = self.norm(name='norm_proj')(residual)
    return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
  """The example's bottleneck block (stride on the 3x3, zero-initialised last BN scale)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.act(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides, name='conv_proj')(residual)
      residual = self.norm(name='norm_proj')(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  num_filters: int
  cifar: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    block = (functools.partial(self.block_cls, option_a=True) if self.cifar
             else self.block_cls)
    if self.cifar:
      x = nn.relu(norm(name='bn_init')(conv(self.num_filters, (3, 3), name='conv_init')(x)))
    else:
      x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name='conv_init')(x)
      x = nn.relu(norm(name='bn_init')(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = block(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm,
                  act=nn.relu)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return jnp.asarray(x, self.dtype)


def create_model(family: str, depth: int, num_classes: int, dtype: str) -> ResNet:
  """The peer net of a project workload; ValueError (with the reason) where there is none."""
  if family == 'cifar':
    if (depth - 2) % 6:
      raise ValueError(f'the Flax peer has only the 6n+2 CIFAR nets of basic blocks, not '
                       f'ResNet-{depth}')
    n = (depth - 2) // 6
    return ResNet((n, n, n), ResNetBlock, num_classes, 16, cifar=True, dtype=jnp.dtype(dtype))
  if depth not in IMAGENET_STAGES:
    raise ValueError(f'the Flax peer has no ImageNet ResNet-{depth}')
  block = ResNetBlock if depth < 50 else BottleneckResNetBlock
  return ResNet(IMAGENET_STAGES[depth], block, num_classes, 64, cifar=False,
                dtype=jnp.dtype(dtype))


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_train_state(rng, model, tx, image_shape) -> TrainState:
  variables = model.init(rng, jnp.ones((1, *image_shape), jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats'])


def cross_entropy_loss(logits, labels):
  one_hot = jax.nn.one_hot(labels, logits.shape[-1])
  return jnp.mean(optax.softmax_cross_entropy(logits=logits.astype(jnp.float32),
                                              labels=one_hot))


def train_step(state, batch, weight_decay: float):
  """The example's train_step, less its pmean (one device) and learning-rate logging."""
  def loss_fn(params):
    logits, new_model_state = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'],
        mutable=['batch_stats'])
    loss = cross_entropy_loss(logits, batch['label'])
    weight_l2 = sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(params) if x.ndim > 1)
    return loss + weight_decay * 0.5 * weight_l2, (new_model_state, logits)

  (loss, (new_model_state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}
  new_state = state.apply_gradients(grads=grads, batch_stats=new_model_state['batch_stats'])
  return new_state, metrics


def compile_train_step(workload, batch):
  """(compiled step, initial state, lower seconds, compile seconds, matrix FLOPs of a step) for
  `workload` on the default device, where `batch` ({'image', 'label'}) lies.

  workload: a benchmarks.throughput.Workload (family, depth, num_classes, dtype, image_shape,
  learning_rate, momentum, nesterov, weight_decay).
  """
  model = create_model(workload.family, workload.depth, workload.num_classes, workload.dtype)
  tx = optax.sgd(workload.learning_rate, momentum=workload.momentum, nesterov=workload.nesterov)
  init = jax.jit(functools.partial(create_train_state, model=model, tx=tx,
                                   image_shape=workload.image_shape))
  state = init(jax.random.key(0))
  step = jax.jit(functools.partial(train_step, weight_decay=workload.weight_decay),
                 donate_argnums=0)
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  return (compiled, state, lowered_at - start, compiled_at - lowered_at,
          flops.count(step, state, batch))
