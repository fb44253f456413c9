"""TF-Hub / SavedModel backbones and teachers, from SavedModels the tests export.

Nothing here reaches the network: every handle is a local folder, or a URL on
a closed local port.
"""

import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import tiny_student_gin, write
from fmx import cli
from fmx.backbones import hub
from fmx.errors import UserError
from fmx.registry import BACKBONES
from fmx.tasks import teacher_run

SHAPE = (16, 16, 1)


def _export(model, path) -> str:
  tf.saved_model.save(model, str(path))
  return str(path)


def _tiny_model(outputs: int, seed: int = 0) -> tf_keras.Model:
  tf_keras.utils.set_random_seed(seed)
  return tf_keras.Sequential([
      tf_keras.Input(SHAPE), tf_keras.layers.Conv2D(4, 3),
      tf_keras.layers.BatchNormalization(),
      tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(outputs)])


@pytest.fixture(scope='module')
def features_module(tmp_path_factory):
  """(SavedModel folder, the tf_keras model exported there): 5 features."""
  model = _tiny_model(5)
  # Non-trivial BatchNorm statistics, so training vs inference mode shows.
  bn = model.layers[1]
  bn.moving_mean.assign(tf.fill([4], 0.3))
  bn.moving_variance.assign(tf.fill([4], 4.0))
  return _export(model, tmp_path_factory.mktemp('hub') / 'features'), model


def _images(n=4):
  return tf.random.stateless_uniform([n, *SHAPE], seed=(3, 4))


def test_hub_entry_puts_zero_init_head_on_module_features(features_module):
  path, exported = features_module
  model = BACKBONES.get('hub')(num_classes=7, input_shape=SHAPE, handle=path)
  logits = model(_images(), training=False)
  assert logits.shape == (4, 7) and logits.dtype == tf.float32
  np.testing.assert_array_equal(logits.numpy(), np.zeros((4, 7)))
  layer = model.layers[1]
  np.testing.assert_allclose(layer(_images()).numpy(),
                             exported(_images(), training=False).numpy(), atol=1e-6)
  # The module's weights are the model's: fine-tuned (trainable) and counted.
  assert model.count_params() == exported.count_params() + 5 * 7 + 7
  trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
  assert trainable == (sum(int(np.prod(w.shape)) for w in exported.trainable_weights)
                       + 5 * 7 + 7)


def test_hub_entry_without_head_passes_module_logits_through(features_module):
  path, exported = features_module
  model = BACKBONES.get('hub')(num_classes=5, input_shape=SHAPE, handle=path,
                               head=False, trainable=False)
  assert not model.trainable_weights
  np.testing.assert_allclose(model(_images(), training=True).numpy(),
                             exported(_images(), training=False).numpy(), atol=1e-6)
  with pytest.raises(UserError, match=r"outputs \(None, 5\), not logits of shape "
                     r"\[batch, 7\]"):
    BACKBONES.get('hub')(num_classes=7, input_shape=SHAPE, handle=path, head=False)


def test_hub_model_architecture_round_trips_through_json(features_module):
  # A teacher run of a `hub` backbone is rebuilt from its model.json.
  model = BACKBONES.get('hub')(num_classes=3, input_shape=SHAPE,
                               handle=features_module[0])
  head = model.get_layer('head')
  head.set_weights([np.ones_like(w) for w in head.get_weights()])
  clone = tf_keras.models.model_from_json(model.to_json())
  clone.set_weights(model.get_weights())
  np.testing.assert_allclose(clone(_images()).numpy(), model(_images()).numpy())
  assert np.abs(model(_images()).numpy()).max() > 0


def test_bad_handles_are_quick_user_errors_naming_them(tmp_path, monkeypatch):
  monkeypatch.setenv('TFHUB_CACHE_DIR', str(tmp_path / 'cache'))
  (tmp_path / 'empty').mkdir()
  cases = {str(tmp_path / 'missing'): 'it does not exist',
           str(tmp_path / 'empty'): 'holds no saved_model.pb',
           'http://127.0.0.1:1/no/module': 'could not be loaded'}
  for handle, reason in cases.items():
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
      BACKBONES.get('hub')(num_classes=3, input_shape=SHAPE, handle=handle)
    assert time.perf_counter() - start < 5
    assert f"backbones.hub.handle = '{handle}'" in str(info.value)
    assert reason in str(info.value)


def test_saved_model_for_other_images_is_a_user_error(features_module):
  with pytest.raises(UserError, match=r'cannot be called on images of shape '
                     r'\(32, 32, 1\)'):
    hub.saved_model_teacher(features_module[0], (32, 32, 1))


