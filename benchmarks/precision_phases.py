"""Phases of `distillation.py --teacher_precision`: what a bfloat16 teacher buys.

- `speed_saved_model` / `speed_bit`: the seed-style baseline
  (keras_fit_baseline: model.fit, teacher as Keras loads it), fmx with a
  float32 teacher (`distillation.teacher_precision = 'float32'`) and fmx
  with its defaults ('auto': bfloat16 on a CPU with AVX512-BF16), in
  alternating loops of the same number of steps, for (a) a Keras-applications
  BatchNorm teacher (ResNet50V2) exported as a SavedModel and (b) a native
  BiT-R50x1 teacher run; the student is MobileNetV3-Large, 96 px, batch 16.
- `fidelity`: what bfloat16 costs in agreement, on trained teachers: the demo
  teacher (experiments/demo_teacher.gin, shortened) and a BiT-R26x1 trained
  briefly on the same MNIST images; the bfloat16 teacher against the float32
  one on the 1,000 test images (max |logit difference|, top-1 agreement);
  then the demo student distilled (shortened) from each, deterministic, so
  the teacher's precision is the only difference.
"""

import contextlib
import dataclasses
import inspect
import os
import statistics

import numpy as np
import tensorflow as tf

import keras_fit_baseline
import phases
import workload as workload_lib
from fmx.training import settings

SIDES = ('baseline', 'fmx_float32', 'fmx_auto')
# fmx's defaults, as the target says: Training.steps_per_loop steps
# per compiled loop (and per baseline epoch). Loops of 3 steps, as the other
# phases use to alternate finely under load, weighed fmx's once-per-loop
# work (summaries, rollback check, progress) 33 times more than a run does.
DEFAULT_STEPS_PER_LOOP = inspect.signature(
    settings.Training.__init__).parameters['steps_per_loop'].default
SPEED = {
    # (a) the independent measurement's kind of teacher: Keras applications,
    # BatchNorm, exported as a SavedModel.
    'speed_saved_model': dataclasses.replace(
        workload_lib.DEFAULT, teacher='resnet50v2', teacher_params={},
        teacher_format='saved_model', teacher_jit_compile=False,
        steps_per_loop=DEFAULT_STEPS_PER_LOOP, timed_loops=3),
    # (b) a native BiT teacher run, fmx's defaults (no teacher XLA).
    'speed_bit': dataclasses.replace(
        workload_lib.DEFAULT, teacher_jit_compile=False,
        steps_per_loop=DEFAULT_STEPS_PER_LOOP, timed_loops=3),
}


def speed(folder, workload) -> dict:
  """Baseline, fmx float32 teacher and fmx defaults, alternated."""
  if not os.path.exists(os.path.join(folder, 'data')):  # shared by the phases
    workload_lib.prepare_data(folder, workload)
  workload_lib.write_teacher(folder, workload)
  total_steps = 10**6
  controllers, precisions, strategy = {}, {}, None
  for side, bindings in (('fmx_float32',
                          ("distillation.teacher_precision = 'float32'",)),
                         ('fmx_auto', ())):
    side_workload = dataclasses.replace(
        workload, bindings=workload.bindings + bindings)
    model_dir = os.path.join(folder, side)
    with _one_strategy(strategy):
      setup, trainer = workload_lib.build_fmx(folder, side_workload, model_dir,
                                              total_steps)
    strategy = setup.strategy
    controllers[side] = workload_lib.build_runner(setup, trainer,
                                                  model_dir).controller
    precisions[side] = setup.task.teacher_precision
  with setup.strategy.scope():
    distiller, dataset = keras_fit_baseline.build(
        folder, workload, os.path.join(folder, 'baseline'), total_steps)
  alternation = phases.Alternation(controllers, workload.steps_per_loop)
  distiller.fit(dataset, epochs=1 + workload.timed_loops,
                steps_per_epoch=workload.steps_per_loop, callbacks=[alternation])
  rates = alternation.rates(workload.steps_per_loop * workload.batch_size)
  ratios = {}
  for side in ('fmx_float32', 'fmx_auto'):
    ratios[f'{side}_over_baseline'] = (rates[side]['images_per_second'] /
                                       rates['baseline']['images_per_second'])
    ratios[f'{side}_over_baseline_cpu'] = (
        rates[side]['images_per_cpu_second'] /
        rates['baseline']['images_per_cpu_second'])
    ratios[f'{side}_over_baseline_median_of_rounds'] = statistics.median(
        b / s for b, s in zip(alternation.seconds['baseline'][1:],
                              alternation.seconds[side][1:]))
  ratios['auto_over_float32'] = (rates['fmx_auto']['images_per_second'] /
                                 rates['fmx_float32']['images_per_second'])
  return {'rates': rates, 'ratios': ratios, 'teacher_precision': precisions,
          'description': workload.description}


