"""Where BN and ReLU sit around a residual unit's convs: one record per placement.

The five placements are Fig. 4 (a)-(e) of He et al. 2016, "Identity Mappings in Deep Residual
Networks" (arXiv 1603.05027), whose Table 2 compares them. A record lists the ops, in order, at
each place of a unit; written out for a basic unit (a bottleneck has one more inner conv):

  original          (a)  conv-BN-ReLU-conv-BN, add, ReLU
  bn_after_add      (b)  conv-BN-ReLU-conv, add, BN-ReLU
  relu_before_add   (c)  conv-BN-ReLU-conv-BN-ReLU, add
  relu_only_preact  (d)  ReLU-conv-BN-ReLU-conv-BN, add
  full_preact       (e)  BN-ReLU-conv-BN-ReLU-conv, add

Every module that builds, names or chooses by a placement reads it here; a new placement is a new
record (and its op order in tests/test_models_placement.py).
"""

import dataclasses

BN, RELU = 'bn', 'relu'


@dataclasses.dataclass(frozen=True)
class Placement:
  """One placement. Each `*_ops` is a sequence of 'bn' and 'relu' applied in that order.

  before_conv: before every conv of the branch (the pre-activation of (d) and (e)).
  after_conv: after every conv but the branch's last.
  after_last_conv: after the branch's last conv, before the addition.
  after_add: after the addition.
  stem: after the stem's (last) conv. A pre-activation net moves the stem's activation into the
    first unit, whose pre-activation follows the stem (Identity Mappings appendix).
  end: after the last unit, before the pooling: the appendix's extra activation after the last
    addition of a pre-activation net.
  recipe: the paper whose CIFAR recipe config.recipe='auto' picks (resnet_jax.recipes).
  """
  name: str
  figure: str
  before_conv: tuple[str, ...]
  after_conv: tuple[str, ...]
  after_last_conv: tuple[str, ...]
  after_add: tuple[str, ...]
  stem: tuple[str, ...]
  end: tuple[str, ...]
  recipe: str

  @property
  def preact(self) -> bool:
    """Whether the activation comes before each conv, so that the shortcut can share it: the
    appendix pre-activates before the split in projection units and the net's first unit, and
    its projections are bare convs (as in resnet-1k-layers, a Torch re-implementation)."""
    return bool(self.before_conv)

  @property
  def last_conv_has_bn(self) -> bool:
    """Whether a BN follows the branch's last conv: zero_init_last zeroes its scale, otherwise
    the last conv's kernel."""
    return BN in self.after_last_conv


_POST = (BN, RELU)
TABLE = {p.name: p for p in (
    Placement('original', '(a)', (), _POST, (BN,), (RELU,), _POST, (), '2015'),
    Placement('bn_after_add', '(b)', (), _POST, (), _POST, _POST, (), '2015'),
    Placement('relu_before_add', '(c)', (), _POST, _POST, (), _POST, (), '2015'),
    Placement('relu_only_preact', '(d)', (RELU,), (BN,), (BN,), (), (BN,), (RELU,), '2016'),
    Placement('full_preact', '(e)', _POST, (), (), (), (), _POST, '2016'),
)}
PLACEMENTS = tuple(TABLE)


def get(name: str) -> Placement:
  """The record of placement `name`; ValueError naming the allowed ones otherwise."""
  if name not in TABLE:
    raise ValueError(f'placement={name!r} is not allowed; allowed: '
                     f'{", ".join(repr(p) for p in PLACEMENTS)}')
  return TABLE[name]
