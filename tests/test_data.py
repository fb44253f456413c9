"""Dataset entries and the input pipeline, on data the tests make or ship."""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import TINY_DATA
from fmx.data.pipeline import Data
from fmx.data.source import slice_bounds
from fmx.errors import UserError
from fmx.registry import DATASETS


def test_mnist_embedded_splits_are_disjoint_and_stratified():
  train = DATASETS.get('mnist_embedded')(split='train')
  test = DATASETS.get('mnist_embedded')(split='test')
  assert (train.num_examples, test.num_examples) == (4000, 1000)
  as_bytes = lambda s: {ex['image'].numpy().tobytes() for ex in s.dataset}
  assert not as_bytes(train) & as_bytes(test), 'test images leak into train'
  test_labels = np.array([int(ex['label']) for ex in test.dataset])
  assert np.all(np.bincount(test_labels) == 100)
  # Slices keep every class (the test split is not ordered by class).
  assert len(set(test_labels[:100])) == 10


def test_slices_partition_the_split():
  head = DATASETS.get('mnist_embedded')(split='train[:90%]')
  tail = DATASETS.get('mnist_embedded')(split='train[90%:]')
  assert head.num_examples + tail.num_examples == 4000
  assert tail.num_examples == 400


@pytest.mark.parametrize('split', ['valid', 'train[5:5]', 'train[::2]'])
def test_bad_split_is_a_user_error(split):
  with pytest.raises(UserError, match='split'):
    slice_bounds(split, {'train': 100, 'test': 10})


@pytest.mark.parametrize('name', ['oxford_flowers102', 'oxford_iiit_pet', 'food101'])
def test_tfds_entries_on_mock_data(name):
  with tfds.testing.mock_data(num_examples=6):
    source = DATASETS.get(name)(split='train')
    example = next(iter(source.dataset))
  assert source.num_classes > 1 and source.channels == 3
  assert example['image'].dtype == tf.uint8 and example['label'].dtype == tf.int64


def _data(extra=''):
  gin.parse_config(TINY_DATA + extra)
  return Data()


def test_train_pipeline_shapes_range_and_determinism():
  data = _data("Data.mixup = 'mixup_roll'\nData.value_range = (-1, 1)")
  first = next(iter(data.train_dataset_fn(batch_size=8, seed=3)))
  again = next(iter(data.train_dataset_fn(batch_size=8, seed=3)))
  other = next(iter(data.train_dataset_fn(batch_size=8, seed=4)))
  assert first['image'].shape == (8, 16, 16, 1)
  assert float(tf.reduce_min(first['image'])) >= -1 and float(tf.reduce_max(first['image'])) <= 1
  np.testing.assert_array_equal(first['image'], again['image'])
  assert not np.array_equal(first['image'], other['image'])


def test_eval_pipeline_counts_every_example_once():
  data = _data()
  source = DATASETS.get('mnist_embedded')(split='test[:70]')
  batches = list(data.eval_dataset_fn(batch_size=32, source=source))
  assert [int(b['image'].shape[0]) for b in batches] == [32, 32, 6]
  labels = np.concatenate([b['label'].numpy() for b in batches])
  expected = np.array([int(ex['label']) for ex in source.dataset])
  np.testing.assert_array_equal(labels, expected)


def test_batch_op_in_per_image_list_is_a_user_error():
  with pytest.raises(UserError, match="set Data.mixup = 'mixup_roll'"):
    _data("Data.train_augmentations = ['mixup_roll']")
