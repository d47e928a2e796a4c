"""Layer table, parameter counts and multiply-adds per image of a ResNet.

  python -m resnet_jax.summary --config=configs/cifar10.py:depth=110,placement=full_preact
  python -m resnet_jax.summary --config=configs/imagenet_resnet50.py [--config.model.depth=101]
  python -m resnet_jax.summary --table    # every net of the two papers against the papers' figures

Multiply-adds come from XLA's cost analysis of the eval-mode forward pass of one image
(HloCostAnalysis flops / 2, on the lowered HLO). XLA skips the taps that fall on a conv's zero
padding and counts BN, ReLU and additions as well; the analytic column counts conv and dense
multiply-adds with every tap, the convention of the papers' Table 1 and of torchvision.
Everything is computed on abstract shapes: no weights are initialised.
"""

import math

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import cli
from resnet_jax import errors
from resnet_jax import models
from resnet_jax.models import abstract_variables

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags.

  The entry point defines them, not the import, so that this module and resnet_jax.main (which
  has a --config of its own) import into one process.
  """
  cli.define_config_flag(
      'config', 'A config file, FILE or FILE:ARG (configs/cifar10.py takes the model keys, e.g. '
      'depth=110,placement=full_preact); the net is its config.model, the input its data\'s '
      'images. Override any key with --config.KEY=VALUE.')
  flags.DEFINE_bool('table', False, 'Print the parameter-count table of the papers\' nets.')
  cli.register_key_flags(('config', 'table'))


DEFAULT_IMAGE_SIZE = {'cifar': 32, 'imagenet': 224}

# The papers' nets and figures: He et al. 2015 Table 6 (CIFAR, parameters in millions, without
# BN as the papers count) and He et al. 2016 Table 4; ImageNet counts are torchvision's (its model
# docs), exact, BN included.
PAPER_NETS = (
    ('cifar', 20, 'original', 'A', '0.27M', '2015 Table 6'),
    ('cifar', 32, 'original', 'A', '0.46M', '2015 Table 6'),
    ('cifar', 44, 'original', 'A', '0.66M', '2015 Table 6'),
    ('cifar', 56, 'original', 'A', '0.85M', '2015 Table 6'),
    ('cifar', 110, 'original', 'A', '1.7M', '2015 Table 6'),
    ('cifar', 1202, 'original', 'A', '19.4M', '2015 Table 6'),
    ('cifar', 164, 'full_preact', 'B', '1.7M', '2016 Table 4'),
    ('cifar', 1001, 'full_preact', 'B', '10.2M', '2016 Table 4'),
    ('imagenet', 18, 'original', 'B', '11,689,512', 'torchvision'),
    ('imagenet', 34, 'original', 'B', '21,797,672', 'torchvision'),
    ('imagenet', 50, 'original', 'B', '25,557,032', 'torchvision'),
    ('imagenet', 101, 'original', 'B', '44,549,160', 'torchvision'),
    ('imagenet', 152, 'original', 'B', '60,192,808', 'torchvision'),
    ('imagenet', 200, 'full_preact', 'B', '-', ''),
)
# He et al. 2015 Table 1, multiply-adds per 224x224 image (v1 nets: stride on the first 1x1).
PAPER_MULTIPLY_ADDS = {18: 1.8e9, 34: 3.6e9, 50: 3.8e9, 101: 7.6e9, 152: 11.3e9}


def param_counts(params):
  """(all parameters, BN parameters); BN modules are the ones holding a 'scale'."""
  total = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
  bn = 0
  stack = [params]
  while stack:
    tree = stack.pop()
    if 'scale' in tree:
      bn += sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
    else:
      stack.extend(v for v in tree.values() if isinstance(v, dict))
  return total, bn


def _unrolled(model):
  # XLA's cost analysis counts a while loop's body once, so count on the unrolled twin, which
  # computes the same function (tests/test_models_scan.py).
  return model.clone(scan=False, remat=False)


def xla_multiply_adds(model, image_shape):
  """Multiply-adds of one image's eval forward pass: XLA cost analysis flops / 2."""
  model = _unrolled(model)
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), model.dtype)
  variables = abstract_variables(model, x.shape)
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
  return lowered.cost_analysis()['flops'] / 2


def _trace(model, image_shape):
  """Per top-level module of the unrolled net: its outputs, analytic MACs and unit attributes."""
  model = _unrolled(model)
  info = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__' or not module.path:
      return out
    entry = info.setdefault(module.path[0], {'macs': 0})
    if len(module.path) == 1:
      entry.update(module=module, input=args[0].shape, output=out.shape)
    if isinstance(module, nn.Conv):
      entry['macs'] += (math.prod(out.shape[1:]) * math.prod(module.kernel_size)
                        * args[0].shape[-1])
    elif isinstance(module, nn.Dense):
      entry['macs'] += args[0].shape[-1] * module.features
    return out

  with nn.intercept_methods(record):
    variables = abstract_variables(model, (1,) + tuple(image_shape))
  return info, variables['params']


def _unit_text(entry):
  unit = entry['module']
  shape = 'bottleneck' if unit.bottleneck else 'basic'
  stride = f' /{unit.strides}' if unit.strides > 1 else ''
  return f'{shape} {entry["input"][-1]}->{unit.features}{stride}, {unit.shortcut}'


def _shape_text(shape):
  return 'x'.join(str(d) for d in shape[1:])


