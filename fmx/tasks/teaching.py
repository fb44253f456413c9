"""The four ways to teach of the paper's main ablation (its "Figure 3" study).

What the teacher and the student see in a training step:

- `function_matching` (default): the same crop, flip and MixUp for both.
- `consistent`: the same crop and flip for both, no MixUp.
- `independent_noise`: the same image, but independently augmented for each
  (`teacher_image` beside `image`), no MixUp.
- `fixed_teacher`: the teacher's outputs on the central crop (the eval
  preprocessing) of every training image, computed once and cached on disk
  (float16 shards keyed by example index), then streamed beside the images;
  the student trains on augmented crops (no MixUp) against them.

Only `function_matching` uses `Data.mixup`. Evaluation always runs the live
teacher on the eval data, so fidelity is measured the same way for all four.
"""

import dataclasses
import functools
import hashlib
import json
import os
import re
import uuid
from typing import Optional

import gin
import numpy as np
import tensorflow as tf

from fmx.data.pipeline import AUTOTUNE, Data
from fmx.data.source import Source
from fmx.errors import UserError

MODES = ('function_matching', 'consistent', 'independent_noise', 'fixed_teacher')
# The teacher's view in `independent_noise` draws from another seed stream
# (far from the run seed and seed + 1, which MixUp uses).
_TEACHER_VIEW_SEED_OFFSET = 1_000_003


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise UserError(f'distillation.teaching = {mode!r}; use one of {list(MODES)}.')
  return mode


def train_dataset(data: Data, mode: str, batch_size: int, seed: int,
                  input_context: Optional[tf.distribute.InputContext],
                  source: Source, start_batch: int = 0,
                  fixed_outputs: Optional[str] = None) -> tf.data.Dataset:
  """The training batches `mode` feeds to teacher and student, from `start_batch`.

  `fixed_outputs`: for 'fixed_teacher', the folder of cached teacher outputs
  (cache_fixed_teacher_outputs), streamed beside the images.
  """
  if mode == 'function_matching':
    return data.train_dataset_fn(batch_size, seed, input_context, source,
                                 start_batch)
  if mode == 'fixed_teacher':
    # Each example carries its index in the split and its teacher outputs,
    # read from disk beside it (never a graph constant: at ImageNet scale the
    # outputs are GBs, past the 2 GB graph limit).
    source = dataclasses.replace(source, dataset=tf.data.Dataset.zip(
        source.dataset.enumerate(), read_fixed_outputs(fixed_outputs)).map(
            _with_fixed_outputs))
  examples = data.train_examples(seed, input_context, source,
                                 start=start_batch * batch_size,
                                 batch_size=batch_size)
  augment = functools.partial(_augment, data, mode, seed)
  dataset = examples.map(augment, num_parallel_calls=AUTOTUNE)
  return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def _with_fixed_outputs(indexed, outputs):
  index, example = indexed
  with tf.control_dependencies([tf.debugging.assert_equal(
      index, outputs['index'],
      message='fixed-teacher outputs out of step with the split')]):
    return dict(example, index=tf.identity(index),
                teacher_logits=outputs['logits'])


def _augment(data: Data, mode: str, seed, position, example):
  views = data.augment_example(seed, position, example)
  if mode == 'independent_noise':
    views['teacher_image'] = data.augment_example(
        seed + _TEACHER_VIEW_SEED_OFFSET, position, example)['image']
  if mode == 'fixed_teacher':
    views['index'] = example['index']
    views['teacher_logits'] = example['teacher_logits']
  return views


# ----------------------------------------------------- fixed-teacher output cache
#
# A folder per (teacher, data) key: shards of EXAMPLES_PER_SHARD TFRecords in
# split order, each {'index': int64, 'logits': float16 bytes} of one example,
# plus key.json (the key, and the shape of an example's outputs: [classes]
# for one teacher, [teachers, classes] for an ensemble's). Memory stays flat
# whatever the split's size: the outputs are computed, written and read a
# batch or a record at a time.

EXAMPLES_PER_SHARD = 10_000  # ~20 MB of float16 logits per shard at 1000 classes
KEY_FILE = 'key.json'


