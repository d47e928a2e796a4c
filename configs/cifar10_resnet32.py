"""CIFAR-10 ResNet-32, option A shortcuts, the recipe of He et al. 2015 (Sec. 4.2, Table 6).

  python -m resnet_jax.main --config=configs/cifar10_resnet32.py --workdir=runs/cifar10_resnet32

64k steps of batch 128. The paper reports 7.51% test error.
"""

from configs import cifar10


def get_config():
  return cifar10.get_config('depth=32,placement=original,shortcut=A,recipe=2015')
