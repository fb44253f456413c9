"""MixUp variants: who mixes with whom, and how many distinct pairs a batch holds.

Partners are read back from the op's output on one-hot 'images' and counted
with references written here in numpy, not with fmx's own helpers.
"""

import gin
import numpy as np
import pytest
import tensorflow as tf

from fmx.augmentations import mixup
from fmx.data.pipeline import Data
from fmx.registry import AUGMENTATIONS

BATCH_SIZES = (8, 16)


def read_partners(name, n, seed=(1, 2), **params):
  """Runs MixUp entry `name` on one-hot images; returns (partners, a)."""
  images = tf.reshape(tf.eye(n), [n, 1, 1, n])
  mixed, a = AUGMENTATIONS.get(name)(images, tf.constant(seed, tf.int64), **params)
  mixed, a = mixed.numpy().reshape(n, n), float(a)
  assert 0.0 < a < 1.0 - 1e-6, 'a = 1 would hide the partner'
  partners = []
  for i, row in enumerate(mixed):
    np.testing.assert_allclose(row.sum(), 1.0, atol=1e-5)  # convex
    others = [j for j in np.flatnonzero(row > 1e-6) if j != i]
    assert len(others) <= 1, f'image {i} mixes with several: {others}'
    partner = others[0] if others else i
    expected = np.zeros(n)
    expected[i] += a
    expected[partner] += 1.0 - a
    np.testing.assert_allclose(row, expected, atol=1e-5)
    partners.append(partner)
  return np.array(partners), a


def distinct_pairs_reference(partners) -> int:
  """Unordered pairs of two different images, by numpy cycle arithmetic."""
  index = np.arange(len(partners))
  fixed_points = np.sum(partners == index)
  two_cycles = np.sum((partners[partners] == index) & (partners != index)) // 2
  return len(partners) - fixed_points - two_cycles


@pytest.mark.parametrize('name', mixup.MIXUPS)
def test_every_mixup_says_how_many_distinct_pairs(name):
  description = dict(AUGMENTATIONS.describe())[name]
  assert 'distinct pairs' in description


def test_every_mixup_entry_is_known_as_a_batch_op():
  named_mixup = {n for n in AUGMENTATIONS.names() if 'mixup' in n}
  assert named_mixup == set(mixup.MIXUPS) == set(mixup.PARTNERS)


@pytest.mark.parametrize('n', BATCH_SIZES)
def test_roll_pairs_i_with_i_minus_1_n_distinct_pairs(n):
  partners, _ = read_partners('mixup_roll', n)
  np.testing.assert_array_equal(partners, np.roll(np.arange(n), 1))
  assert distinct_pairs_reference(partners) == n
  assert len({frozenset(p) for p in enumerate(partners)}) == n


@pytest.mark.parametrize('n', BATCH_SIZES)
def test_reverse_pairs_are_mirrored_n_over_2_distinct(n):
  partners, _ = read_partners('mixup_reverse', n)
  np.testing.assert_array_equal(partners, np.arange(n)[::-1])
  assert distinct_pairs_reference(partners) == n // 2
  assert len({frozenset(p) for p in enumerate(partners)}) == n // 2


@pytest.mark.parametrize('n', BATCH_SIZES)
def test_permute_draws_a_permutation_from_the_batch_seed(n):
  seen = set()
  for seed in range(6):
    partners, _ = read_partners('mixup_permute', n, seed=(seed, 9))
    np.testing.assert_array_equal(np.sort(partners), np.arange(n))
    again, _ = read_partners('mixup_permute', n, seed=(seed, 9))
    np.testing.assert_array_equal(partners, again)  # stateless
    # The pair count of this permutation, from its cycles and as a set.
    count = distinct_pairs_reference(partners)
    assert count == len({frozenset((i, int(p))) for i, p in enumerate(partners)
                         if i != p})
    assert count <= n
    seen.add(tuple(partners))
  assert len(seen) == 6, 'different batch seeds must draw different partners'
  assert tuple(np.arange(n)) not in seen


