"""`create_model`: every net of the two ResNet papers from a family, a depth and a few switches."""

import numbers

import jax
import jax.numpy as jnp

from resnet_jax.models import layers, placements
from resnet_jax.models.resnet import FAMILIES, SHORTCUTS, ResNet

# scan=None picks nn.scan per backend (`scan_by_default`):
# - Accelerators (GPU, TPU) scan the nets where a stage has more than SCAN_AUTO_MIN_REPEATS - 1
#   identical units (units 2..n). Compile time of an unrolled net grows with its unit count while
#   a scanned stage compiles once, and a scanned step costs little there. This turns scan on for
#   CIFAR 110/164/1001/1202 and ImageNet 101/152/200.
# - On CPU an unrolled net trains faster at every depth measured, in both dtypes (2 cores, batch
#   128, unrolled over scanned img/s: float32 ResNet-20 1.06, 56 1.08, 110 1.14 with the unit
#   fence, layers.fusion_fence; bfloat16 ResNet-110 1.45; docs/benchmarks.md). So the CPU scans
#   only where an unrolled net takes minutes to compile: stages of CPU_SCAN_AUTO_MIN_REPEATS + 1
#   units or more, CIFAR 1001 and 1202 (pre-activation ResNet-1001 unrolled: 457 s to init,
#   lower and compile at batch 128; scanned: 9 s at batch 32), with canonical_conv_grads.
# Compile times: benchmarks/compile_time.py.
SCAN_AUTO_MIN_REPEATS = 9
CPU_SCAN_AUTO_MIN_REPEATS = 50


def scan_by_default(stage_sizes, backend=None) -> bool:
  """What scan=None resolves to for a net with these units per stage on `backend`.

  backend: 'cpu', 'gpu', 'tpu', ...; None asks jax.default_backend().
  """
  if backend is None:
    backend = jax.default_backend()
  repeats = max(stage_sizes) - 1
  return repeats >= (CPU_SCAN_AUTO_MIN_REPEATS if backend == 'cpu' else SCAN_AUTO_MIN_REPEATS)


def fence_by_default(backend=None, dtype=jnp.float32) -> bool:
  """What unit_fence=None resolves to: on for float32 compute on CPU, where XLA recomputes the
  residual stream otherwise (layers.fusion_fence). Off in bfloat16 and float16, whose converts
  store the stream already (the fence only cost there), and on accelerators: not measured there,
  and XLA:GPU reads a conditional's predicate on the host. The figures: docs/benchmarks.md."""
  if backend is None:
    backend = jax.default_backend()
  return backend == 'cpu' and dtype == jnp.float32


def _allowed_depths(family):
  """The depth table as a list: only these depths are built, not every 6n+2 or 9n+2."""
  by_block = {}
  for depth, (block, _) in sorted(FAMILIES[family].depths.items()):
    by_block.setdefault(block, []).append(str(depth))
  return ' and '.join(f'{", ".join(ds)} ({b} units)' for b, ds in by_block.items())


def _check_choice(argument, value, allowed):
  if value not in allowed:
    raise ValueError(f'{argument}={value!r} is not allowed; allowed: '
                     f'{", ".join(repr(a) for a in allowed)}')


def _check_bool(argument, value, allow_none=False):
  if not (isinstance(value, bool) or (allow_none and value is None)):
    raise ValueError(f'{argument}={value!r} must be True or False'
                     + (' or None' if allow_none else ''))


