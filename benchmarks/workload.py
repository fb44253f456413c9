"""What the distillation benchmarks train: data, teacher, student, shapes.

Every measurement of one benchmark run uses one `Workload`, so fmx, the
tf_keras baseline and the separate parts of the step all see the same
models, batch and resolution:

- data: Pet37-like TFRecords in the original implementation's format (384 px
  JPEGs, 37 classes, shards of 128), written to a temporary folder by
  benchmarks/input_pipeline.py's writer, read by fmx's `tfrecords` entry
  with the original recipe's augmentation (Inception crop, flip, MixUp
  `reverse` with a Uniform(0, 1) coefficient);
- teacher: BiT-R50x1 (fmx's `bit_resnet`: GroupNorm + weight-standardised
  convolutions, the paper's model family), frozen, saved as an fmx teacher
  run (model.json + checkpoint) that distillation loads as it would a
  trained one;
- student: MobileNetV3-Large (`mobilenetv3large`), 5.5x fewer parameters.

The teacher's forward pass is 86% of the step's FLOPs (the paper's
R152x2 -> R50x1: ~80%), yet at 96 px a step takes about a second on 2 CPU
cores, so the whole benchmark fits in a few minutes. `QUICK` swaps in the
demo's small CNNs at 32 px for smoke checks.
"""

import dataclasses
import json
import os
import sys
from typing import Dict, List, Tuple

import tensorflow as tf
import tf_keras

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCHMARKS))  # the fmx checkout

from fmx import entries, registry  # noqa: E402  pylint: disable=g-import-not-at-top
from fmx.tasks import teacher_run  # noqa: E402  pylint: disable=g-import-not-at-top

import input_pipeline  # noqa: E402  pylint: disable=g-import-not-at-top

NUM_CLASSES = input_pipeline.NUM_CLASSES
TEMPERATURE = 2.0


@dataclasses.dataclass(frozen=True)
class Workload:
  """Models, shapes and step counts of one benchmark run."""
  teacher: str
  teacher_params: Dict[str, object]
  student: str
  student_params: Dict[str, object]
  image_size: int
  batch_size: int
  steps_per_loop: int     # fmx: steps per tf.function; baseline: per epoch
  timed_loops: int        # loops (epochs) timed after one untimed warm-up
  component_rounds: int   # interleaved rounds of the separate parts
  component_calls: int    # calls of each part per round
  images: int             # training images written
  source_size: int        # their JPEG size, px
  # fmx's `distillation.teacher_jit_compile`: docs/performance.md advises it
  # for BiT teachers on CPUs (not for MobileNet-style ones). The baseline
  # runs its teacher as Keras loads it.
  teacher_jit_compile: bool = False
  # 'run': an fmx teacher run (distillation.teacher_run); 'saved_model': the
  # teacher exported as a Keras SavedModel (distillation.teacher_saved_model;
  # the baseline loads it with tf_keras.models.load_model, as the original).
  teacher_format: str = 'run'
  # Extra gin bindings for the run, e.g. "Runtime.xla = True" (both fmx's
  # and the baseline's config get them; the baseline only reads Data).
  bindings: Tuple[str, ...] = ()

  @property
  def settings(self) -> str:
    """The gin settings beyond models and shapes, each after '; '."""
    # As in gin_lines: the workload's setting, then the bindings, which win.
    overridden = any('teacher_jit_compile' in b for b in self.bindings)
    bindings = (('distillation.teacher_jit_compile = True',)
                if self.teacher_jit_compile and not overridden else ()) + self.bindings
    return ''.join(f'; {binding}' for binding in bindings)

  @property
  def description(self) -> str:
    def name(entry, params):
      values = ','.join(f'{k}={v}' for k, v in params.items())
      return f'{entry}({values})' if values else entry
    return (f'{name(self.teacher, self.teacher_params)} -> '
            f'{name(self.student, self.student_params)}, '
            f'{self.image_size} px, batch {self.batch_size}{self.settings}')


