"""A resumed run's data stream is exactly the tail of the uninterrupted one.

The stream is a pure function of (seed, position): resuming at step s must
give the batches s, s+1, ... that a run from step 0 would have seen, across
epoch boundaries, for every way to teach, without replaying the start.
"""

import types

import gin
import numpy as np
import pytest
import tf_keras

from conftest import TINY_DATA
from fmx.data.pipeline import Data
from fmx.registry import DATASETS
from fmx.tasks import teaching
from fmx.tasks.base import FmxTask

# 40 examples at batch 8: an epoch is 5 batches, so batches 3..12 cross two
# epoch boundaries (each epoch its own order).
SPLIT, BATCH, START, COUNT = 'train[:40]', 8, 3, 10


def _batches(mode, start_batch, count, cache_dir):
  gin.parse_config(TINY_DATA + "Data.mixup = 'mixup_roll'")
  data = Data()
  source = DATASETS.get('mnist_embedded')(split=SPLIT)
  fixed_outputs = None
  if mode == 'fixed_teacher':  # any teacher: its cached outputs ride along
    teacher = tf_keras.Sequential([tf_keras.Input((16, 16, 1)),
                                   tf_keras.layers.Flatten(),
                                   tf_keras.layers.Dense(10)])
    fixed_outputs = teaching.cache_fixed_teacher_outputs(
        teacher, data, source, 'a random teacher', cache_dir)
  dataset = teaching.train_dataset(data, mode, BATCH, 7, None, source,
                                   start_batch, fixed_outputs)
  return [{k: v.numpy() for k, v in b.items()} for b in dataset.take(count)]


@pytest.mark.parametrize('mode', teaching.MODES)
def test_stream_from_start_batch_is_the_tail_of_the_full_stream(mode, tmp_path):
  full = _batches(mode, 0, START + COUNT, str(tmp_path))
  gin.clear_config()
  resumed = _batches(mode, START, COUNT, str(tmp_path))  # the same cache
  assert len(resumed) == COUNT
  for expected, got in zip(full[START:], resumed):
    assert expected.keys() == got.keys()
    for key in expected:
      np.testing.assert_array_equal(expected[key], got[key], err_msg=key)


def test_each_epoch_is_a_new_order_of_the_whole_split():
  gin.parse_config(TINY_DATA + 'Data.mixup = None')
  data = Data()
  source = DATASETS.get('mnist_embedded')(split=SPLIT)
  labels_and_pixels = [(int(e['label']), e['image'].numpy().tobytes())
                       for _, e in data.train_examples(0, None, source).take(80)]
  first, second = labels_and_pixels[:40], labels_and_pixels[40:]
  everything = [(int(e['label']), e['image'].numpy().tobytes())
                for e in source.dataset]
  assert sorted(first) == sorted(everything) == sorted(second)
  assert first != second


@pytest.mark.parametrize('replicas, pipelines', [(1, 1), (8, 1), (8, 2)])
def test_start_batch_counts_the_batches_each_pipeline_fed(replicas, pipelines):
  task = types.SimpleNamespace(start_step=5)
  context = types.SimpleNamespace(num_replicas_in_sync=replicas,
                                  num_input_pipelines=pipelines)
  # Each step takes one batch per replica; a pipeline feeds its share.
  assert FmxTask.start_batch(task, context) == 5 * replicas // pipelines
  assert FmxTask.start_batch(task, None) == 5
