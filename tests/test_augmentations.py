"""Augmentations: every entry's contract, crop statistics, MixUp pairing."""

import inspect

import numpy as np
import pytest
import tensorflow as tf

from fmx.augmentations import mixup
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