def layer_rows(model, image_shape):
  """(module, units, what, output shape, params, analytic MACs) per row of the layer table.

  Units 2..n of a stage are identical, so they share one row (scan's stage{s}_scan).
  """
  info, params = _trace(model, image_shape)
  count = lambda names: sum(param_counts(params[n])[0] for n in names if n in params)
  macs = lambda names: sum(info[n]['macs'] for n in names)
  rows = []
  stem = [n for n in info if n.startswith('stem_')]
  stem_text = ', '.join(f'{n}' for n in stem)
  first = info['stage1_unit1']['input']
  if model.stem == 'imagenet':
    stem_text += ', max-pool /2'
  rows.append(('stem', '', stem_text, _shape_text(first), count(stem), macs(stem)))
  for s, size in enumerate(model.stage_sizes, 1):
    unit1 = f'stage{s}_unit1'
    rows.append((unit1, '1', _unit_text(info[unit1]), _shape_text(info[unit1]['output']),
                 count([unit1]), macs([unit1])))
    if size > 1:
      rest = [f'stage{s}_unit{u}' for u in range(2, size + 1)]
      name = f'stage{s}_scan' if model.scan else f'stage{s}_unit2..{size}'
      rows.append((name, str(size - 1), _unit_text(info[rest[0]]),
                   _shape_text(info[rest[-1]]['output']), count(rest), macs(rest)))
  if 'final_bn' in info:
    rows.append(('final_bn', '', 'BN-ReLU after the last addition', '', count(['final_bn']), 0))
  head = info['head']['module']
  rows.append(('head', '', f'global avg-pool, dense {info["head"]["input"][-1]}->{head.features}',
               str(head.features), count(['head']), macs(['head'])))
  return rows


def _describe(model):
  return (f'{"bottleneck" if model.bottleneck else "basic"}, placement={model.placement}, '
          f'shortcut={model.shortcut}, scan={model.scan}, remat={model.remat}, '
          f'dtype={jnp.dtype(model.dtype).name}')


def model_summary(model, image_shape, title=''):
  """The layer table, parameter counts and multiply-adds per image, as printable text."""
  rows = layer_rows(model, image_shape)
  header = ('module', 'units', 'unit', 'output', 'params', 'MACs')
  table = [header] + [(n, u, w, o, f'{p:,}', f'{m:,}' if m else '') for n, u, w, o, p, m in rows]
  widths = [max(len(r[i]) for r in table) for i in range(len(header))]
  lines = [f'{title} ({_describe(model)}), input {"x".join(map(str, image_shape))}']
  for r in table:
    lines.append('  '.join(c.rjust(w) if i >= 4 else c.ljust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip())
  total, bn = param_counts(abstract_variables(model, (1,) + tuple(image_shape))['params'])
  analytic = sum(r[5] for r in rows)  # the same figure as analytic_multiply_adds
  lines.append(f'parameters: {total:,} ({total - bn:,} without BN + {bn:,} BN scales and biases)')
  lines.append(f'multiply-adds per image: {xla_multiply_adds(model, image_shape):.4g} '
               f'(XLA cost analysis, flops / 2); {analytic:.4g} conv + dense, counting every tap')
  return '\n'.join(lines)


def analytic_multiply_adds(model, image_shape):
  """Conv and dense multiply-adds of one image, counting every tap (the papers' convention)."""
  info, _ = _trace(model, image_shape)
  return sum(entry['macs'] for entry in info.values())


def paper_table(nets=PAPER_NETS):
  """Parameter counts and multiply-adds of the papers' nets (`nets`: rows of PAPER_NETS)."""
  header = ('net', 'placement', 'shortcut', 'params', 'without BN', 'BN', 'paper params',
            'MACs XLA', 'MACs all taps', 'v1 XLA', 'v1 all taps', 'paper MACs')
  table = [header]
  for family, depth, placement, shortcut, paper, source in nets:
    model = models.create_model(family, depth, placement=placement, shortcut=shortcut)
    image = (DEFAULT_IMAGE_SIZE[family],) * 2 + (3,)
    total, bn = param_counts(abstract_variables(model, (1,) + image)['params'])
    macs = [xla_multiply_adds(model, image), analytic_multiply_adds(model, image)]
    if family == 'imagenet' and model.bottleneck:
      v1 = model.clone(stride_in_3x3=False)
      macs += [xla_multiply_adds(v1, image), analytic_multiply_adds(v1, image)]
    macs = [f'{m:.3g}' for m in macs] + [''] * (4 - len(macs))
    paper_macs = PAPER_MULTIPLY_ADDS.get(depth) if family == 'imagenet' else None
    table.append((f'{family} ResNet-{depth}', placement, shortcut, f'{total:,}', f'{total - bn:,}',
                  f'{bn:,}', f'{paper} {source}'.strip(), *macs,
                  f'{paper_macs:.3g}' if paper_macs else ''))
  widths = [max(len(r[i]) for r in table) for i in range(len(header))]
  lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
  lines.append('Inputs: 32x32x3 (cifar, 10 classes), 224x224x3 (imagenet, 1000 classes). ImageNet '
               'nets are v1.5 (stride on the 3x3); the v1 columns stride the first 1x1, as the '
               '2015 paper does. MACs per image; XLA skips taps on zero padding.')
  return '\n'.join(lines)


@cli.one_line_errors
def main(argv):
  del argv  # parse_flags rejects arguments that are no flags.
  if FLAGS.table:
    print(paper_table())
    return
  if FLAGS.config is None:
    raise errors.UserError('give --config=FILE (e.g. --config=configs/cifar10.py:depth=110) or '
                           '--table; --helpshort lists the flags.')
  from resnet_jax.train import run  # pylint: disable=g-import-not-at-top
  prepared = run.prepare(FLAGS.config, open_data=False)
  model = prepared.config.model
  print(model_summary(run.model(prepared.config), prepared.image_shape,
                      f'{model.family} ResNet-{model.depth}'))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
