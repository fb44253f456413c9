"""The distillation step's invariants, checked on the step itself.

Teacher untouched, student changed, loss finite, labels unused, and teacher
and student fed the very same pixels.
"""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.core import config_definitions as cfg

from conftest import Recorder, tiny_student_gin
from fmx.tasks.distillation import DistillationTask
from fmx.training.settings import Optimizer


def _task(teacher_dir, tmp_path, mixup='mixup_roll', extra=''):
  gin.parse_config(tiny_student_gin(str(tmp_path / 'student'), teacher_dir,
                                    mixup=mixup) + extra)
  tf_keras.utils.set_random_seed(0)
  task = DistillationTask(params=cfg.TaskConfig())
  student = task.build_model()
  optimizer = task.create_optimizer(Optimizer().config(train_steps=10))
  return task, student, optimizer


def _batches(task, count, batch_size=16):
  dataset = task.build_inputs(cfg.DataConfig(is_training=True,
                                             global_batch_size=batch_size))
  return list(dataset.take(count))


def test_step_trains_student_only_with_finite_loss(trained_teacher, tmp_path):
  task, student, optimizer = _task(trained_teacher[0], tmp_path)
  teacher_before = [w.copy() for w in task.teacher.get_weights()]
  student_before = [w.copy() for w in student.get_weights()]
  metrics = task.build_metrics(training=True)
  for batch in _batches(task, 3):
    logs = task.train_step(batch, student, optimizer, metrics)
    assert np.isfinite(float(logs['loss']))
  for before, after in zip(teacher_before, task.teacher.get_weights()):
    np.testing.assert_array_equal(before, after)  # bit-identical, BN stats too
  changed = [not np.array_equal(b, a)
             for b, a in zip(student_before, student.get_weights())]
  assert all(changed[:2]) and sum(changed) > len(changed) // 2
  assert not task.teacher.trainable_weights
  # Mixed training images have no single label: only agreement is logged.
  assert [m.name for m in metrics] == ['agreement']
  assert 0.0 <= float(metrics[0].result()) <= 1.0


@pytest.mark.parametrize('mixup', ['mixup_roll', 'mixup_reverse', 'None'])
def test_teacher_and_student_see_identical_pixels(trained_teacher, tmp_path, mixup):
  task, student, optimizer = _task(
      trained_teacher[0], tmp_path,
      mixup=mixup if mixup != 'None' else 'mixup_roll')
  if mixup == 'None':
    task.data.mixup = None
  task.teacher, student_recorder = Recorder(task.teacher), Recorder(student)
  batch = _batches(task, 1)[0]
  task.train_step(batch, student_recorder, optimizer, metrics=[])
  assert len(task.teacher.seen) == 1 and len(student_recorder.seen) == 1
  np.testing.assert_array_equal(task.teacher.seen[0], student_recorder.seen[0])
  np.testing.assert_array_equal(task.teacher.seen[0], batch['image'].numpy())


def _loss_trajectory(teacher_dir, tmp_path, shuffle_labels):
  gin.clear_config()
  task, student, optimizer = _task(teacher_dir, tmp_path)
  losses = []
  rng = np.random.RandomState(0)
  for batch in _batches(task, 4):
    if shuffle_labels:
      batch = dict(batch, label=tf.constant(rng.permutation(batch['label'].numpy())))
    losses.append(float(task.train_step(batch, student, optimizer, [])['loss']))
  return losses


def test_labels_are_unused(trained_teacher, tmp_path):
  plain = _loss_trajectory(trained_teacher[0], tmp_path, shuffle_labels=False)
  shuffled = _loss_trajectory(trained_teacher[0], tmp_path, shuffle_labels=True)
  assert plain == shuffled
  assert len(set(plain)) > 1, 'the loss should move as the student trains'


def test_teacher_and_student_at_their_own_resolutions(trained_teacher, tmp_path):
  # The teacher run was trained at 16 px; the crop is 20 px; the student runs
  # at 12 px. Each must get its own resize of the very same (mixed) crop.
  task, student, optimizer = _task(
      trained_teacher[0], tmp_path,
      extra='\nData.image_size = 20\ndistillation.student_image_size = 12')
  assert student.input_shape == (None, 12, 12, 1)
  batch = _batches(task, 1)[0]
  assert batch['image'].shape[1:3] == (20, 20)
  task.teacher, student_recorder = Recorder(task.teacher), Recorder(student)
  task.train_step(batch, student_recorder, optimizer, metrics=[])
  crop = batch['image'].numpy()
  np.testing.assert_allclose(task.teacher.seen[0],
                             tf.image.resize(crop, (16, 16)).numpy(), atol=1e-6)
  np.testing.assert_allclose(student_recorder.seen[0],
                             tf.image.resize(crop, (12, 12)).numpy(), atol=1e-6)


def test_global_mixup_scope_mixes_in_the_step_for_both(trained_teacher, tmp_path):
  task, student, optimizer = _task(trained_teacher[0], tmp_path,
                                   extra="\nData.mixup_scope = 'global'")
  batch = _batches(task, 1)[0]  # the pipeline leaves it unmixed
  task.teacher, student_recorder = Recorder(task.teacher), Recorder(student)
  task.train_step(batch, student_recorder, optimizer, metrics=[])
  np.testing.assert_array_equal(task.teacher.seen[0], student_recorder.seen[0])
  images = batch['image'].numpy()
  seen = student_recorder.seen[0]
  assert not np.allclose(seen, images)
  # One replica: the global batch is this batch, mixed with roll by one.
  a = (seen[0] - images[-1]).ravel() @ (images[0] - images[-1]).ravel() / np.sum(
      (images[0] - images[-1]) ** 2)
  np.testing.assert_allclose(seen, a * images + (1 - a) * np.roll(images, 1, axis=0),
                             atol=1e-5)


def test_teacher_jit_compile_keeps_the_teacher_logits(trained_teacher, tmp_path):
  # float32: XLA's and oneDNN's bfloat16 kernels round differently.
  task, _, _ = _task(trained_teacher[0], tmp_path,
                     extra='\ndistillation.teacher_jit_compile = True'
                     "\ndistillation.teacher_precision = 'float32'")
  images = _batches(task, 1)[0]['image']
  # The forward pass really is compiled: XLA's HLO exists only for a
  # jit-compiled function.
  assert 'HloModule' in task._teacher_forward.experimental_get_compiler_ir(  # pylint: disable=protected-access
      images)(stage='hlo')
  np.testing.assert_allclose(task.teacher_logits(images),
                             task.teacher(images, training=False),
                             rtol=1e-4, atol=1e-4)
