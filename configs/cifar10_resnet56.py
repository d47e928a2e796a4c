"""CIFAR-10 ResNet-56, option A shortcuts, the recipe of He et al. 2015 (Sec. 4.2, Table 6).

  python -m resnet_jax.main --config=configs/cifar10_resnet56.py --workdir=runs/cifar10_resnet56

64k steps of batch 128. The paper reports 6.97% test error.
"""

from configs import cifar10


def get_config():
  return cifar10.get_config('depth=56,placement=original,shortcut=A,recipe=2015')
