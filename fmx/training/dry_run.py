"""`fmx run --dry_run`: everything an experiment builds, offline, at a tiny shape.

A dry run parses the experiment, builds its data pipeline on mock data
(`tfds.testing.mock_data`), both models at 32 px, the optimiser, and runs one
train step and one evaluation (eagerly: tracing a ResNet costs more than the
step), all in a temporary folder: a shipped
experiment that no longer builds fails here, not after hours on a TPU.
TF-Hub modules are replaced by a small local SavedModel of the same kind
(image -> features), since the real ones need the network; teacher runs the
experiment names are dry-run first, like real ones.
"""

import contextlib
import os
from typing import List, Sequence

import tensorflow as tf
import tf_keras

BINDINGS = [
    'Data.image_size = 32',
    'Data.shuffle_buffer = 8',
    'Training.global_batch_size = 2',
    'Training.eval_batch_size = 4',
    'Training.max_steps = 1',
    'Training.steps_per_loop = 1',
    'Training.evals = 1',
    'Training.compile_steps = False',
]
_HUB_SCOPES = ('', 'teacher/', 'student/')


def bindings(root: str) -> List[str]:
  """The dry-run overrides, with TF-Hub handles pointing at a local stand-in."""
  standin = os.path.join(root, 'hub_standin')
  if not tf.io.gfile.exists(os.path.join(standin, 'saved_model.pb')):
    _export_hub_standin(standin)
  return BINDINGS + [f"{scope}backbones.hub.handle = '{standin}'"
                     for scope in _HUB_SCOPES]


def teacher_dir(root: str, teacher_gin: str, taken: Sequence[str] = ()) -> str:
  """Where a dry run trains the teacher that `teacher_gin` describes.

  `taken`: folders of this run's other teachers (an ensemble of teachers
  trained from one gin file gets one folder each).
  """
  name = os.path.splitext(os.path.basename(teacher_gin))[0]
  folder, count = os.path.join(root, 'teachers', name), 2
  while os.path.abspath(folder) in map(os.path.abspath, taken):
    folder, count = os.path.join(root, 'teachers', f'{name}_{count}'), count + 1
  return folder


@contextlib.contextmanager
def offline_data():
  """TFDS datasets come from tfds.testing.mock_data: 8 random examples."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # the mock warns per feature access
  try:
    with tfds.testing.mock_data(num_examples=8):
      yield
  finally:
    logging.set_verbosity(verbosity)


def _export_hub_standin(folder: str) -> None:
  """A tiny image -> 16 features SavedModel, like a TF-Hub feature vector."""
  inputs = tf_keras.Input((None, None, 3))
  x = tf_keras.layers.Conv2D(16, 3, strides=2)(inputs)
  outputs = tf_keras.layers.GlobalAveragePooling2D()(x)
  tf.saved_model.save(tf_keras.Model(inputs, outputs), folder)
