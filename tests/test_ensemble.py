"""Distilling from several teachers: the combination rules, what each teacher
sees, and what an ensemble run writes.

The rules are checked against numpy written here from their definitions (the
mean of softened probabilities, the mean of logits, a sum of per-teacher
KLs), on logits computed by calling each teacher model directly.
"""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.core import config_definitions as cfg

from conftest import Recorder, tiny_student_gin, tiny_teacher_gin, write
from fmx.errors import UserError
from fmx.tasks import ensemble as ensemble_lib
from fmx.tasks.distillation import DistillationTask
from fmx.training import run
from fmx.training.settings import Optimizer

TEMPERATURE = 2.0  # tiny_student_gin's losses.kl.temperature
SECOND_TEACHER_SIZE = 20  # the tiny data's crops are 16 px


def _np_log_softmax(z, t=1.0):
  z = np.asarray(z, np.float64) / t
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_kl(p, student_logits, t):
  """KL(p || softmax(student / t)) per example, p a distribution."""
  return np.sum(p * (np.log(p) - _np_log_softmax(student_logits, t)), -1)


def _np_ensemble_loss(teacher_logits, student_logits, rule, t=TEMPERATURE):
  """The three rules from their definitions (fmx.tasks.ensemble's docstring)."""
  probabilities = [np.exp(_np_log_softmax(z, t)) for z in teacher_logits]
  if rule == 'mean_probabilities':
    return _np_kl(np.mean(probabilities, 0), student_logits, t)
  if rule == 'mean_logits':
    return _np_kl(np.exp(_np_log_softmax(np.mean(teacher_logits, 0), t)),
                  student_logits, t)
  return sum(_np_kl(p, student_logits, t) for p in probabilities)


def _kl_loss(teacher_logits, student_logits):
  from fmx.losses import distillation  # pylint: disable=g-import-not-at-top
  return distillation.kl(teacher_logits, student_logits, temperature=TEMPERATURE)


@pytest.mark.parametrize('rule', ensemble_lib.RULES)
def test_rules_match_numpy_and_identical_teachers_give_the_single_loss(rule):
  rng = np.random.default_rng(0)
  teachers = rng.normal(0, 3, (3, 8, 10)).astype(np.float32)
  student = rng.normal(0, 3, (8, 10)).astype(np.float32)
  loss = ensemble_lib.loss(_kl_loss, tf.constant(teachers), student, rule,
                           TEMPERATURE)
  np.testing.assert_allclose(loss, _np_ensemble_loss(teachers, student, rule),
                             rtol=1e-5, atol=1e-6)
  twins = tf.constant(np.stack([teachers[0], teachers[0]]))
  single = _kl_loss(teachers[0], student)
  expected = 2 * single if rule == 'sum_losses' else single
  np.testing.assert_allclose(ensemble_lib.loss(_kl_loss, twins, student, rule,
                                               TEMPERATURE), expected, rtol=1e-5)


def test_classifier_of_mean_probabilities_is_the_argmax_of_averaged_softmax():
  rng = np.random.default_rng(1)
  teachers = rng.normal(0, 3, (2, 64, 5)).astype(np.float32)
  for rule in ensemble_lib.RULES:
    logits = ensemble_lib.classifier_logits(tf.constant(teachers), rule)
    reference = (teachers.mean(0) if rule == 'mean_logits' else
                 np.exp(_np_log_softmax(teachers)).mean(0))
    np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(reference, -1))


def test_teacher_names_are_short_and_unique():
  assert ensemble_lib.teacher_names(
      ['runs/a/teacher', 'runs/b/teacher/', 'https://tfhub.dev/google/bit/m-r50x1/1',
       'runs/teacher_seed1']) == ['teacher', 'teacher_2', 'm-r50x1', 'teacher_seed1']


@pytest.fixture(scope='module')
def second_teacher(tmp_path_factory):
  """Another tiny teacher: seed 1, trained at 20 px (the first at 16 px)."""
  root = tmp_path_factory.mktemp('teacher_b')
  model_dir = str(root / 'run')
  gin.clear_config()
  run.run([write(root / 'teacher.gin', tiny_teacher_gin(model_dir) +
                 f'Data.image_size = {SECOND_TEACHER_SIZE}\nTraining.seed = 1\n')])
  gin.clear_config()
  return model_dir


def _ensemble_task(tmp_path, teacher_dirs, teaching='function_matching',
                   rule='mean_probabilities'):
  gin.clear_config()
  gin.parse_config(
      tiny_student_gin(str(tmp_path / 'student'), teacher_dirs[0]) +
      f"""
distillation.teacher_run = None
distillation.teacher_runs = {list(teacher_dirs)!r}
distillation.teaching = '{teaching}'
distillation.ensemble = '{rule}'
distillation.teacher_precision = 'float32'
distillation.teacher_output_cache = '{tmp_path / 'cache'}'
""")
  tf_keras.utils.set_random_seed(0)
  task = DistillationTask(params=cfg.TaskConfig())
  student = task.build_model()
  optimizer = task.create_optimizer(Optimizer().config(train_steps=10))
  return task, student, optimizer


def _first_batch(task):
  dataset = task.build_inputs(cfg.DataConfig(is_training=True,
                                             global_batch_size=16))
  return next(iter(dataset))


@pytest.mark.parametrize('teaching', ['function_matching', 'consistent',
                                      'independent_noise', 'fixed_teacher'])
