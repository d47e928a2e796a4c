"""The NumPy augmentations, one transform at a time."""

import numpy as np
from PIL import Image
import pytest

from resnet_jax.data import augment


def _image(height, width, channels=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)


def test_random_pad_crop_is_a_window_of_the_zero_padded_image_at_every_offset():
  """He et al. 2015 Sec. 4.2: pad 4 pixels on each side, take a random 32x32 crop."""
  image = _image(32, 32)
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  transform = augment.RandomPadCrop(size=32, pad=4)
  rng = np.random.default_rng(0)
  offsets = set()
  for _ in range(2000):
    out = transform.random_map({'image': image, 'label': 3}, rng)
    assert out['image'].shape == (32, 32, 3) and out['image'].dtype == np.uint8
    assert out['label'] == 3
    found = [(t, l) for t in range(9) for l in range(9)
             if np.array_equal(out['image'], padded[t:t + 32, l:l + 32])]
    assert len(found) == 1
    offsets.add(found[0])
  assert offsets == {(t, l) for t in range(9) for l in range(9)}


def test_random_flip_mirrors_half_of_the_images():
  image = _image(8, 8)
  rng = np.random.default_rng(0)
  flipped = 0
  for _ in range(1000):
    out = augment.RandomFlip().random_map({'image': image}, rng)['image']
    if np.array_equal(out, image[:, ::-1]):
      flipped += 1
    else:
      assert np.array_equal(out, image)
  assert 450 < flipped < 550


@pytest.mark.parametrize('height,width', [(375, 500), (500, 333), (40, 1000), (224, 224)])
def test_inception_crop_boxes_cover_8_to_100_percent_with_aspect_3_4_to_4_3(height, width):
  crop = augment.InceptionCrop(size=64)
  rng = np.random.default_rng(0)
  for _ in range(300):
    left, top, right, bottom = crop._box(height, width, rng)
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    w, h = right - left, bottom - top
    # Rounding to whole pixels moves the ratio by at most a pixel's worth.
    assert 3 / 4 - 1 / min(w, h) <= w / h <= 4 / 3 + 1 / min(w, h)
    if 3 / 4 <= width / height <= 4 / 3:  # Otherwise small crops may be impossible.
      assert w * h >= 0.08 * height * width * 0.95
  out = crop.random_map({'image': _image(height, width), 'label': 1}, rng)
  assert out['image'].shape == (64, 64, 3) and out['image'].dtype == np.uint8


def test_inception_crop_falls_back_to_the_centre_of_an_extreme_image():
  """A 10x1000 strip admits no crop of 8% area in the ratio range: the centre 13x10 box."""
  left, top, right, bottom = augment.InceptionCrop(size=8)._box(10, 1000, np.random.default_rng(0))
  assert (top, bottom) == (0, 10) and right - left == 13 and abs((left + right) / 2 - 500) <= 1


def test_center_crop_equals_resize_256_then_crop_224():
  """One resampling of the centre 87.5% is the usual two-step eval view, to 1 grey level."""
  y, x = np.mgrid[0:300, 0:400]
  image = np.stack([128 + 100 * np.sin(x / 37), 128 + 100 * np.cos(y / 23),
                    128 + 100 * np.sin((x + y) / 51)], -1).astype(np.uint8)
  out = augment.CenterCrop(size=224, crop_fraction=0.875).map({'image': image})['image']
  resized = np.asarray(Image.fromarray(image).resize((341, 256), Image.Resampling.BICUBIC))
  left = (341 - 224) // 2
  reference = resized[16:240, left:left + 224]
  assert out.shape == (224, 224, 3)
  assert np.abs(out.astype(int) - reference).mean() < 1


def test_center_crop_handles_one_channel_images():
  out = augment.CenterCrop(size=4, crop_fraction=1.0).map({'image': _image(8, 8, 1)})['image']
  assert out.shape == (4, 4, 1) and out.dtype == np.uint8


def test_normalize_gives_float32_images_and_int32_labels_and_keeps_other_keys():
  mean, std = (125.0, 120.0, 110.0), (60.0, 50.0, 40.0)
  image = np.broadcast_to(np.array([185, 70, 150], np.uint8), (4, 4, 3))
  out = augment.Normalize(mean, std).map({'image': image, 'label': np.int64(7), 'mask': True})
  assert out['image'].dtype == np.float32 and out['label'].dtype == np.int32
  np.testing.assert_allclose(out['image'][0, 0], [1.0, -1.0, 1.0])
  assert out['label'] == 7 and out['mask'] is True


def test_random_transforms_depend_only_on_the_generator():
  """What grain needs for exact resume: the same rng state gives the same augmentation."""
  image = _image(32, 32)
  for transform in (augment.RandomPadCrop(32, 4), augment.RandomFlip(), augment.InceptionCrop(16)):
    a = transform.random_map({'image': image}, np.random.default_rng(5))['image']
    b = transform.random_map({'image': image}, np.random.default_rng(5))['image']
    np.testing.assert_array_equal(a, b)
