"""Augmentations: every entry's contract, crop statistics, MixUp pairing."""

import inspect

import numpy as np
import pytest
import tensorflow as tf

from fmx.augmentations import crops, mixup
from fmx.registry import AUGMENTATIONS

PER_IMAGE_OPS = [n for n in AUGMENTATIONS.names() if n not in mixup.MIXUPS]


def _image(height=40, width=30, channels=3, seed=0):
  return tf.constant(np.random.RandomState(seed).rand(height, width, channels),
                     tf.float32)


@pytest.mark.parametrize('name', PER_IMAGE_OPS)
def test_per_image_op_shape_range_and_determinism(name):
  op = AUGMENTATIONS.get(name)
  image = _image()
  size = 24 if 'size' in inspect.signature(op).parameters else None
  seed = tf.constant([3, 7], tf.int64)
  out = op(image, seed, size=24)
  expected_hw = (40, 30) if name == 'random_flip' else (size, size)
  assert out.shape == (*expected_hw, 3)
  assert out.dtype == tf.float32
  assert float(tf.reduce_min(out)) >= -1e-6 and float(tf.reduce_max(out)) <= 1 + 1e-6
  # Stateless: the same seed gives the same pixels (exact resume relies on it).
  np.testing.assert_array_equal(out.numpy(), op(image, seed, size=24).numpy())


def _partners(name, n):
  """Reads each image's partner back from a MixUp of one-hot 'images'."""
  images = tf.reshape(tf.eye(n), [n, 1, 1, n])
  mixed, a = AUGMENTATIONS.get(name)(images, tf.constant([1, 2], tf.int64))
  mixed = mixed.numpy().reshape(n, n)
  a = float(a)
  partners = []
  for i in range(n):
    row = mixed[i].copy()
    np.testing.assert_allclose(row[i] + row.sum() - row[i], 1.0, atol=1e-5)
    row[i] -= a
    partners.append(int(np.argmax(row)))
  return partners


@pytest.mark.parametrize('n', [8, 16])
def test_mixup_roll_pairs_i_with_i_minus_1_and_has_n_distinct_pairs(n):
  partners = _partners('mixup_roll', n)
  assert partners == [(i - 1) % n for i in range(n)]
  # Unordered pairs: roll never pairs i with j *and* j with i (for n > 2).
  assert len({frozenset((i, p)) for i, p in enumerate(partners)}) == n


@pytest.mark.parametrize('n', [8, 16])
def test_mixup_reverse_pairs_are_mirrored_n_over_2_distinct(n):
  partners = _partners('mixup_reverse', n)
  assert partners == [n - 1 - i for i in range(n)]
  unordered = {frozenset((i, p)) for i, p in enumerate(partners)}
  assert len(unordered) == n // 2


def test_mixup_output_is_the_convex_combination():
  images = tf.constant(np.random.RandomState(1).rand(6, 4, 4, 3), tf.float32)
  mixed, a = AUGMENTATIONS.get('mixup_roll')(images, tf.constant([5, 5], tf.int64))
  expected = float(a) * images.numpy() + (1 - float(a)) * np.roll(images.numpy(), 1, axis=0)
  np.testing.assert_allclose(mixed.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_mixup_coefficient_distributions():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  uniform = np.array([float(mixup.mixup_coefficient([k, 0], 'uniform'))
                      for k in range(2000)])
  assert stats.kstest(uniform, 'uniform').pvalue > 1e-3
  # beta(p) folded to max(a, 1-a): compare with the folded scipy Beta CDF.
  p = 0.4
  folded = np.array([float(mixup.mixup_coefficient([k, 1], 'beta', p))
                     for k in range(2000)])
  assert folded.min() >= 0.5
  folded_cdf = lambda x: 2 * stats.beta(p, p).cdf(x) - 1
  assert stats.kstest(folded, folded_cdf).pvalue > 1e-3


# ------------------------------------------------------------ inception crop areas

# (area_range, aspect_ratio_range, min_object_covered) of the two references.
ORIGINAL_CROP = ((0.05, 1.0), (0.75, 4 / 3), 0.1)
BIG_VISION_CROP = ((0.05, 1.0), (0.75, 1.33), 0.0)


def reference_crop_areas(rng, count, height, width, area_range, aspect_range,
                         min_covered, attempts=100):
  """Crop areas by rejection sampling, from tf.image's documented definition.

  An attempt draws a ratio r uniformly, then a height uniformly among the
  whole numbers between the heights giving the smallest and the largest
  allowed area at r (capped by the image), and width round(r x height); it
  is rejected if that area or size breaks a constraint or covers less than
  `min_covered` of the image. No accepted attempt: the whole image.
  """
  image_area = height * width
  low_area, high_area = (a * image_area for a in area_range)
  areas = np.ones(count)
  for k in range(count):
    for _ in range(attempts):
      ratio = rng.uniform(*aspect_range)
      lowest = int(np.rint(np.sqrt(low_area / ratio)))
      highest = min(int(np.rint(np.sqrt(high_area / ratio))), height,
                    int(np.floor((width + 0.5) / ratio)))
      crop_height = rng.randint(min(lowest, highest), highest + 1)
      crop_width = int(np.rint(crop_height * ratio))
      area = crop_height * crop_width
      if (low_area <= area <= high_area and 0 < crop_width <= width
          and area >= min_covered * image_area):
        areas[k] = area / image_area
        break
  return areas


def fmx_crop_areas(count, height, width, area_range, aspect_range, min_covered):
  def area(k):
    _, size = crops.inception_crop_window(
        [height, width, 3], tf.stack([tf.constant(11, tf.int64), k]),
        area_range, aspect_range, min_covered)
    return tf.cast(size[0] * size[1], tf.float64) / (height * width)
  return np.concatenate(list(tf.data.Dataset.range(count).map(area).batch(
      count).as_numpy_iterator()))


@pytest.mark.parametrize('setting,floor', [(ORIGINAL_CROP, 0.10),
                                           (BIG_VISION_CROP, 0.05)])
def test_inception_crop_area_distribution_matches_a_rejection_sampler(setting,
                                                                      floor):
  from scipy import stats  # pylint: disable=g-import-not-at-top
  ours = fmx_crop_areas(3000, 128, 128, *setting)
  reference = reference_crop_areas(np.random.RandomState(0), 6000, 128, 128,
                                   *setting)
  # The floor is the larger of area_range[0] and min_object_covered, and is
  # reached: no crop below it, some within 1% of the image above it.
  assert ours.min() >= floor - 1e-3 and ours.min() < floor + 0.01
  quantiles = [0.1, 0.25, 0.5, 0.75, 0.9]
  np.testing.assert_allclose(np.quantile(ours, quantiles),
                             np.quantile(reference, quantiles), atol=0.03)
  assert stats.ks_2samp(ours, reference).pvalue > 1e-3
  below_10 = np.mean(ours < 0.1)
  if floor == 0.10:
    assert below_10 == 0
  else:  # big_vision: about 13% of its crops are under 10% of the image
    assert 0.09 < below_10 < 0.17 and abs(below_10 - np.mean(reference < 0.1)) < 0.03


def test_inception_crop_uses_its_window():
  image = _image(64, 48)
  seed = tf.constant([4, 9], tf.int64)
  begin, size = crops.inception_crop_window(tf.shape(image), seed,
                                            min_object_covered=0.0)
  expected = tf.image.resize(tf.slice(image, begin, size), (20, 20))
  np.testing.assert_allclose(
      AUGMENTATIONS.get('inception_crop')(image, seed, 20,
                                          min_object_covered=0.0),
      expected, atol=1e-6)
