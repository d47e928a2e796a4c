"""ImageNet pre-activation ResNet-50 (Identity Mappings, Fig. 4e), shortcut B.

  python -m resnet_jax.main --config=configs/imagenet_preact_resnet50.py --workdir=runs/in_preact50

90 epochs at batch 1024 (see configs/imagenet.py); expect about 76% top-1, like ResNet-50 v1.5.
"""

from configs import imagenet


def get_config():
  return imagenet.get_config('depth=50,placement=full_preact,shortcut=B')
