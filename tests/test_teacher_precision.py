"""distillation.teacher_precision: what 'auto' means per device, and teachers
converted to bfloat16 (graphs rewritten on CPUs and for SavedModels, Keras
teachers cloned elsewhere)."""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.core import config_definitions as cfg

from conftest import tiny_student_gin
from fmx.errors import UserError
from fmx.tasks import teacher_precision
from fmx.tasks.distillation import DistillationTask
from fmx.training import run_dir


@pytest.mark.parametrize('device, flags, capabilities, onednn, expected', [
    ('cpu', ['avx2', 'avx512f', 'avx512_bf16'], None, True, 'bfloat16'),
    ('cpu', ['avx2', 'amx_bf16', 'amx_tile'], None, True, 'bfloat16'),
    ('cpu', ['avx2', 'avx512f', 'avx512_vnni'], None, True, 'float32'),
    ('cpu', ['avx512_bf16'], None, False, 'float32'),  # TF_ENABLE_ONEDNN_OPTS=0
    ('cpu', [], None, True, 'float32'),
    ('gpu', None, [(8, 0)], True, 'bfloat16'),
    ('gpu', None, [(9, 0), (8, 6)], True, 'bfloat16'),
    ('gpu', None, [(7, 5)], True, 'float32'),
    ('gpu', None, [(8, 0), (7, 0)], True, 'float32'),  # the slowest decides
    ('tpu', None, None, True, 'bfloat16'),
])
def test_auto_resolves_per_device(monkeypatch, device, flags, capabilities,
                                  onednn, expected):
  monkeypatch.setattr(teacher_precision, 'onednn_enabled', lambda: onednn)
  assert teacher_precision.resolve('auto', device, flags, capabilities) == expected
  # An explicit value is kept whatever the device.
  for value in ('float32', 'bfloat16', 'float16'):
    assert teacher_precision.resolve(value, device, flags, capabilities) == value


def test_auto_reads_this_machines_devices_and_flags(monkeypatch):
  monkeypatch.setattr(teacher_precision, 'onednn_enabled', lambda: True)
  monkeypatch.setattr(teacher_precision, 'cpu_flags', lambda: ['avx512_bf16'])
  assert teacher_precision.resolve('auto') == 'bfloat16'
  monkeypatch.setattr(teacher_precision, 'cpu_flags', lambda: ['avx2'])
  assert teacher_precision.resolve('auto') == 'float32'
  # A faked GPU of compute capability 7.5 (Turing): no bfloat16 units.
  gpu = tf.config.PhysicalDevice('/physical_device:GPU:0', 'GPU')
  monkeypatch.setattr(tf.config, 'list_physical_devices',
                      lambda kind=None: [gpu] if kind == 'GPU' else [])
  monkeypatch.setattr(tf.config.experimental, 'get_device_details',
                      lambda device: {'compute_capability': (7, 5)})
  monkeypatch.setattr(teacher_precision, 'cpu_flags', lambda: ['avx512_bf16'])
  assert teacher_precision.device_kind() == 'gpu'
  assert teacher_precision.resolve('auto') == 'float32'


def test_an_unknown_precision_is_a_user_error():
  with pytest.raises(UserError, match="teacher_precision = 'half'"):
    teacher_precision.resolve('half')


def _task(tmp_path, teacher: str, precision: str, saved_model: bool = False):
  text = tiny_student_gin(str(tmp_path / f'student-{precision}'), teacher)
  if saved_model:
    text = text.replace('distillation.teacher_run', 'distillation.teacher_saved_model')
  gin.parse_config(text + f"\ndistillation.teacher_precision = '{precision}'")
  task = DistillationTask(params=cfg.TaskConfig())
  student = task.build_model()
  gin.clear_config()
  return task, student


def _images(task, count=2):
  dataset = task.build_inputs(cfg.DataConfig(is_training=False,
                                             input_path='eval',
                                             global_batch_size=32))
  return tf.concat([b['image'] for b in dataset.take(count)], 0)


def _fidelity(reference, logits):
  """(max |difference| / max |reference|, top-1 agreement), in numpy."""
  reference, logits = np.asarray(reference), np.asarray(logits)
  scale = np.abs(reference).max()
  return (np.abs(reference - logits).max() / scale,
          np.mean(reference.argmax(-1) == logits.argmax(-1)))


def _has_bfloat16_convolutions(task, images) -> bool:
  """Whether the task's teacher logits are computed by bf16 Conv2D ops."""
  graph = tf.function(task.teacher_logits).get_concrete_function(
      tf.TensorSpec(images.shape, tf.float32)).graph.as_graph_def()
  ops = [n for f in graph.library.function for n in f.node_def] + list(graph.node)
  return any(n.op == 'Conv2D' and n.attr['T'].type == tf.bfloat16.as_datatype_enum
             for n in ops)