def test_permute_holds_n_minus_1_5_distinct_pairs_on_average():
  # A uniform permutation has 1 fixed point and 1/2 two-cycle on average.
  n, draws = 16, 400
  counts, fixed = [], []
  for seed in range(draws):
    partners = mixup.permute_partners(n, tf.constant([seed, 3], tf.int64)).numpy()
    counts.append(distinct_pairs_reference(partners))
    fixed.append(np.sum(partners == np.arange(n)))
  assert abs(np.mean(fixed) - 1.0) < 0.15
  assert abs(np.mean(counts) - (n - 1.5)) < 0.2


@pytest.mark.parametrize('name', mixup.MIXUPS)
@pytest.mark.parametrize('coefficient', ['uniform', 'beta'])
def test_output_is_the_convex_combination_with_the_partner(name, coefficient):
  n = 8
  images = np.random.RandomState(0).rand(n, 5, 5, 3).astype(np.float32)
  partners, a = read_partners(name, n, seed=(4, 4), coefficient=coefficient, p=0.5)
  mixed, a_real = AUGMENTATIONS.get(name)(
      tf.constant(images), tf.constant([4, 4], tf.int64),
      coefficient=coefficient, p=0.5)
  assert float(a_real) == a
  if coefficient == 'beta':
    assert a >= 0.5  # folded, as the official implementation does
  np.testing.assert_allclose(mixed.numpy(), a * images + (1 - a) * images[partners],
                             rtol=1e-5, atol=1e-6)


def _recover_mix(got, values):
  """(a, partners) with got = a * values + (1 - a) * values[partners]."""
  n = len(values)
  row = next(i for i in range(n) if abs(got[i] - values[i]) > 1e-4)
  for j in range(n):
    if j == row:
      continue
    a = (got[row] - values[j]) / (values[row] - values[j])
    partners = []
    for i in range(n):
      fits = [k for k in range(n)
              if abs(a * values[i] + (1 - a) * values[k] - got[i]) < 1e-5]
      if not fits:
        break
      partners.append(fits[0])
    if len(partners) == n and 0 < a < 1:
      return a, np.array(partners)
  raise AssertionError('the batch is no MixUp of its own images')


def test_pipeline_mixes_each_batch_within_itself_with_a_new_permutation():
  n = 8
  gin.parse_config("""
      Data.train_dataset = 'mnist_embedded'
      Data.eval_dataset = 'mnist_embedded'
      Data.image_size = 4
      Data.train_augmentations = []
      Data.mixup = 'mixup_permute'
      Data.shuffle_buffer = 1
      """)
  # Constant images of distinct values; no shuffle: batch b holds images
  # b*n .. b*n+n-1, and its values tell who was mixed with whom.
  levels = np.arange(3 * n, dtype=np.uint8) * 7 + 10
  images = np.broadcast_to(levels[:, None, None, None], (3 * n, 4, 4, 1)).copy()
  from fmx.data.source import Source  # pylint: disable=g-import-not-at-top
  source = Source(name='constant:train', num_examples=3 * n, num_classes=2,
                  channels=1, dataset=tf.data.Dataset.from_tensor_slices(
                      {'image': images, 'label': np.zeros(3 * n, np.int64)}))
  data = Data()
  batches = list(data.train_dataset_fn(n, seed=5, source=source).take(3))
  again = list(data.train_dataset_fn(n, seed=5, source=source).take(3))
  permutations = set()
  for index, (batch, repeat) in enumerate(zip(batches, again)):
    np.testing.assert_array_equal(batch['image'], repeat['image'])
    got = batch['image'].numpy()[:, 0, 0, 0].astype(np.float64)
    assert np.all(got == batch['image'].numpy()[:, 2, 3, 0])
    values = levels[index * n:(index + 1) * n] / 255.0
    _, partners = _recover_mix(got, values)
    np.testing.assert_array_equal(np.sort(partners), np.arange(n))
    permutations.add(tuple(partners))
  assert len(permutations) == 3, 'every batch draws its own partners'