def create_model(family, depth, *, placement='original', shortcut=None, num_classes=None,
                 width=1.0, dtype='float32', param_dtype='float32', scan=None, scan_unroll=1,
                 remat=False, canonical_conv_grads=None, unit_fence=None,
                 zero_init_last=False, stochastic_depth=0.0, resnet_d=False, stride_in_3x3=True,
                 axis_name=None, bn_momentum=0.9, bn_epsilon=1e-5, head_init='lecun_normal',
                 backend=None) -> ResNet:
  """Builds a ResNet of He et al. 2015 / 2016; call it as `model.apply(v, images, train=...)`.

  Args:
    family: 'cifar' (3x3 stem, widths 16/32/64, 32x32 inputs) or 'imagenet' (7x7 stride-2 stem
      and max-pool, widths 64/128/256/512).
    depth: cifar: 20, 32, 44, 56, 110, 1202 (basic) or 164, 1001 (bottleneck);
      imagenet: 18, 34 (basic) or 50, 101, 152, 200 (bottleneck).
    placement: where BN and ReLU sit in a unit, Identity Mappings Fig. 4 (a)-(e): a name of
      resnet_jax.models.PLACEMENTS (models/placements.py).
    shortcut: 'A' (parameter-free: subsample and zero-pad), 'B' (projection where the shape
      changes), 'C' (projection everywhere) or 'none' (the 2015 paper's plain nets). None: A for
      CIFAR basic nets (2015), B for CIFAR bottleneck and all ImageNet nets.
    num_classes: None gives 10 for cifar, 1000 for imagenet.
    width: multiplier of every width (stem included).
    dtype, param_dtype: compute and parameter dtypes ('float32', 'bfloat16', 'float16' or the
      jnp types). BN statistics and the logits are float32 whatever they are.
    scan: run units 2..n of each stage under nn.scan; the same function. None: by `backend`
      (`scan_by_default`: CIFAR 1001 and 1202 on CPU, nets of 110+ layers on accelerators).
    scan_unroll: units per iteration of a scanned stage's loop (nn.scan's unroll); ignored
      without scan.
    remat: rematerialise each unit in the backward pass (nn.remat).
    canonical_conv_grads: the scanned units' convs compute their gradients with convolutions
      in the one layout XLA:CPU's fast path takes inside a loop (layers.canonical_grad_conv),
      the same function; without it a scanned stage runs ~28x slower on CPU. None: on CPU only.
    unit_fence: in training, pass each unrolled unit's output through layers.fusion_fence; the
      same function, bit for bit. None: `fence_by_default` (float32 compute on CPU).
    zero_init_last: zero-initialise the last scale of each residual branch (see ResidualUnit).
    stochastic_depth: drop rate p_L of the last unit; unit l of L drops with l/L * p_L
      (Huang et al. 2016). Training then needs rngs={'dropout': key}; 0 needs no rng.
    resnet_d: ImageNet only: the ResNet-D deep stem and average-pool downsampling (Bag of Tricks).
    stride_in_3x3: ImageNet bottleneck nets only: True is v1.5 (torchvision, stride on the 3x3),
      False is v1 (the 2015 paper, stride on the first 1x1). CIFAR bottleneck nets always stride
      the first 1x1, as resnet-1k-layers (a later Torch re-implementation) does for
      ResNet-164/1001.
    axis_name: a named axis (pmap or shard_map) over which BN averages its batch statistics.
    bn_momentum, bn_epsilon: BN running-average momentum (flax convention) and epsilon.
    head_init: the classifier's initial weights, a name of layers.HEAD_INITS: 'lecun_normal'
      (flax's default), 'uniform' (torch.nn.Linear's) or 'zeros'; its bias starts at 0.
    backend: the backend ('cpu', 'gpu', 'tpu') that scan, canonical_conv_grads and unit_fence
      left at None are chosen for; None asks jax.default_backend(), which starts JAX's backends.
  """
  _check_choice('family', family, tuple(FAMILIES))
  spec = FAMILIES[family]
  if isinstance(depth, bool) or depth not in spec.depths:
    raise ValueError(f'depth={depth!r} is not a {family} depth; the allowed depths are '
                     f'{_allowed_depths(family)}')
  block, stage_sizes = spec.depths[depth]
  placements.get(placement)
  if shortcut is None:
    shortcut = 'A' if (family == 'cifar' and block == 'basic') else 'B'
  _check_choice('shortcut', shortcut, SHORTCUTS)
  if num_classes is None:
    num_classes = spec.num_classes
  if (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
      or num_classes < 1):
    raise ValueError(f'num_classes={num_classes!r} must be a positive integer')
  if isinstance(width, bool) or not isinstance(width, numbers.Real) or width <= 0:
    raise ValueError(f'width={width!r} must be a positive number')
  widths = tuple(int(round(w * width)) for w in spec.widths)
  stem_width = int(round(spec.stem_width * width))
  if min(widths) < 1 or stem_width < 2:
    raise ValueError(f'width={width!r} leaves a layer with no channels; widths would be {widths}')
  dtype = layers.resolve_dtype(dtype, 'dtype')
  param_dtype = layers.resolve_dtype(param_dtype, 'param_dtype')
  for argument, value in (('remat', remat), ('zero_init_last', zero_init_last),
                          ('resnet_d', resnet_d), ('stride_in_3x3', stride_in_3x3)):
    _check_bool(argument, value)
  _check_bool('scan', scan, allow_none=True)
  if (isinstance(scan_unroll, bool) or not isinstance(scan_unroll, numbers.Integral)
      or scan_unroll < 1):
    raise ValueError(f'scan_unroll={scan_unroll!r} must be a positive integer (units of a scanned '
                     'stage per loop iteration)')
  if (isinstance(stochastic_depth, bool) or not isinstance(stochastic_depth, numbers.Real)
      or not 0 <= stochastic_depth < 1):
    raise ValueError(f'stochastic_depth={stochastic_depth!r} must be in [0, 1)')
  if resnet_d and family != 'imagenet':
    raise ValueError(f'resnet_d=True is for family=\'imagenet\' only, not family={family!r}')
  if zero_init_last and shortcut == 'none':
    raise ValueError("zero_init_last=True with shortcut='none' would make every unit output "
                     'zeros; allowed only with shortcut A, B or C')
  if axis_name is not None and not isinstance(axis_name, str):
    raise ValueError(f'axis_name={axis_name!r} must be a string (e.g. \'batch\') or None')
  if not 0 <= bn_momentum < 1:
    raise ValueError(f'bn_momentum={bn_momentum!r} must be in [0, 1)')
  if not bn_epsilon > 0:
    raise ValueError(f'bn_epsilon={bn_epsilon!r} must be positive')
  _check_choice('head_init', head_init, tuple(layers.HEAD_INITS))
  _check_bool('canonical_conv_grads', canonical_conv_grads, allow_none=True)
  _check_bool('unit_fence', unit_fence, allow_none=True)
  if None in (scan, canonical_conv_grads, unit_fence):
    backend = backend or jax.default_backend()
  if scan is None:
    scan = scan_by_default(stage_sizes, backend)
  if canonical_conv_grads is None:
    canonical_conv_grads = backend == 'cpu'
  if unit_fence is None:
    unit_fence = fence_by_default(backend, dtype)

  return ResNet(
      stage_sizes=stage_sizes, widths=widths, strides=spec.strides,
      bottleneck=block == 'bottleneck', stem=spec.stem, stem_width=stem_width,
      num_classes=int(num_classes), placement=placement, shortcut=shortcut, dtype=dtype,
      param_dtype=param_dtype, scan=scan, scan_unroll=scan_unroll, remat=remat,
      canonical_conv_grads=canonical_conv_grads, unit_fence=unit_fence,
      zero_init_last=zero_init_last, stochastic_depth=float(stochastic_depth), resnet_d=resnet_d,
      stride_in_3x3=stride_in_3x3 if family == 'imagenet' else False, axis_name=axis_name,
      bn_momentum=float(bn_momentum), bn_epsilon=float(bn_epsilon), head_init=head_init)


def from_config(model_config, **overrides) -> ResNet:
  """The net of a run config's `model` block (or a weight file's record of it): create_model
  with its keys as arguments, `overrides` replacing some (e.g. axis_name, scan). ValueError
  names the argument that cannot work."""
  kwargs = {**dict(model_config), **overrides}
  try:
    family, depth = kwargs.pop('family'), kwargs.pop('depth')
    return create_model(family, depth, **kwargs)
  except (KeyError, TypeError) as e:  # A missing key or one create_model does not take.
    raise ValueError(f'{type(e).__name__}: {e}') from None
