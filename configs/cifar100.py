"""CIFAR-100, any network of the two ResNet papers, chosen by an argument string.

  python -m resnet_jax.main --workdir=runs/c100_164 \
      --config='configs/cifar100.py:depth=164,placement=full_preact'

Takes the same arguments as configs/cifar10.py. The command above is Table 3 of Identity Mappings
(pre-activation ResNet-164 on CIFAR-100): about 24.3% test error (median of 5 runs: 24.33%).
"""

from configs import cifar10


def get_config(arg: str | None = None):
  return cifar10.cifar_config(arg, 'cifar100')
