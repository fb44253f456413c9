"""The measurements of benchmarks/distillation.py, one function per phase.

Each phase runs in a process of its own (see distillation.py), so its peak
memory is its own and no phase inherits another's warm state. All of them
read the folder `workload.prepare` wrote: the same TFRecords and teacher.

- `input`: fmx's training input pipeline alone (decoded images cached, as in
  a run) and the same pipeline without the cache (the baseline's);
- `parts`: teacher forward, student train step, the full step
  (`DistillationTask.train_step`), the baseline's train_step and its
  teacher's forward, and float32 matmuls (the yardstick for achieved
  FLOP/s), on one batch held in memory, timed in interleaved rounds;
- `compare`: fmx (Model Garden trainer + Orbit loop, built as
  fmx.training.run builds them) against the baseline (keras_fit_baseline:
  model.fit), in alternation: each baseline epoch of steps_per_loop steps is
  followed by one fmx loop of as many steps (and float32 matmuls, the
  yardstick for their FLOP/s), so load from other processes falls on both
  alike; each side's images/s is over all its timed loops. The first loop of
  each (tracing) is not timed.
"""

import os
import statistics
import time

import tensorflow as tf
import tf_keras

import keras_fit_baseline
import measure
import workload as workload_lib


def _input_rate(dataset, batch_size: int, warmup_batches: int,
                seconds: float) -> float:
  batches = iter(dataset)
  for _ in range(warmup_batches):  # fills the shuffle buffer (and the cache)
    batch = next(batches)
  measure.wait(batch['image'])
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    batch = next(batches)
    count += 1
  measure.wait(batch['image'])
  return count * batch_size / (time.perf_counter() - start)


def input_pipeline(folder, workload) -> dict:
  from fmx.data.pipeline import Data  # pylint: disable=g-import-not-at-top
  rates = {}
  epoch = workload.images // workload.batch_size
  for cache in ('auto', 'none'):
    workload_lib.parse(folder, workload, folder, total_steps=1, cache=cache)
    data = Data()
    dataset = data.train_dataset_fn(workload.batch_size, seed=0,
                                    source=data.source('train'))
    rates[cache] = _input_rate(dataset, workload.batch_size,
                               warmup_batches=epoch + 1, seconds=4.0)
  return {'fmx_images_per_second': rates['auto'],
          'uncached_images_per_second': rates['none']}


def step_functions(setup, trainer, batch: dict) -> dict:
  """The step and its parts on `batch` (held in memory), as tf.functions.

  'teacher_forward': the frozen teacher's logits; 'student_step': the
  student's forward, loss, backward and update against precomputed teacher
  logits (DistillationTask.train_step without teacher and metrics);
  'full_step': DistillationTask.train_step itself, as the trainer runs it.
  """
  from fmx.tasks.base import apply_gradients, fit_to_model  # pylint: disable=g-import-not-at-top
  task, strategy = setup.task, setup.strategy
  model, optimizer, metrics = trainer.model, trainer.optimizer, trainer.train_metrics
  images = batch['image']

  @tf.function
  def teacher_forward():
    return strategy.run(task.teacher_logits, args=(images,))

  teacher_logits = teacher_forward()

  def student_step_fn():
    with tf.GradientTape() as tape:
      logits = model(fit_to_model(model, images), training=True)
      loss = tf.reduce_mean(task.loss_fn(teacher_logits, logits))
    apply_gradients(tape, loss, model, optimizer, task.clip_gradients)
    return loss

  @tf.function
  def student_step():
    return strategy.run(student_step_fn)

  @tf.function
  def full_step():
    return strategy.run(lambda: task.train_step(batch, model, optimizer,
                                                metrics))

  return {'teacher_forward': teacher_forward, 'student_step': student_step,
          'full_step': full_step}


def baseline_functions(distiller, batch: dict) -> dict:
  """The baseline's train_step and its teacher's forward pass on `batch`."""
  strategy = distiller.distribute_strategy
  data = (batch['image'], batch['label'])

  @tf.function
  def baseline_step():
    return strategy.run(distiller.train_step, args=(data,))

  @tf.function
  def baseline_teacher_forward():
    return strategy.run(lambda: distiller.teacher(data[0], training=False))

  return {'baseline_step': baseline_step,
          'baseline_teacher_forward': baseline_teacher_forward}


