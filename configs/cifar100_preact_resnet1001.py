"""CIFAR-100 pre-activation ResNet-1001 (Fig. 4e), the recipe of He et al. 2016 (Identity Mappings).

  python -m resnet_jax.main --config=configs/cifar100_preact_resnet1001.py --workdir=runs/cifar100_preact_resnet1001

Batch 128, lr 0.01 for 400 steps, then 0.1, /10 at 32k and 48k, 64k steps, wd 1e-4, momentum 0.9.
The paper reports 22.71% test error (median of 5 runs).
"""

from configs import cifar100


def get_config():
  return cifar100.get_config('depth=1001,placement=full_preact,recipe=2016')