def test_two_identical_teachers_train_exactly_like_one(trained_teacher, tmp_path,
                                                       teaching):
  steps, initial = {}, None
  for name, teachers in (('one', [trained_teacher[0]]),
                         ('two', [trained_teacher[0], trained_teacher[0]])):
    task, student, optimizer = _ensemble_task(tmp_path / name, teachers, teaching)
    assert task.is_ensemble == (name == 'two')
    # Loading a second teacher draws initialisers: start from one student.
    initial = initial or student.get_weights()
    student.set_weights(initial)
    batch = _first_batch(task)
    loss = task.train_step(batch, student, optimizer)[task.loss]
    steps[name] = (float(loss), [w.numpy() for w in student.trainable_weights])
  np.testing.assert_allclose(steps['two'][0], steps['one'][0], rtol=1e-5)
  for one, two in zip(steps['one'][1], steps['two'][1]):
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('rule', ensemble_lib.RULES)
def test_two_teachers_loss_is_the_rule_in_numpy_each_at_its_own_size(
    trained_teacher, second_teacher, tmp_path, rule):
  task, student, optimizer = _ensemble_task(
      tmp_path, [trained_teacher[0], second_teacher], 'consistent', rule)
  first, second = (t.model for t in task.teachers)
  assert second.input_shape[1:3] == (SECOND_TEACHER_SIZE, SECOND_TEACHER_SIZE)
  for teacher in task.teachers:
    teacher.model = Recorder(teacher.model)
  images = _first_batch(task)['image']
  student_logits = student(images, training=True).numpy()
  loss = task.train_step({'image': images, 'label': tf.zeros([16], tf.int64)},
                         student, optimizer)[task.loss]
  # Each teacher saw its own bilinear resize of the same crops (consistent
  # teaching: no MixUp, so the batch is what the student saw).
  seen = [teacher.model.seen[0] for teacher in task.teachers]
  assert seen[0].shape[1:3] == (16, 16)
  np.testing.assert_allclose(
      seen[1], tf.image.resize(seen[0], (SECOND_TEACHER_SIZE,) * 2), atol=1e-6)
  logits = [first(seen[0], training=False).numpy(),
            second(seen[1], training=False).numpy()]
  assert not np.allclose(logits[0], logits[1], atol=1e-3), 'two different teachers'
  expected = np.mean(_np_ensemble_loss(logits, student_logits, rule))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_ensemble_run_checkpoints_the_student_alone_and_logs_each_teacher(
    trained_teacher, second_teacher, tmp_path):
  model_dir = str(tmp_path / 'student')
  gin_file = write(tmp_path / 'student.gin', tiny_student_gin(
      model_dir, trained_teacher[0]) + f"""
distillation.teacher_run = None
distillation.teacher_runs = {[trained_teacher[0], second_teacher]!r}
""")
  results = run.run([gin_file])
  names = ['run', 'run_2']  # both teachers' folders are called 'run'
  assert sorted(results['teachers']) == names
  for name in names:
    one = results['teachers'][name]
    assert set(one) == {'path', 'teacher_top1', 'agreement', 'kl'}
    assert 0.0 <= one['agreement'] <= 1.0 and one['kl'] >= 0.0
  assert results['ensemble'] == 'mean_probabilities'
  with open(os.path.join(model_dir, 'results.json')) as f:
    assert json.load(f)['teachers'] == results['teachers']
  # The checkpoint: the student's variables (and optimizer, step), no teacher's.
  student_size = results['student_params']
  checkpoint = tf.train.latest_checkpoint(model_dir)
  model_values = sum(int(np.prod(shape)) for name, shape
                     in tf.train.list_variables(checkpoint)
                     if name.startswith('model/') and 'OPTIMIZER_SLOT' not in name)
  assert model_values == student_size < results['teacher_params']
  # TensorBoard: validation/agreement/<teacher>, as the issue names them.
  from fmx import compare  # pylint: disable=g-import-not-at-top
  for name in names:
    _, values = compare.read_curve(model_dir, f'agreement/{name}')
    assert values.size


def test_config_errors_name_the_settings(trained_teacher, tmp_path):
  def build(extra):
    gin.clear_config()
    gin.parse_config(tiny_student_gin(str(tmp_path / 's'), trained_teacher[0]) + extra)
    return DistillationTask(params=cfg.TaskConfig())

  with pytest.raises(UserError, match='teacher_run.*teacher_runs'):
    build(f'distillation.teacher_runs = {[trained_teacher[0]] * 2!r}')
  with pytest.raises(UserError, match='teacher_gins has 1 entries.*teacher_runs has 2'):
    build(f"""distillation.teacher_run = None
distillation.teacher_runs = {[trained_teacher[0]] * 2!r}
distillation.teacher_gins = ['a.gin']""")
  with pytest.raises(UserError, match='teacher_precision lists 3 values.*2'):
    build(f"""distillation.teacher_run = None
distillation.teacher_runs = {[trained_teacher[0]] * 2!r}
distillation.teacher_precision = ['float32', 'float32', 'float32']""")
  with pytest.raises(UserError, match="distillation.ensemble = 'vote'"):
    build(f"""distillation.teacher_run = None
distillation.teacher_runs = {[trained_teacher[0]] * 2!r}
distillation.ensemble = 'vote'""")


def test_teachers_of_other_class_counts_are_refused_naming_both(trained_teacher,
                                                                tmp_path):
  task, _, _ = _ensemble_task(tmp_path, [trained_teacher[0], trained_teacher[0]])
  odd = tf_keras.Sequential([tf_keras.Input((16, 16, 1)), tf_keras.layers.Flatten(),
                             tf_keras.layers.Dense(7)])
  task.teachers[1].model, task.teachers[1].path = odd, 'runs/odd_teacher'
  with pytest.raises(UserError, match=r"disagree.*has 10 and 'runs/odd_teacher' has 7"):
    task._check_classes(task.teachers[1])  # pylint: disable=protected-access