@contextlib.contextmanager
def _one_strategy(strategy):
  """Builds the next fmx run under `strategy` (if any) instead of a new one.

  Runs in one process must share one tf.distribute strategy: Keras' fit
  (the baseline) trains the fmx loops inside its strategy's scope.
  """
  if strategy is None:
    yield
    return
  original = settings.Runtime.strategy
  settings.Runtime.strategy = lambda self: strategy
  try:
    yield
  finally:
    settings.Runtime.strategy = original


# -------------------------------------------------------------------- fidelity

MNIST = ["Runtime.deterministic = True", "Training.steps_per_loop = 28",
         "Training.evals = 1"]
TEACHERS = {
    'demo_teacher': ['Training.epochs = 3'],
    # BiT's family at MNIST's size: R26x1, GroupNorm + weight standardisation.
    'bit_r26x1': ["teacher.backbone = 'bit_resnet'",
                  'teacher/backbones.bit_resnet.depth = 26',
                  'Training.epochs = 1'],
}


def _repo(path: str) -> str:
  return os.path.join(os.path.dirname(workload_lib.BENCHMARKS), path)


def _test_images():
  import gin  # pylint: disable=g-import-not-at-top
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  from fmx.data.pipeline import Data  # pylint: disable=g-import-not-at-top
  gin_config.parse([_repo('experiments/demo_teacher.gin')], [])
  data = Data()
  images = np.concatenate([b['image'].numpy() for b in data.eval_dataset_fn(
      250, source=data.source('test'))])
  gin.clear_config()
  return images[:1000]


def teacher_fidelity(run_dir: str, images) -> dict:
  """The bfloat16 teacher against the float32 one, on `images`: as fmx runs
  it on this device (teacher_precision.run_teacher) and, for comparison,
  cloned into bfloat16 layers (what fmx runs on TPUs and GPUs)."""
  from fmx.tasks import teacher_precision, teacher_run  # pylint: disable=g-import-not-at-top
  full = teacher_run.load_teacher(run_dir)
  _, graph = teacher_precision.run_teacher(full, 'bfloat16')
  clone = teacher_precision.keras_teacher(full, 'bfloat16')
  forwards = {'as_run': graph or (lambda x: clone(x, training=False)),
              'cloned': lambda x: clone(x, training=False)}

  def logits(forward):
    return np.concatenate([tf.cast(forward(images[i:i + 250]), tf.float32).numpy()
                           for i in range(0, len(images), 250)])

  a = logits(lambda x: full(x, training=False))
  result = {'images': len(images), 'max_abs_logit': float(np.abs(a).max()),
            'graph_rewrite': graph is not None}
  for name, forward in forwards.items():
    b = logits(forward)
    suffix = '' if name == 'as_run' else f'_{name}'
    result[f'max_abs_logit_difference{suffix}'] = float(np.abs(a - b).max())
    result[f'top1_agreement{suffix}'] = float(np.mean(a.argmax(-1) == b.argmax(-1)))
  return result


def fidelity(folder, workload) -> dict:
  """Teacher fidelity of bfloat16, and the demo student distilled from each."""
  del workload
  from fmx.training import run  # pylint: disable=g-import-not-at-top
  os.chdir(os.path.dirname(workload_lib.BENCHMARKS))  # gin includes are relative
  images = _test_images()
  result = {}
  for name, bindings in TEACHERS.items():
    run_dir = os.path.join(folder, name)
    teacher = run.run(['experiments/demo_teacher.gin'], MNIST + bindings,
                      run_dir)
    result[name] = teacher_fidelity(run_dir, images)
    result[name]['teacher_test_top1'] = teacher['top1']
  students = {}
  for precision in ('float32', 'auto'):
    students[precision] = run.run(
        ['experiments/demo.gin'],
        MNIST + ['Training.epochs = 3',
                 f"distillation.teacher_run = '{folder}/demo_teacher'",
                 f"distillation.teacher_precision = '{precision}'"],
        os.path.join(folder, f'student-{precision}'))
  result['demo_student'] = {
      precision: {key: r[key] for key in ('student_top1', 'agreement',
                                          'teacher_top1', 'train_seconds')}
      for precision, r in students.items()}
  return result


PHASES = {name: (lambda folder, _, w=w: speed(folder, w))
          for name, w in SPEED.items()}
PHASES['fidelity'] = fidelity
