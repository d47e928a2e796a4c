"""CIFAR-10 pre-activation ResNet-110 (Fig. 4e), the recipe of He et al. 2016 (Identity Mappings).

  python -m resnet_jax.main --config=configs/cifar10_preact_resnet110.py --workdir=runs/cifar10_preact_resnet110

Batch 128, lr 0.01 for 400 steps, then 0.1, /10 at 32k and 48k, 64k steps, wd 1e-4, momentum 0.9.
The paper reports 6.37% test error (median of 5 runs).
"""

from configs import cifar10


def get_config():
  return cifar10.get_config('depth=110,placement=full_preact,recipe=2016')
