"""CIFAR-10 ResNet-110, option A shortcuts, the recipe of He et al. 2015 (Sec. 4.2, Table 6).

  python -m resnet_jax.main --config=configs/cifar10_resnet110.py --workdir=runs/cifar10_resnet110

64k steps of batch 128. The paper reports 6.43 (best of 5; mean 6.61)% test error.
"""

from configs import cifar10


def get_config():
  return cifar10.get_config('depth=110,placement=original,shortcut=A,recipe=2015')
