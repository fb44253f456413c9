"""Per-image geometric augmentations.

Every op is `op(image, seed, size) -> image` on float32 images in [0, 1]; the
pipeline passes a distinct stateless seed per image and op, so a run's crops
and flips are a pure function of (run seed, example position) and can be
replayed exactly on resume.
"""

from typing import Tuple

import tensorflow as tf

from fmx.registry import AUGMENTATIONS

_FRAMEWORK_ARGS = ('image', 'seed', 'size')


def _resize(image, size: int):
  return tf.image.resize(image, (size, size), method='bilinear', antialias=False)


def inception_crop_window(image_shape, seed,
                          area_range: Tuple[float, float] = (0.05, 1.0),
                          aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3),
                          min_object_covered: float = 0.1,
                          max_attempts: int = 100):
  """(begin, size) of `inception_crop`'s window on an image of `image_shape`.

  Depends only on the shape and the seed, so `fmx inspect-data` can recompute
  the window of any crop the pipeline took.
  """
  # The whole image is the "object": min_object_covered is then the least
  # fraction of the image a crop keeps, a second floor beside area_range.
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed, min_object_covered=min_object_covered,
      aspect_ratio_range=aspect_ratio_range, area_range=area_range,
      max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
  return begin, size


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def inception_crop(image, seed, size: int,
                   area_range: Tuple[float, float] = (0.05, 1.0),
                   aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3),
                   min_object_covered: float = 0.1,
                   max_attempts: int = 100):
  """Random crop of random area and aspect ratio, resized to size x size.

  Each attempt draws an aspect ratio uniformly from `aspect_ratio_range`, then
  a height uniformly between those giving area_range[0] and area_range[1] of
  the image at that ratio; the crop is kept if its area is within
  `area_range` and it covers at least `min_object_covered` of the image, so
  the smallest crop is max(area_range[0], min_object_covered) of the image.
  After `max_attempts` failures the whole image is used.

  The references differ in that floor: the original TF2 implementation set
  min_object_covered 0.1 (crops of 10%-100% of the image), big_vision's
  `inception_crop` sets 0 (5%-100%; 13% of its crops are under 10% on square
  images). Both use the default max_attempts of 100.

  Args:
    area_range: (min, max) fraction of the image's area a crop keeps.
    aspect_ratio_range: (min, max) width / height of a crop.
    min_object_covered: least fraction of the image every crop covers.
    max_attempts: draws before falling back to the whole image.
  """
  begin, crop_size = inception_crop_window(
      tf.shape(image), seed, area_range, aspect_ratio_range,
      min_object_covered, max_attempts)
  return _resize(tf.slice(image, begin, crop_size), size)


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def random_flip(image, seed, size: int):
  """Random horizontal flip (probability 1/2); size is unchanged."""
  del size
  return tf.image.stateless_random_flip_left_right(image, seed)


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def random_translate(image, seed, size: int, max_shift: int = 3):
  """Shifts the image up to max_shift pixels (zero fill), then resizes.

  Args:
    max_shift: largest shift in pixels, along each axis.
  """
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]])
  cropped = tf.image.stateless_random_crop(
      padded, tf.stack([height, width, tf.shape(image)[2]]), seed)
  return _resize(cropped, size)


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def central_crop(image, seed, size: int, fraction: float = 0.875):
  """Central crop keeping `fraction` of each side, resized to size (eval).

  Args:
    fraction: share of each side the crop keeps (0.875 is the usual eval crop).
  """
  del seed
  return _resize(tf.image.central_crop(image, fraction), size)


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def resize(image, seed, size: int):
  """Resizes the whole image to size x size (aspect ratio not kept)."""
  del seed
  return _resize(image, size)


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def resize_then_random_crop(image, seed, size: int, resize_to: int = 160):
  """Resize to resize_to x resize_to, then a random size x size crop (teacher).

  Args:
    resize_to: side in pixels of the resize before the crop.
  """
  channels = tf.shape(image)[2]
  resized = _resize(image, resize_to)
  return tf.image.stateless_random_crop(resized, tf.stack([size, size, channels]),
                                        seed)
