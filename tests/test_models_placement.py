"""Where BN, ReLU and the addition sit: Identity Mappings Fig. 4 (a)-(e) and its appendix.

The op sequences are read from the traced computation (tests/test_models_util.trace_ops), and
each op is checked to consume its predecessor's output, so the order is the data flow's, not
only the program's. Swapping the code of any two placements fails these tests.
"""

import pathlib
import re

import jax.numpy as jnp
import pytest

from resnet_jax import models
from tests.test_models_util import find, random_variables, reads, trace_ops, unit_ops

# One identity-shortcut basic unit, op by op (Fig. 4).
BASIC = {
    'original': 'conv bn relu conv bn add relu',
    'bn_after_add': 'conv bn relu conv add bn relu',
    'relu_before_add': 'conv bn relu conv bn relu add',
    'relu_only_preact': 'relu conv bn relu conv bn add',
    'full_preact': 'bn relu conv bn relu conv add',
}


def _bottleneck(spec: str) -> str:
  """A bottleneck unit repeats the pattern between a basic unit's two convs once more."""
  ops = spec.split()
  first, second = [i for i, op in enumerate(ops) if op == 'conv']
  return ' '.join(ops[:second] + ops[first:second] + ops[second:])


BOTTLENECK = {name: _bottleneck(spec) for name, spec in BASIC.items()}
PREACT = ('relu_only_preact', 'full_preact')
POSTACT = ('original', 'bn_after_add', 'relu_before_add')


def _trace(family, depth, placement, shortcut=None, size=8):
  model = models.create_model(family, depth, placement=placement, shortcut=shortcut, scan=False)
  shape = (1, size, size, 3)
  return trace_ops(model, random_variables(model, shape), jnp.zeros(shape))


def _unit_input(ops, unit):
  """The op whose output the unit reads (the previous unit's last op, or the stem's)."""
  first = next(i for i, op in enumerate(ops) if op.path[:1] == (unit,))
  return ops[first - 1]


def test_the_specs_tell_every_placement_apart():
  assert set(BASIC) == set(models.PLACEMENTS)
  assert len(set(BASIC.values())) == len(set(BOTTLENECK.values())) == len(models.PLACEMENTS)
  assert BOTTLENECK['full_preact'] == 'bn relu conv bn relu conv bn relu conv add'


def test_no_module_outside_models_compares_a_placement_name_or_lists_them():
  """Everything a placement decides is in its record (models/placements.py): a comparison with
  a placement's name elsewhere, or a list of them, is a copy that a new placement would silently
  miss. (Naming the placements a config or a study uses is no copy, nor are the papers' numbers
  per placement, experiments/papers.py.)"""
  root = pathlib.Path(__file__).resolve().parents[1]
  names = '|'.join(models.PLACEMENTS)
  quoted = rf"""['"]({names})['"]"""
  comparison = re.compile(rf'(==|!=|\bin\b)\s*\(?\s*{quoted}|{quoted}\s*(==|!=|\bin\b)')
  found = [f'{path.relative_to(root)}:{n}: {line.strip()}'
           for folder in ('resnet_jax', 'experiments', 'benchmarks', 'configs')
           for path in sorted((root / folder).rglob('*.py'))
           if 'models' not in path.relative_to(root).parts and path.name != 'papers.py'
           for n, line in enumerate(path.read_text().splitlines(), 1)
           if comparison.search(line) or len(re.findall(quoted, line)) > 2]
  assert not found, found


@pytest.mark.parametrize('placement', models.PLACEMENTS)
@pytest.mark.parametrize('family,depth,spec', [('cifar', 20, BASIC), ('imagenet', 50, BOTTLENECK)],
                         ids=['basic', 'bottleneck'])
def test_identity_unit_follows_fig4(placement, family, depth, spec):
  size = 8 if family == 'cifar' else 32
  ops = _trace(family, depth, placement, size=size)
  unit = unit_ops(ops, 'stage1_unit2')
  assert ' '.join(op.kind for op in unit) == spec[placement]
  # A chain: every op reads the one before it, the first reads the unit's input...
  x = _unit_input(ops, 'stage1_unit2')
  assert reads(unit[0], x)
  for prev, op in zip(unit, unit[1:]):
    assert reads(op, prev), (op.path, op.kind, prev.path, prev.kind)
  # ...and the addition also reads the untouched input: an identity shortcut.
  assert reads(next(op for op in unit if op.kind == 'add'), x)