@pytest.mark.parametrize('device', ['cpu', 'tpu'])
def test_a_bfloat16_teacher_run_gives_float32_logits_close_to_float32(
    trained_teacher, tmp_path, monkeypatch, device):
  # The device decides how a teacher run is converted; the precision is
  # given explicitly, so nothing else depends on the faked device.
  monkeypatch.setattr(teacher_precision, 'device_kind', lambda: device)
  full, _ = _task(tmp_path, trained_teacher[0], 'float32')
  half, student = _task(tmp_path, trained_teacher[0], 'bfloat16')
  images = _images(half)
  graph = half._teacher_graph  # pylint: disable=protected-access
  if device == 'cpu' and teacher_precision.onednn_enabled():
    # CPUs: grappler's oneDNN rewrite of the frozen float32 teacher; the
    # teacher model itself (exports, fmx.api) stays float32.
    assert graph is not None
    assert {w.dtype for w in half.teacher.weights} == {tf.float32}
  else:
    # Elsewhere: cloned into bfloat16 layers, weights cast once at load;
    # normalisation weights and the head stay float32.
    assert graph is None
    dtypes = {w.name.split('/')[-1].split(':')[0]: w.dtype
              for w in half.teacher.weights}
    kernels = [w for w in half.teacher.weights if 'kernel' in w.name]
    assert [w.dtype for w in kernels[:-1]] == [tf.bfloat16] * (len(kernels) - 1)
    assert kernels[-1].dtype == tf.float32  # the output layer
    assert dtypes['gamma'] == dtypes['moving_mean'] == tf.float32
  assert _has_bfloat16_convolutions(half, images)
  logits = half.teacher_logits(images)
  assert logits.dtype == tf.float32
  error, agreement = _fidelity(full.teacher_logits(images), logits)
  # bfloat16 keeps 8 significant bits (relative step 2^-8 = 0.4%).
  assert error < 0.05 and agreement >= 0.95, (error, agreement)
  # The student trains in float32: its gradients stay float32.
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(half.loss_fn(logits, student(images, training=True)))
  gradients = tape.gradient(loss, student.trainable_variables)
  assert loss.dtype == tf.float32
  assert {g.dtype for g in gradients} == {tf.float32}


def test_a_saved_model_teacher_is_rewritten_to_bfloat16_or_says_why(
    trained_teacher, tmp_path, capsys):
  from fmx.tasks import teacher_run  # pylint: disable=g-import-not-at-top
  exported = str(tmp_path / 'teacher_sm')
  tf.saved_model.save(teacher_run.load_teacher(trained_teacher[0]), exported)
  full, _ = _task(tmp_path, exported, 'float32', saved_model=True)
  half, _ = _task(tmp_path, exported, 'bfloat16', saved_model=True)
  images = _images(half)
  logits = half.teacher_logits(images)
  assert logits.dtype == tf.float32
  out = capsys.readouterr().out
  if half._teacher_graph is None:  # pylint: disable=protected-access
    # Grappler's oneDNN rewrite needs a oneDNN build: say so, run float32.
    assert 'could not be converted' in out and 'float32' in out
    np.testing.assert_array_equal(logits, full.teacher_logits(images))
    return
  assert 'note' not in out
  # The rewritten graph computes in bfloat16: its convolutions are bf16 ops.
  assert _has_bfloat16_convolutions(half, images)
  error, agreement = _fidelity(full.teacher_logits(images), logits)
  assert error < 0.05 and agreement >= 0.95, (error, agreement)


def test_a_teacher_that_cannot_be_rebuilt_runs_float32_after_a_note(capsys):

  class Subclassed(tf_keras.Model):  # no layer graph to clone

    def __init__(self):
      super().__init__(name='subclassed')
      self.dense = tf_keras.layers.Dense(3)

    def call(self, inputs):
      return self.dense(inputs)

  model = Subclassed()
  model(tf.zeros([1, 4]))
  assert teacher_precision.keras_teacher(model, 'bfloat16') is model
  assert "could not be rebuilt in bfloat16" in capsys.readouterr().out


def test_resuming_with_another_teacher_precision_is_a_config_change():
  import fmx.tasks.distillation  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  explicit = "distillation.teacher_precision = 'float32'\n"
  auto = "distillation.teacher_precision = 'auto'\n"
  on_bf16 = {'distillation.teacher_precision': 'bfloat16'}
  on_f32 = {'distillation.teacher_precision': 'float32'}
  # float32 -> 'auto': a change where 'auto' means bfloat16, not elsewhere.
  assert run_dir.config_differences(explicit, auto, True, on_bf16) == [
      "distillation.teacher_precision: 'float32' -> 'auto' (bfloat16 here)"]
  assert run_dir.config_differences(explicit, auto, True, on_f32) == []
  # A run folder from before the setting existed computed its teacher in
  # float32: its default 'auto' is an added default only where it means that.
  assert run_dir.config_differences('', auto, True, on_bf16) == [
      "distillation.teacher_precision: (unset: float32) -> 'auto' (bfloat16 here)"]
  assert run_dir.config_differences('', auto, True, on_f32) == []


def test_a_run_resumed_with_another_teacher_precision_is_refused(
    trained_teacher, tmp_path, monkeypatch):
  from fmx.training import run  # pylint: disable=g-import-not-at-top
  gin_file = str(tmp_path / 'student.gin')
  with open(gin_file, 'w') as f:
    f.write(tiny_student_gin(str(tmp_path / 'student'), trained_teacher[0],
                             epochs=0.1) +
            "\ndistillation.teacher_precision = 'float32'\n")
  run.run([gin_file])
  # Resumed on a machine where 'auto' means bfloat16.
  monkeypatch.setattr(teacher_precision, 'device_kind', lambda: 'cpu')
  monkeypatch.setattr(teacher_precision, 'cpu_flags', lambda: ['avx512_bf16'])
  monkeypatch.setattr(teacher_precision, 'onednn_enabled', lambda: True)
  with pytest.raises(UserError, match=r"'float32' -> 'auto' \(bfloat16 here\)"):
    run.run([gin_file], ["distillation.teacher_precision = 'auto'"])
  assert os.path.exists(tmp_path / 'student' / 'results.json')
