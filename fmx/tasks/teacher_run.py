"""A teacher as a distillation run finds it: an fmx teacher run's directory.

A teacher run is *finished* when it has written results.json, which happens
only after its last checkpoint; a distillation run naming an unfinished
teacher run trains it first (see fmx.training.run).
"""

import json
import os

import tensorflow as tf
import tf_keras

# Registers the custom Keras layers (BiT's, hub's) model_from_json must know.
import fmx.backbones  # noqa: F401  pylint: disable=unused-import
from fmx.backbones import bit_resnet
from fmx.errors import UserError

ARCHITECTURE_FILE = 'model.json'
RESULTS_FILE = 'results.json'


def is_finished(run_dir: str) -> bool:
  return all(tf.io.gfile.exists(os.path.join(run_dir, f))
             for f in (ARCHITECTURE_FILE, RESULTS_FILE))


def write_architecture(model: tf_keras.Model, run_dir: str) -> None:
  tf.io.gfile.makedirs(run_dir)
  with tf.io.gfile.GFile(os.path.join(run_dir, ARCHITECTURE_FILE), 'w') as f:
    f.write(model.to_json())


def load_teacher(run_dir: str) -> tf_keras.Model:
  """Rebuilds the teacher from model.json and its run's latest checkpoint."""
  if not is_finished(run_dir):
    raise UserError(
        f'teacher run {run_dir!r} has no finished checkpoint (no {RESULTS_FILE}'
        f' or {ARCHITECTURE_FILE}). Train it first with `fmx run --gin '
        f'TEACHER.gin --model_dir {run_dir}`, or set distillation.teacher_gin so '
        'fmx trains it for you.')
  checkpoint = tf.train.latest_checkpoint(run_dir)
  if not checkpoint:
    raise UserError(f'teacher run {run_dir!r} has results.json but no checkpoint '
                    '(were its ckpt-* files removed?); retrain it or restore them.')
  try:
    with tf.io.gfile.GFile(os.path.join(run_dir, ARCHITECTURE_FILE)) as f:
      teacher = tf_keras.models.model_from_json(f.read())
    # Only the model's variables are wanted; the optimizer's slots are not.
    tf.train.Checkpoint(model=teacher).read(
        checkpoint).assert_existing_objects_matched().expect_partial()
  except UserError:
    raise  # e.g. a hub teacher's handle that cannot be loaded, already named
  except (ValueError, AssertionError, tf.errors.OpError, OSError) as e:
    raise UserError(
        f'the teacher of run {run_dir!r} could not be rebuilt from '
        f'{ARCHITECTURE_FILE} and {checkpoint} ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}). If it uses a TF-Hub '
        'module, the handle must be reachable; otherwise retrain the teacher.') from None
  teacher.trainable = False
  # The teacher never changes: what depends on its weights alone (BiT's
  # weight standardisation) is computed once here, not at every step.
  bit_resnet.fold_weight_standardization(teacher)
  return teacher


def read_results(run_dir: str) -> dict:
  with tf.io.gfile.GFile(os.path.join(run_dir, RESULTS_FILE)) as f:
    return json.load(f)