@pytest.mark.parametrize('placement', models.PLACEMENTS)
def test_plain_nets_keep_the_placement_without_the_addition(placement):
  ops = _trace('cifar', 20, placement, shortcut='none')
  assert not any(op.kind == 'add' for op in ops)
  expected = BASIC[placement].replace(' add', '')
  for unit in ('stage1_unit1', 'stage2_unit1', 'stage3_unit3'):
    assert ' '.join(op.kind for op in unit_ops(ops, unit)) == expected


@pytest.mark.parametrize('placement', PREACT)
def test_preact_boundaries_follow_the_appendix(placement):
  """Stem, first unit, projection units and the extra activation of a pre-activation net."""
  ops = _trace('cifar', 20, placement, shortcut='B')
  kinds = [op.kind for op in ops]
  preact = ['bn', 'relu'] if placement == 'full_preact' else ['relu']
  # The stem's activation is the first unit's pre-activation: (e) keeps a bare conv, (d) conv-BN.
  stem = ['conv'] if placement == 'full_preact' else ['conv', 'bn']
  assert kinds[:len(stem)] == stem
  assert all(op.path[0].startswith('stem_') for op in ops[:len(stem)])
  first = unit_ops(ops, 'stage1_unit1')
  assert [op.kind for op in first[:len(preact)]] == preact
  # The first unit splits after its pre-activation: the identity path carries it too.
  add = next(op for op in first if op.kind == 'add')
  assert reads(add, first[len(preact) - 1])
  # A projection unit: the projection takes the pre-activated input and has no BN of its own.
  unit = unit_ops(ops, 'stage2_unit1')
  proj = find(ops, 'stage2_unit1', 'proj_conv')
  assert reads(proj, unit[len(preact) - 1]) and unit[len(preact) - 1].kind == 'relu'
  assert not any(op.path == ('stage2_unit1', 'proj_bn') for op in ops)
  assert reads(next(op for op in unit if op.kind == 'add'), proj)
  # An identity unit's shortcut stays the raw input (checked op by op above); after the last
  # addition comes the extra activation, then the head.
  tail = [op.kind for op in ops[-len(preact) - 2:]]
  assert tail == ['add'] + preact + ['dense']
  if placement == 'full_preact':
    assert ops[-3].path == ('final_bn',)


@pytest.mark.parametrize('placement', POSTACT)
def test_postact_nets_have_none_of_the_preact_boundaries(placement):
  ops = _trace('cifar', 20, placement, shortcut='B')
  assert [op.kind for op in ops[:3]] == ['conv', 'bn', 'relu']  # the stem keeps conv-BN-ReLU
  assert not any(op.path == ('final_bn',) for op in ops)
  unit_end = BASIC[placement].split()[-1]
  assert [op.kind for op in ops[-2:]] == [unit_end, 'dense']  # the last unit feeds the head
  # A projection: conv-BN on the raw input of the unit.
  proj, proj_bn = find(ops, 'stage2_unit1', 'proj_conv'), find(ops, 'stage2_unit1', 'proj_bn')
  assert reads(proj, _unit_input(ops, 'stage2_unit1')) and reads(proj_bn, proj)
  assert reads(next(op for op in unit_ops(ops, 'stage2_unit1') if op.kind == 'add'), proj_bn)


@pytest.mark.parametrize('shortcut,projections', [
    ('A', set()),
    ('B', {'stage2_unit1', 'stage3_unit1'}),
    ('C', {f'stage{s}_unit{u}' for s in (1, 2, 3) for u in (1, 2, 3)}),
    ('none', set()),
])
def test_shortcut_options_place_projections(shortcut, projections):
  ops = _trace('cifar', 20, 'original', shortcut=shortcut)
  assert {op.path[0] for op in ops if op.path[1:] == ('proj_conv',)} == projections
  adds = sum(op.kind == 'add' for op in ops)
  assert adds == (0 if shortcut == 'none' else 9)


def test_bottleneck_nets_project_where_the_width_changes():
  # ImageNet ResNet-50, option B: the first unit of every stage, stage 1's included (64 -> 256).
  ops = _trace('imagenet', 50, 'original', size=32)
  assert {op.path[0] for op in ops if op.path[1:] == ('proj_conv',)} == {
      f'stage{s}_unit1' for s in (1, 2, 3, 4)}