def cache_key(teacher_id: str, data: Data, source: Source) -> str:
  """The key of a teacher's outputs on `source`'s eval view (a JSON string)."""
  # Every gin value that can change the data or its eval view (file
  # patterns, data_dirs, crop fractions, ...) is part of the key.
  data_values = sorted(line for line in gin.config_str().splitlines()
                       if re.match(r'^([\w]+/)*(Data|datasets|augmentations)\.', line))
  return json.dumps({'teacher': teacher_id, 'data': source.name,
                     'examples': source.num_examples, 'size': data.image_size,
                     'eval_ops': [op.__name__ for op in data.eval_ops],
                     'value_range': list(data.value_range),
                     'gin': data_values}, sort_keys=True)


def cache_fixed_teacher_outputs(teacher_outputs, data: Data, source: Source,
                                teacher_id: str, cache_dir: str,
                                batch_size: int = 256) -> str:
  """The folder of the teacher's logits on the central crop of `source`.

  `teacher_outputs(crops)`: the logits of a batch of eval crops, [batch,
  classes] (an ensemble's [batch, teachers, classes]), computed as training
  would compute them (the teacher's precision, its own resize). Computed
  once per key (teacher and data), so runs that share both (e.g.
  seeds of a grid) reuse them; written to a temporary folder then renamed,
  so an interrupted run leaves no half cache behind.
  """
  key = cache_key(teacher_id, data, source)
  folder = os.path.join(cache_dir, hashlib.sha1(key.encode()).hexdigest())
  if tf.io.gfile.exists(os.path.join(folder, KEY_FILE)):
    return folder
  # Unique, so runs computing the same key at once (a grid's seeds) never
  # write into one another's files.
  partial = f'{folder}.tmp-{uuid.uuid4().hex}'
  tf.io.gfile.makedirs(partial)
  written, shape, writer = 0, None, None
  for batch in data.eval_dataset_fn(batch_size, source=source):
    logits = teacher_outputs(batch['image'])
    for row in np.asarray(logits, np.float32).astype(np.float16):
      if written % EXAMPLES_PER_SHARD == 0:
        if writer:
          writer.close()
        writer = tf.io.TFRecordWriter(os.path.join(
            partial, f'shard-{written // EXAMPLES_PER_SHARD:05d}.tfrecord'))
      shape = list(row.shape)
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          'index': tf.train.Feature(int64_list=tf.train.Int64List(value=[written])),
          'logits': tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[row.tobytes()]))})).SerializeToString())
      written += 1
  if writer:
    writer.close()
  if written != source.num_examples:
    tf.io.gfile.rmtree(partial)
    raise UserError(f'{source.name!r} yielded {written} examples, not the '
                    f'{source.num_examples} it declares; cannot cache teacher '
                    'outputs for fixed_teacher.')
  with tf.io.gfile.GFile(os.path.join(partial, KEY_FILE), 'w') as f:
    json.dump({'key': json.loads(key), 'shape': shape, 'dtype': 'float16',
               'examples': written}, f)
  try:
    tf.io.gfile.rename(partial, folder)
  except (tf.errors.OpError, OSError):
    if not tf.io.gfile.exists(os.path.join(folder, KEY_FILE)):
      raise
    tf.io.gfile.rmtree(partial)  # another run wrote the same key first
  return folder


def read_fixed_outputs(folder: str) -> tf.data.Dataset:
  """{'index', 'logits' (float32)} of every example of a cache, in split order."""
  with tf.io.gfile.GFile(os.path.join(folder, KEY_FILE)) as f:
    shape = json.load(f)['shape']
  shards = sorted(tf.io.gfile.glob(os.path.join(folder, 'shard-*.tfrecord')))
  features = {'index': tf.io.FixedLenFeature([], tf.int64),
              'logits': tf.io.FixedLenFeature([], tf.string)}

  def parse(record):
    example = tf.io.parse_single_example(record, features)
    logits = tf.io.decode_raw(example['logits'], tf.float16)
    return {'index': example['index'],
            'logits': tf.cast(tf.reshape(logits, shape), tf.float32)}

  return tf.data.TFRecordDataset(shards).map(parse)