DEFAULT = Workload(
    teacher='bit_resnet', teacher_params={'depth': 50, 'width': 1},
    student='mobilenetv3large', student_params={},
    image_size=96, batch_size=16, steps_per_loop=3, timed_loops=8,
    component_rounds=3, component_calls=2, images=256, source_size=384,
    teacher_jit_compile=True)

QUICK = Workload(
    teacher='simple_cnn', teacher_params={'widths': (32, 64, 128)},
    student='simple_cnn', student_params={'widths': (16, 32, 64)},
    image_size=32, batch_size=16, steps_per_loop=12, timed_loops=4,
    component_rounds=2, component_calls=4, images=128, source_size=96)


def build_backbone(entry: str, params: dict, image_size: int):
  entries.load_all()
  return registry.BACKBONES.get(entry)(
      num_classes=NUM_CLASSES, input_shape=(image_size, image_size, 3), **params)


def prepare(folder: str, workload: Workload) -> None:
  """Writes the TFRecords and the frozen teacher's run into `folder`."""
  prepare_data(folder, workload)
  write_teacher(folder, workload)


def prepare_data(folder: str, workload: Workload) -> None:
  input_pipeline.write_tfrecords(os.path.join(folder, 'data'), workload.images,
                                 workload.source_size)


def write_teacher(folder: str, workload: Workload) -> str:
  """An fmx teacher run (or SavedModel) of random weights; its folder."""
  tf_keras.utils.set_random_seed(0)
  teacher = build_backbone(workload.teacher, workload.teacher_params,
                           workload.image_size)
  # BiT's head starts at zero (uniform outputs); a random one gives the
  # student something to match, as a trained teacher would.
  head = teacher.layers[-1]
  head.kernel.assign(tf.random.normal(head.kernel.shape, stddev=0.05))
  run_dir = teacher_dir(folder, workload)
  if workload.teacher_format == 'saved_model':
    teacher.save(run_dir, save_format='tf', include_optimizer=False)
    return run_dir
  teacher_run.write_architecture(teacher, run_dir)
  tf.train.Checkpoint(model=teacher).save(os.path.join(run_dir, 'ckpt'))
  with open(os.path.join(run_dir, teacher_run.RESULTS_FILE), 'w') as f:
    json.dump({'task': 'teacher', 'note': 'random weights, for benchmarks'}, f)
  return run_dir


def teacher_dir(folder: str, workload: Workload) -> str:
  # A teacher run keeps the input size it was built at: one per resolution.
  return os.path.join(folder, f'teacher-{workload.teacher}-'
                      f'{workload.teacher_format}-{workload.image_size}px')


def _gin_value(value) -> str:
  return repr(tuple(value)) if isinstance(value, (list, tuple)) else repr(value)


def gin_lines(folder: str, workload: Workload, model_dir: str,
              total_steps: int, cache: str = 'auto') -> List[str]:
  """The gin config of an fmx distillation run on the workload."""
  lines = [
      "include 'gin/augment/original_function_matching.gin'",
      "include 'gin/optim/adamw_cosine.gin'",
      "include 'gin/runtime/cpu.gin'" if not tf.config.list_physical_devices('GPU')
      else "include 'gin/runtime/accelerator.gin'",
      "Experiment.task = 'distillation'",
      f"Experiment.model_dir = '{model_dir}'",
      f"distillation.teacher_{workload.teacher_format} = "
      f"'{teacher_dir(folder, workload)}'",
      f"distillation.student = '{workload.student}'",
      "distillation.loss = 'kl'",
      f'losses.kl.temperature = {TEMPERATURE}',
      "Data.train_dataset = 'tfrecords'",
      "Data.eval_dataset = 'tfrecords'",
      f"tfrecords.file_pattern = '{folder}/data/{{split}}/*.tfrec'",
      f'tfrecords.num_classes = {NUM_CLASSES}',
      "Data.train_split = 'train'",
      f"Data.eval_split = 'train[:{workload.batch_size}]'",
      f"Data.test_split = 'train[{workload.batch_size}:{2 * workload.batch_size}]'",
      f'Data.image_size = {workload.image_size}',
      f"Data.cache = '{cache}'",
      # Far more epochs than run: max_steps ends the run, and the learning
      # rate schedule is that of a long run, as in real use.
      'Training.epochs = 1000',
      f'Training.max_steps = {total_steps}',
      f'Training.global_batch_size = {workload.batch_size}',
      f'Training.eval_batch_size = {workload.batch_size}',
      f'Training.steps_per_loop = {workload.steps_per_loop}',
      'Training.evals = 1',
      f'distillation.teacher_jit_compile = {workload.teacher_jit_compile}',
  ]
  lines += [f'student/backbones.{workload.student}.{key} = {_gin_value(value)}'
            for key, value in workload.student_params.items()]
  return lines + list(workload.bindings)


