"""CIFAR-10 ResNet-20, option A shortcuts, the recipe of He et al. 2015 (Sec. 4.2, Table 6).

  python -m resnet_jax.main --config=configs/cifar10_resnet20.py --workdir=runs/cifar10_resnet20

64k steps of batch 128. The paper reports 8.75% test error.
"""

from configs import cifar10


def get_config():
  return cifar10.get_config('depth=20,placement=original,shortcut=A,recipe=2015')
