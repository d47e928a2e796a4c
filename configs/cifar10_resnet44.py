"""CIFAR-10 ResNet-44, option A shortcuts, the recipe of He et al. 2015 (Sec. 4.2, Table 6).

  python -m resnet_jax.main --config=configs/cifar10_resnet44.py --workdir=runs/cifar10_resnet44

64k steps of batch 128. The paper reports 7.17% test error.
"""

from configs import cifar10


def get_config():
  return cifar10.get_config('depth=44,placement=original,shortcut=A,recipe=2015')