def test_saved_model_teacher_is_frozen_and_inference_mode(features_module):
  path, exported = features_module
  teacher = hub.saved_model_teacher(path, SHAPE)
  assert teacher.output_shape == (None, 5) and not teacher.trainable_weights
  assert teacher.count_params() == exported.count_params()
  # training=True is ignored: BatchNorm keeps its moving statistics.
  np.testing.assert_allclose(teacher(_images(), training=True).numpy(),
                             exported(_images(), training=False).numpy(), atol=1e-6)
  assert not np.allclose(exported(_images(), training=True).numpy(),
                         exported(_images(), training=False).numpy(), atol=1e-3)


# ------------------------------------------------------- distillation from it


def _saved_model_student_gin(tmp_path, saved_model: str, extra: str = '') -> str:
  text = tiny_student_gin(str(tmp_path / 'student'), 'UNUSED').replace(
      "distillation.teacher_run = 'UNUSED'",
      f"distillation.teacher_saved_model = '{saved_model}'")
  return write(tmp_path / 'student.gin', text + extra)


def test_distills_from_an_exported_teacher(trained_teacher, tmp_path):
  teacher_dir, _, teacher_results = trained_teacher
  original = teacher_run.load_teacher(teacher_dir)
  exported = _export(original, tmp_path / 'teacher_sm')
  # The exported teacher is the same function as the run's, in inference mode.
  images = _images(16)
  np.testing.assert_allclose(
      hub.saved_model_teacher(exported, SHAPE)(images).numpy(),
      original(images, training=False).numpy(), rtol=1e-5, atol=1e-5)
  student_gin = _saved_model_student_gin(tmp_path, exported)
  assert cli.main(['run', '--gin', student_gin]) == 0
  results = json.load(open(tmp_path / 'student' / 'results.json'))
  # The same network as the teacher run's: same test top-1 and size.
  assert results['teacher_top1'] == teacher_results['top1']
  assert results['teacher_params'] == teacher_results['params']
  assert 0 < results['student_params'] < results['teacher_params']
  assert results['global_step'] == 8 and np.isfinite(results['kl'])
  names = [n for n, _ in tf.train.list_variables(
      tf.train.latest_checkpoint(str(tmp_path / 'student')))]
  assert names and not any('teacher' in n for n in names)
  config = open(tmp_path / 'student' / 'operative_config.gin').read().replace(
      '\\\n    ', '')  # gin wraps long values onto an indented next line
  assert f"distillation.teacher_saved_model = '{exported}'" in config


class _StringRoundTripTeacher(tf.Module):
  """Logits of 10 classes through AsString, an op XLA has no kernel for."""

  def __init__(self):
    super().__init__()
    self.weights = tf.Variable(tf.ones([1, 10]))

  @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32)])
  def __call__(self, images):
    mean = tf.reduce_mean(images, axis=[1, 2])
    return tf.strings.to_number(tf.strings.as_string(mean)) * self.weights


def test_a_teacher_xla_cannot_compile_is_named_at_start_up(tmp_path, capsys):
  exported = _export(_StringRoundTripTeacher(), tmp_path / 'strings')
  student_gin = _saved_model_student_gin(
      tmp_path, exported, 'distillation.teacher_jit_compile = True\n')
  assert cli.main(['run', '--gin', student_gin]) == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert 'Traceback' not in err
  assert 'XLA cannot compile the teacher' in err and 'AsString' in err
  assert 'distillation.teacher_jit_compile = False' in err
  assert not os.path.exists(tmp_path / 'student' / 'ckpt-0.index')


@pytest.mark.parametrize('extra,message', [
    ("distillation.teacher_run = '/some/run'\n", 'not both'),
    ('distillation.teacher_saved_model = None\n', 'not neither'),
    ("distillation.teacher_gin = 'teacher.gin'\n", 'remove teacher_gin'),
])
def test_teacher_must_be_exactly_one_source(features_module, tmp_path, capsys,
                                            extra, message):
  student_gin = _saved_model_student_gin(tmp_path, features_module[0], extra)
  assert cli.main(['run', '--gin', student_gin]) == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert message in err and 'teacher_saved_model' in err
  assert not os.path.exists(tmp_path / 'student' / 'results.json')


def test_teacher_of_other_classes_is_a_user_error(tmp_path, capsys):
  three = _export(_tiny_model(3), tmp_path / 'three_classes')
  student_gin = _saved_model_student_gin(tmp_path, three)
  assert cli.main(['run', '--gin', student_gin]) == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert f"the teacher '{three}' has 3 classes" in err and 'has 10' in err
