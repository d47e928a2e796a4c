"""ImageNet pre-activation ResNet-200 (Identity Mappings, Table 5), shortcut B.

  python -m resnet_jax.main --config=configs/imagenet_preact_resnet200.py --workdir=runs/in_preact200

90 epochs at batch 1024 (see configs/imagenet.py). The paper reports 20.7% top-1 / 5.3% top-5
error with a single 320x320 crop (the original-unit ResNet-200: 21.8% / 6.0%).
"""

from configs import imagenet


def get_config():
  return imagenet.get_config('depth=200,placement=full_preact,shortcut=B')