def write_gin(folder: str, workload: Workload, model_dir: str,
              total_steps: int, cache: str = 'auto') -> str:
  """Writes the run's gin file (what `fmx run --gin` would read); its path."""
  path = os.path.join(folder, f'distillation-{cache}.gin')
  with open(path, 'w') as f:
    f.write('\n'.join(gin_lines(folder, workload, model_dir, total_steps,
                                cache)) + '\n')
  return path


def parse(folder: str, workload: Workload, model_dir: str, total_steps: int,
          cache: str = 'auto') -> None:
  """Parses the workload's gin config (gin is global: one config at a time)."""
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  gin_config.parse([write_gin(folder, workload, model_dir, total_steps, cache)])


def build_fmx(folder: str, workload: Workload, model_dir: str,
              total_steps: int = 10**6) -> Tuple[object, object]:
  """(setup, trainer) as fmx.training.run.train_and_evaluate builds them."""
  from official.core import train_utils  # pylint: disable=g-import-not-at-top
  from fmx.training import preemption  # pylint: disable=g-import-not-at-top
  from fmx.training import run  # pylint: disable=g-import-not-at-top
  from fmx.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  parse(folder, workload, model_dir, total_steps)
  setup = run.build_setup('distillation', model_dir)
  # Its stop request is read before every step of the loop (a SIGTERM).
  setup.task.preemption = preemption.Preemption()
  with setup.strategy.scope():
    trainer = train_utils.create_trainer(setup.params, setup.task, train=True,
                                         evaluate=True,
                                         trainer_cls=trainer_lib.Trainer)
  return setup, trainer


def build_runner(setup, trainer, model_dir: str):
  """The Orbit runner with the train actions of fmx.training.run.

  Mirrors train_and_evaluate: rollback check, stop check and progress bar
  after every loop, summaries every loop; what a run does outside its loops
  (first-batch images, evaluations, results.json) is left out.
  """
  from official.core import train_lib  # pylint: disable=g-import-not-at-top
  from fmx.training import preemption, progress, recovery  # pylint: disable=g-import-not-at-top
  from fmx.training.settings import Training  # pylint: disable=g-import-not-at-top
  training, runner = Training(), None
  bar = progress.ProgressBar(setup.train_steps,
                             setup.params.task.train_data.global_batch_size,
                             os.path.join(model_dir, 'train'), 'fmx benchmark')
  rollback = recovery.rollback_action(
      trainer, model_dir, training.nan_rollbacks, training.loss_upper_bound,
      lambda: runner.checkpoint_manager)
  stop = preemption.stop_if_requested(setup.task.preemption, lambda: ('', 0),
                                      model_dir)
  runner = train_lib.OrbitExperimentRunner(
      distribution_strategy=setup.strategy, task=setup.task, mode='train',
      params=setup.params, model_dir=model_dir, trainer=trainer,
      train_actions=[rollback, stop, bar])
  bar.attach(trainer.global_step)
  return runner


def one_batch(task, batch_size: int) -> dict:
  """One training batch of the task's pipeline, as tensors in memory."""
  from official.core import config_definitions as cfg  # pylint: disable=g-import-not-at-top
  config = cfg.DataConfig(is_training=True, global_batch_size=batch_size)
  batch = next(iter(task.build_inputs(config)))
  return {key: tf.identity(value) for key, value in batch.items()}
