"""Shared fixtures: tiny gin configs on the embedded MNIST data (offline).

Every run here uses a few hundred images, 4-8 channel CNNs and a handful of
steps, so a whole teacher -> student chain costs seconds on a 2-core CPU.
"""

import os
import textwrap

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tf_keras  # noqa: E402

from fmx import entries  # noqa: E402

# Parametrised tests enumerate the registries at collection time.
entries.load_all()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_DATA = """
Data.train_dataset = 'mnist_embedded'
Data.eval_dataset = 'mnist_embedded'
Data.train_split = 'train[:256]'
Data.eval_split = 'train[256:320]'
Data.test_split = 'test[:100]'
Data.image_size = 16
Data.train_augmentations = ['random_translate', 'resize']
Data.eval_augmentations = ['resize']
Data.shuffle_buffer = 64
Runtime.distribution_strategy = 'one_device'
Runtime.deterministic = True
Training.global_batch_size = 16
Training.eval_batch_size = 32
Training.steps_per_loop = 4
Training.evals = 1
Optimizer.name = 'adamw'
Optimizer.learning_rate = 3e-3
Optimizer.warmup_steps = 2
"""


def tiny_teacher_gin(model_dir: str, epochs: float = 0.5) -> str:
  return TINY_DATA + textwrap.dedent(f"""
      Experiment.task = 'teacher'
      Experiment.model_dir = '{model_dir}'
      teacher.backbone = 'simple_cnn'
      teacher/backbones.simple_cnn.widths = (8, 16)
      teacher/backbones.simple_cnn.convs_per_stage = 1
      Data.mixup = None
      Training.epochs = {epochs}
      """)


def tiny_student_gin(model_dir: str, teacher_dir: str, teacher_gin: str = '',
                     epochs: float = 0.5, mixup: str = 'mixup_roll') -> str:
  teacher_gin_line = (f"distillation.teacher_gin = '{teacher_gin}'"
                      if teacher_gin else '')
  return TINY_DATA + textwrap.dedent(f"""
      Experiment.task = 'distillation'
      Experiment.model_dir = '{model_dir}'
      distillation.student = 'simple_cnn'
      distillation.teacher_run = '{teacher_dir}'
      {teacher_gin_line}
      student/backbones.simple_cnn.widths = (4, 8)
      student/backbones.simple_cnn.convs_per_stage = 1
      losses.kl.temperature = 2.0
      Data.mixup = '{mixup}'
      Training.epochs = {epochs}
      """)


def write(path, text: str) -> str:
  with open(path, 'w') as f:
    f.write(text)
  return str(path)


@pytest.fixture(autouse=True)
def _fresh_gin():
  """gin is global: every test starts from (and leaves) an empty config."""
  entries.load_all()
  gin.clear_config()
  yield
  gin.clear_config()
  tf_keras.backend.clear_session()


@pytest.fixture(scope='session')
def trained_teacher(tmp_path_factory):
  """A finished tiny teacher run, shared by the distillation tests."""
  from fmx.training import run  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('teacher')
  model_dir = str(root / 'run')
  gin_file = write(root / 'teacher.gin', tiny_teacher_gin(model_dir))
  results = run.run([gin_file])
  gin.clear_config()
  return model_dir, gin_file, results


@pytest.fixture(scope='session')
def trained_student(trained_teacher, tmp_path_factory):
  """A finished tiny distillation run: (model_dir, results).

  2 epochs: logits far enough apart that quantisation can be judged by
  agreement rather than by coin flips between near-equal classes. A 3x3x8x32
  kernel: TFLite's dynamic range quantisation skips weights under 1,024.
  Tests that export it pass --out, or read MODEL_DIR/export only as
  test_export does. A float32 teacher: the int8 agreement check of
  test_export holds for this tiny student's weights; the student of a
  bfloat16 teacher (other weights) gave an int8 export that agreed with none
  of the teacher's predictions.
  """
  from fmx.training import run  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('student')
  model_dir = str(root / 'run')
  gin_file = write(root / 'student.gin',
                   tiny_student_gin(model_dir, trained_teacher[0], epochs=2) +
                   'student/backbones.simple_cnn.widths = (8, 32)\n'
                   "distillation.teacher_precision = 'float32'\n")
  results = run.run([gin_file])
  gin.clear_config()
  return model_dir, results


class Recorder(tf_keras.Model):
  """Wraps a model and keeps a copy of every input it is called with."""

  def __init__(self, inner):
    super().__init__()
    self.inner = inner
    self.seen = []

  @property
  def input_shape(self):
    return self.inner.input_shape

  def call(self, images, training=False):
    self.seen.append(np.array(images))
    return self.inner(images, training=training)
