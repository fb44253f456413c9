"""The first training batch, as teacher and student see it, in TensorBoard.

Logged once when a run starts (TensorBoard's Images tab, under train/), so a
reader can check the crops, flips and MixUp of a config without running
`fmx inspect-data`.
"""

import dataclasses
import os

import tensorflow as tf

MAX_IMAGES = 16


def log_first_batch(task, model_dir: str, step: int) -> None:
  source = task.sources['train']
  # The first examples alone: no second shuffle buffer or cache to fill.
  count = min(MAX_IMAGES, source.num_examples)
  first = dataclasses.replace(source, dataset=source.dataset.take(count),
                              num_examples=count)
  batch = next(iter(task.train_inputs(count, first)))
  to_unit = task.data.to_unit_range  # model inputs back to [0, 1] for display
  writer = tf.summary.create_file_writer(os.path.join(model_dir, 'train'))
  with writer.as_default(step=step):
    tf.summary.image('inputs/student', to_unit(batch['image']),
                     max_outputs=MAX_IMAGES,
                     description='What the student sees in a training batch.')
    # Without a view of its own, the teacher sees exactly the student's pixels.
    if 'teacher_image' in batch:
      tf.summary.image('inputs/teacher', to_unit(batch['teacher_image']),
                       max_outputs=MAX_IMAGES,
                       description='The teacher\'s own view (independent noise).')
  writer.flush()
