"""CIFAR-100 pre-activation ResNet-110 (Fig. 4e), the recipe of He et al. 2016 (Identity Mappings).

  python -m resnet_jax.main --config=configs/cifar100_preact_resnet110.py --workdir=runs/cifar100_preact_resnet110

Batch 128, lr 0.01 for 400 steps, then 0.1, /10 at 32k and 48k, 64k steps, wd 1e-4, momentum 0.9.
The paper reports no CIFAR-100 ResNet-110; its pre-activation ResNet-164 reaches 24.33% test
error (Table 3), and the shallower net should land somewhat above that.
"""

from configs import cifar100


def get_config():
  return cifar100.get_config('depth=110,placement=full_preact,recipe=2016')
