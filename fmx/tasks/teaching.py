"""The four ways to teach of the paper's main ablation (its "Figure 3" study).

What the teacher and the student see in a training step:

- `function_matching` (default): the same crop, flip and MixUp for both.
- `consistent`: the same crop and flip for both, no MixUp.
- `independent_noise`: the same image, but independently augmented for each
  (`teacher_image` beside `image`), no MixUp.
- `fixed_teacher`: the teacher's outputs on the central crop (the eval
  preprocessing) of every training image, computed once and cached on disk;
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
from typing import Optional

import gin
import numpy as np
import tensorflow as tf

from fmx.data.pipeline import AUTOTUNE, Data
from fmx.data.source import Source
from fmx.errors import UserError
from fmx.tasks.base import fit_to_model

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
                  source: Source, start_batch: int = 0) -> tf.data.Dataset:
  """The training batches `mode` feeds to teacher and student, from `start_batch`."""
  if mode == 'function_matching':
    return data.train_dataset_fn(batch_size, seed, input_context, source,
                                 start_batch)
  if mode == 'fixed_teacher':
    # Each example carries its position in the split, to look up its
    # precomputed teacher outputs.
    source = dataclasses.replace(source, dataset=source.dataset.enumerate().map(
        lambda index, example: dict(example, index=index)))
  examples = data.train_examples(seed, input_context, source,
                                 start=start_batch * batch_size,
                                 batch_size=batch_size)
  augment = functools.partial(_augment, data, mode, seed)
  dataset = examples.map(augment, num_parallel_calls=AUTOTUNE)
  return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def _augment(data: Data, mode: str, seed, position, example):
  views = data.augment_example(seed, position, example)
  if mode == 'independent_noise':
    views['teacher_image'] = data.augment_example(
        seed + _TEACHER_VIEW_SEED_OFFSET, position, example)['image']
  if mode == 'fixed_teacher':
    views['index'] = example['index']
  return views


def fixed_teacher_outputs(teacher, data: Data, source: Source, teacher_id: str,
                          cache_dir: str, batch_size: int = 256) -> np.ndarray:
  """The teacher's logits on the central crop of every example of `source`.

  Cached in cache_dir under a key of the teacher and the data, so runs that
  share both (e.g. seeds of a grid) compute them once.
  """
  # Every gin value that can change the data or its eval view (file
  # patterns, data_dirs, crop fractions, ...) is part of the key.
  data_values = sorted(line for line in gin.config_str().splitlines()
                       if re.match(r'^([\w]+/)*(Data|datasets|augmentations)\.', line))
  key = json.dumps({'teacher': teacher_id, 'data': source.name,
                    'examples': source.num_examples, 'size': data.image_size,
                    'eval_ops': [op.__name__ for op in data.eval_ops],
                    'value_range': list(data.value_range),
                    'gin': data_values}, sort_keys=True)
  path = os.path.join(cache_dir, hashlib.sha1(key.encode()).hexdigest() + '.npy')
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path, 'rb') as f:
      return np.load(f)
  logits = np.concatenate([
      teacher(fit_to_model(teacher, batch['image']), training=False).numpy()
      for batch in data.eval_dataset_fn(batch_size, source=source)])
  if len(logits) != source.num_examples:
    raise UserError(f'{source.name!r} yielded {len(logits)} examples, not the '
                    f'{source.num_examples} it declares; cannot cache teacher '
                    'outputs for fixed_teacher.')
  tf.io.gfile.makedirs(cache_dir)
  # A temporary file of this process's own: grid points run in parallel
  # (the seeds of one cell) compute the same cache at the same time.
  tmp = f'{path}.{os.getpid()}.tmp'
  with tf.io.gfile.GFile(tmp, 'wb') as f:
    np.save(f, logits.astype(np.float32))
  tf.io.gfile.rename(tmp, path, overwrite=True)
  with tf.io.gfile.GFile(path + '.json', 'w') as f:
    f.write(key)
  return logits
