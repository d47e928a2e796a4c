"""Single image files for prediction: decoded by PIL, preprocessed as the eval split is.

The eval view of resnet_jax.data.pipeline: an image already image_size x image_size is used as it
is, any other is resized (shorter side to image_size / crop_fraction) and centre-cropped; then it
is normalised with the config's mean and std. Images are converted to the dataset's channels
first: grayscale for 1-channel data (the digits), RGB for 3.
"""

import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_jax.data import augment
from resnet_jax.data import datasets
from resnet_jax.errors import DataError


def load(path: str, channels: int) -> np.ndarray:
  """A PNG, JPEG or any image PIL reads, as uint8 (H, W, channels)."""
  try:
    with warnings.catch_warnings():
      # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: both are one line here.
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(path) as image:
        image = image.convert('L' if channels == 1 else 'RGB')
        array = np.asarray(image, np.uint8)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise DataError(f'image {path} has more than {Image.MAX_IMAGE_PIXELS:,} pixels, PIL\'s limit '
                    'against decompression bombs; resize it first') from None
  except FileNotFoundError:
    raise DataError(f'image {path} does not exist') from None
  except IsADirectoryError:
    raise DataError(f'image {path} is a directory, not an image file') from None
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise DataError(f'image {path} cannot be read as an image ({type(e).__name__}: '
                    f'{str(e).splitlines()[0] if str(e) else ""})') from None
  return array[..., None] if channels == 1 else array


def preprocess(image: np.ndarray, image_size: int, mean, std, crop_fraction: float) -> np.ndarray:
  """uint8 (H, W, C) -> float32 (image_size, image_size, C), as the eval pipeline does."""
  features = {'image': image, 'label': 0}
  if image.shape[:2] != (image_size, image_size):
    features = augment.CenterCrop(image_size, crop_fraction).map(features)
  return augment.Normalize(tuple(mean), tuple(std)).map(features)['image']


def class_names(dataset: str, data_dir: str | None = None) -> list[str] | None:
  """The names of a dataset's labels: the table's (resnet_jax/data/datasets.py), else tfds's (from
  the prepared dataset's metadata; nothing is downloaded); None if they are not there."""
  record = datasets.get(dataset)
  if record is not None and record.class_names is not None:
    return list(record.class_names)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return list(tfds.builder(dataset, data_dir=data_dir).info.features['label'].names)
  except Exception:  # pylint: disable=broad-except  # Not prepared here: the indices will do.
    return None
