"""ImageNet ResNet-50 v1.5 (stride on the bottleneck's 3x3, as torchvision and NVIDIA), shortcut B.

  python -m resnet_jax.main --config=configs/imagenet_resnet50.py --workdir=runs/imagenet_resnet50

90 epochs at batch 1024 (see configs/imagenet.py). Reference points: about 76.3% top-1 (Flax
example, 100 epochs), the MLPerf target 75.9%; the 2015 paper's v1 reaches 77.15% 10-crop
(22.85% error, Table 3).
"""

from configs import imagenet


def get_config():
  return imagenet.get_config('depth=50,placement=original,shortcut=B,stride_in_3x3=true')