def parts(folder, workload) -> dict:
  """The parts of both steps, each alone, and matmuls, in the same rounds."""
  model_dir = os.path.join(folder, 'parts')
  setup, trainer = workload_lib.build_fmx(folder, workload, model_dir)
  batch = workload_lib.one_batch(setup.task, workload.batch_size)
  functions = step_functions(setup, trainer, batch)
  with setup.strategy.scope():
    distiller, _ = keras_fit_baseline.build(folder, workload, model_dir, 10**6)
  functions.update(baseline_functions(distiller, batch))
  functions['matmul'], matmul_flops = measure.matmul_function()
  with setup.strategy.scope():
    timings = measure.time_rounds(functions, rounds=workload.component_rounds,
                                  calls=workload.component_calls)
  teacher, student = setup.task.teacher, trainer.model
  return {'timings': timings,
          'matmul_flops_per_second': matmul_flops / timings['matmul'][
              'seconds_per_call'],
          'teacher_forward_flops': measure.forward_flops(teacher),
          'student_forward_flops': measure.forward_flops(student),
          'step_flops_per_image': measure.distillation_step_flops(teacher,
                                                                  student),
          'teacher_params': teacher.count_params(),
          'student_params': student.count_params()}


class Alternation(tf_keras.callbacks.Callback):
  """Times each baseline epoch, then one loop of each fmx controller, then
  float32 matmuls; `controllers` maps a name (e.g. 'fmx') to an Orbit
  controller."""

  def __init__(self, controllers, steps_per_loop: int):
    super().__init__()
    self.controllers = controllers
    self.steps_per_loop = steps_per_loop
    self.matmul, self.matmul_flops = measure.matmul_function()
    self.matmul_seconds = []
    names = ['baseline', *controllers]
    self.seconds = {name: [] for name in names}
    self.cpu_seconds = {name: [] for name in names}
    self.peak_rss_mb = {name: [] for name in names}

  def _start(self):
    measure.reset_peak_rss()
    self._clock = (time.perf_counter(), time.process_time())

  def _stop(self, name):
    wall, cpu = self._clock
    self.seconds[name].append(time.perf_counter() - wall)
    self.cpu_seconds[name].append(time.process_time() - cpu)
    self.peak_rss_mb[name].append(measure.peak_rss_mb())

  def on_epoch_begin(self, epoch, logs=None):
    self._start()

  def on_epoch_end(self, epoch, logs=None):
    self._stop('baseline')
    for name, controller in self.controllers.items():
      self._start()
      step = int(controller.global_step.numpy())
      controller.train(steps=step + self.steps_per_loop,
                       checkpoint_at_completion=False)
      self._stop(name)
    start = time.perf_counter()
    measure.wait(self.matmul())
    self.matmul_seconds.append(time.perf_counter() - start)

  def rates(self, images: int) -> dict:
    """Images/s of each side over its timed loops (all but the first)."""
    result = {}
    for name, seconds in self.seconds.items():
      timed, cpu = seconds[1:], self.cpu_seconds[name][1:]
      result[name] = {
          # Over all timed loops: every side ran under the same mix of load.
          'images_per_second': images * len(timed) / sum(timed),
          'images_per_cpu_second': images * len(timed) / sum(cpu),
          'loop_images_per_second': [images / s for s in timed],
          'loop_images_per_cpu_second': [images / s for s in cpu],
          'warmup_seconds': seconds[0],
          'peak_rss_mb_during_loops': max(self.peak_rss_mb[name][1:]),
      }
    return result


def compare(folder, workload) -> dict:
  """fmx and the baseline in alternation: images/s of each timed loop."""
  model_dir = os.path.join(folder, 'fmx_run')
  loops = 1 + workload.timed_loops
  total_steps = 10**6  # a long run's schedules; the loops stop far earlier
  setup, trainer = workload_lib.build_fmx(folder, workload, model_dir,
                                          total_steps)
  runner = workload_lib.build_runner(setup, trainer, model_dir)
  # As the original did: the Keras model is built under the strategy's scope.
  with setup.strategy.scope():
    distiller, dataset = keras_fit_baseline.build(folder, workload, model_dir,
                                                  total_steps)
  alternation = Alternation({'fmx': runner.controller}, workload.steps_per_loop)
  distiller.fit(dataset, epochs=loops, steps_per_epoch=workload.steps_per_loop,
                callbacks=[alternation])
  images = workload.steps_per_loop * workload.batch_size
  # Each fmx loop ran right after its baseline epoch.
  pairs = [baseline / fmx for fmx, baseline in zip(
      alternation.seconds['fmx'][1:], alternation.seconds['baseline'][1:])]
  result = {'paired_fmx_over_baseline': pairs,
            'matmul_flops_per_second': alternation.matmul_flops / statistics.mean(
                alternation.matmul_seconds)}
  result.update(alternation.rates(images))
  return result


PHASES = {'input': input_pipeline, 'parts': parts, 'compare': compare}
