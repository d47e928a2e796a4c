"""Preprocessing as grain transforms in NumPy (no TensorFlow).

Each transform maps a feature dict {'image': uint8 HWC, 'label', ...} to a new dict and keeps
the other keys (eval's 'mask'). The random ones are `grain.transforms.RandomMap`: grain hands
them a generator seeded from the pipeline seed and the record's position in the stream, so a
record's augmentation is the same whatever `worker_count` is, and a resumed iterator
reproduces it exactly.
"""

import dataclasses
import math

import grain
import numpy as np
from PIL import Image


def _resize(image, box, size):
  """Resizes the (left, top, right, bottom) box of `image` to size x size, bicubic."""
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC, box=box))
  return out[..., None] if squeeze else out


@dataclasses.dataclass(frozen=True)
class RandomPadCrop(grain.transforms.RandomMap):
  """Zero-pads `pad` pixels on each side and takes a random size x size crop.

  The CIFAR augmentation of He et al. 2015, Sec. 4.2 (after Lee et al. 2015): pad 4, crop 32.
  """

  size: int
  pad: int

  def random_map(self, features, rng):
    image = features['image']
    height, width, channels = image.shape
    # The crop's corner in image coordinates: -pad .. height + pad - size.
    top = int(rng.integers(0, height + 2 * self.pad - self.size + 1)) - self.pad
    left = int(rng.integers(0, width + 2 * self.pad - self.size + 1)) - self.pad
    # Copies the part of the image inside the crop into zeros: np.pad's cost, without the pad.
    out = np.zeros((self.size, self.size, channels), image.dtype)
    y0, y1 = max(top, 0), min(top + self.size, height)
    x0, x1 = max(left, 0), min(left + self.size, width)
    out[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
    return {**features, 'image': out}


@dataclasses.dataclass(frozen=True)
class RandomFlip(grain.transforms.RandomMap):
  """Mirrors the image left-right with probability 1/2."""

  def random_map(self, features, rng):
    if rng.random() < 0.5:
      return {**features, 'image': features['image'][:, ::-1]}
    return features


@dataclasses.dataclass(frozen=True)
class InceptionCrop(grain.transforms.RandomMap):
  """A random crop of 8%-100% of the area, aspect ratio in [3/4, 4/3], resized to size x size.

  The "scale augmentation" of Szegedy et al. 2015 that the ResNet ImageNet recipes use
  (torchvision's RandomResizedCrop: 10 tries, then a centre crop of the whole image).
  """

  size: int
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
  attempts: int = 10

  def _box(self, height, width, rng):
    area = height * width
    log_lo, log_hi = math.log(self.aspect_range[0]), math.log(self.aspect_range[1])
    for _ in range(self.attempts):
      target = area * rng.uniform(*self.area_range)
      ratio = math.exp(rng.uniform(log_lo, log_hi))
      w = round(math.sqrt(target * ratio))
      h = round(math.sqrt(target / ratio))
      if 0 < w <= width and 0 < h <= height:
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        return left, top, left + w, top + h
    # Fallback: the whole image, trimmed to the aspect range, centred.
    ratio = width / height
    if ratio < self.aspect_range[0]:
      w, h = width, round(width / self.aspect_range[0])
    elif ratio > self.aspect_range[1]:
      w, h = round(height * self.aspect_range[1]), height
    else:
      w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h

  def random_map(self, features, rng):
    image = features['image']
    box = self._box(image.shape[0], image.shape[1], rng)
    return {**features, 'image': _resize(image, box, self.size)}


@dataclasses.dataclass(frozen=True)
class CenterCrop(grain.transforms.Map):
  """The centre crop_fraction of the shorter side, resized to size x size.

  The standard ImageNet eval view: with size 224 and crop_fraction 0.875 it equals resizing
  the shorter side to 256 and cropping the central 224, in a single resampling.
  """

  size: int
  crop_fraction: float

  def map(self, features):
    image = features['image']
    height, width = image.shape[:2]
    side = min(height, width) * self.crop_fraction
    top, left = (height - side) / 2, (width - side) / 2
    box = (left, top, left + side, top + side)
    return {**features, 'image': _resize(image, box, self.size)}


@dataclasses.dataclass(frozen=True)
class Pixels(grain.transforms.Map):
  """The last host transform of the input pipelines: uint8 pixels and int32 labels, what gets
  batched and sent to the devices. The steps normalise there (resnet_jax.train.step.model_input),
  so the host converts nothing to float and sends a quarter of float32's bytes."""

  def map(self, features):
    image = features['image']
    if image.dtype != np.uint8:
      raise TypeError(f'an image reached the batch as {image.dtype}, not uint8 pixels')
    return {**features, 'label': np.int32(features['label'])}


@dataclasses.dataclass(frozen=True)
class Normalize(grain.transforms.Map):
  """(image - mean) / std per channel, as float32; labels as int32."""

  mean: tuple[float, ...]
  std: tuple[float, ...]

  def map(self, features):
    image = features['image'].astype(np.float32)
    image = (image - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
    return {**features, 'image': image, 'label': np.int32(features['label'])}
