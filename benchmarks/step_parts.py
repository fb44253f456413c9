"""Where a distillation step's time goes with fmx's defaults (issue 18's workloads).

    python benchmarks/step_parts.py                       # (a) SavedModel teacher, ~4 min
    python benchmarks/step_parts.py --workload speed_bit  # (b) BiT teacher run

For one workload of `distillation.py --teacher_precision` (fmx's defaults:
a bfloat16 teacher on a CPU with bfloat16 arithmetic), in interleaved
rounds on one batch held in memory (benchmarks/measure.py): the teacher's
forward, the student's forward, forward + backward, clip + optimiser
update, the student's whole step, the full step (DistillationTask.train_step),
and the student's step beside the teacher's forward on another batch (a
software-pipelined step: the next batch's teacher during this step; compare
with the full step). Then, on the real input pipeline: fmx's compiled loop
beside the same loop returning no output (Orbit's; on CPUs it runs without
most of oneDNN's fusions), fmx's eval step beside the same step returning
nothing (as it did before), and Orbit loops of 3 and 24 steps per loop (ms
per step), and, for a teacher run, how long each way of converting it to
bfloat16 takes at start-up (clone into bfloat16 layers; grappler's
rewrite of the frozen graph, what fmx does on CPUs). Prints milliseconds.
"""

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import tensorflow as tf  # noqa: E402

import measure  # noqa: E402
import phases  # noqa: E402
import precision_phases  # noqa: E402
import workload as workload_lib  # noqa: E402


def part_functions(setup, trainer, batch) -> dict:
  from fmx.tasks.base import apply_gradients, fit_to_model  # pylint: disable=g-import-not-at-top
  functions = phases.step_functions(setup, trainer, batch)
  task, model, optimizer = setup.task, trainer.model, trainer.optimizer
  images, other = batch['image'], tf.reverse(batch['image'], [0])
  teacher_logits = functions['teacher_forward']()

  def gradients():
    with tf.GradientTape() as tape:
      logits = model(fit_to_model(model, images), training=True)
      loss = tf.reduce_mean(task.loss_fn(teacher_logits, logits))
    return tape.gradient(loss, model.trainable_variables)

  fixed_gradients = tf.function(gradients)()

  def update():
    clipped = (task.clip_gradients(fixed_gradients) if task.clip_gradients
               else fixed_gradients)
    optimizer.apply_gradients(zip(clipped, model.trainable_variables),
                              experimental_aggregate_gradients=False)

  def pipelined_step():
    # The student's step on teacher logits computed earlier, beside the
    # teacher's forward on the next batch: a pipelined step's work.
    with tf.GradientTape() as tape:
      logits = model(fit_to_model(model, images), training=True)
      loss = tf.reduce_mean(task.loss_fn(teacher_logits, logits))
    apply_gradients(tape, loss, model, optimizer, task.clip_gradients)
    return task.teacher_logits(other)

  run = lambda fn: tf.function(lambda: setup.strategy.run(fn))  # noqa: E731
  functions.update({
      'student_forward': run(lambda: model(fit_to_model(model, images),
                                           training=True)),
      'student_forward_backward': run(gradients),
      'clip_and_update': run(update),
      'student_step_beside_next_teacher': run(pipelined_step)})
  return functions


def loop_ms_per_step(folder, workload, steps_per_loop: int, loops: int) -> float:
  """Median ms per step over Orbit loops of the real input pipeline."""
  workload = dataclasses.replace(workload, steps_per_loop=steps_per_loop)
  model_dir = os.path.join(folder, f'loops-{steps_per_loop}')
  setup, trainer = workload_lib.build_fmx(folder, workload, model_dir)
  controller = workload_lib.build_runner(setup, trainer, model_dir).controller
  seconds = []
  for loop in range(loops + 1):
    start = time.perf_counter()
    controller.train(steps=(loop + 1) * steps_per_loop,
                     checkpoint_at_completion=False)
    seconds.append(time.perf_counter() - start)
  return 1000 * statistics.median(seconds[1:]) / steps_per_loop  # warm-up out


def loop_output_ms_per_step(setup, trainer, steps_per_loop: int,
                            rounds: int) -> dict:
  """Median ms per step of fmx's compiled loop (it returns its last loss)
  and of the same loop returning nothing (Orbit's), alternated on one
  iterator of the real input pipeline."""
  iterator = iter(trainer.train_dataset)

  @tf.function
  def without_output(iterator, num_steps):
    for _ in tf.range(num_steps):
      trainer.train_step(iterator)

  loops = {'fmx loop (last loss as output)': trainer.create_train_loop_fn(),
           'same loop without output': without_output}
  seconds = {name: [] for name in loops}
  steps = tf.constant(steps_per_loop)
  for round_ in range(rounds + 1):
    for name, loop in loops.items():
      start = time.perf_counter()
      loop(iterator, steps)
      measure.wait(trainer.global_step)
      if round_:  # the first round traces
        seconds[name].append(time.perf_counter() - start)
  return {name: 1000 * statistics.median(s) / steps_per_loop
          for name, s in seconds.items()}


def eval_output_ms_per_step(trainer, steps: int, rounds: int) -> dict:
  """Mean ms per eval step of fmx's compiled eval step (it returns the
  batch's example count, fmx.tasks.base.validation_logs) and of the same
  step returning nothing (as it did before), called as Orbit calls them (a
  compiled step at a time), alternated, on the real input pipeline."""
  iterator = iter(trainer.train_dataset)  # endless, unlike the eval split

  @tf.function
  def without_output(iterator):
    trainer.eval_step(iterator)

  def steps_of(step):
    def run_steps():
      for _ in range(steps):
        output = step(iterator)
      return output
    return run_steps

  timings = measure.time_rounds(
      {'eval step (examples as output)': steps_of(tf.function(trainer.eval_step)),
       'same eval step without output': steps_of(without_output)},
      rounds=rounds, calls=1)
  return {name: 1000 * timing['seconds_per_call'] / steps
          for name, timing in timings.items()}


def conversion_seconds(folder, workload) -> dict:
  """Start-up of the two bfloat16 conversions of the teacher run, with its
  first call (tracing)."""
  from fmx.tasks import teacher_precision, teacher_run  # pylint: disable=g-import-not-at-top
  teacher = teacher_run.load_teacher(workload_lib.teacher_dir(folder, workload))
  images = tf.zeros([workload.batch_size, workload.image_size,
                     workload.image_size, 3])
  result = {}
  for name, convert in (
      ('clone into bfloat16 layers', lambda: (lambda m: lambda x: m(
          x, training=False))(teacher_precision.keras_teacher(teacher, 'bfloat16'))),
      ('graph rewrite', lambda: teacher_precision.graph_teacher(
          teacher, 'bfloat16', 'cpu'))):
    start = time.perf_counter()
    forward = convert()
    converted = time.perf_counter()
    if forward is None:
      continue
    measure.wait(tf.function(forward)(images))
    result[name] = (converted - start, time.perf_counter() - converted)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workload', default='speed_saved_model',
                      choices=sorted(precision_phases.SPEED))
  parser.add_argument('--rounds', type=int, default=4)
  parser.add_argument('--loops', type=int, default=4)
  args = parser.parse_args()
  workload = precision_phases.SPEED[args.workload]
  folder = tempfile.mkdtemp(prefix='fmx-step-parts-')
  try:
    workload_lib.prepare(folder, workload)
    setup, trainer = workload_lib.build_fmx(folder, workload,
                                            os.path.join(folder, 'parts'))
    batch = workload_lib.one_batch(setup.task, workload.batch_size)
    with setup.strategy.scope():
      timings = measure.time_rounds(part_functions(setup, trainer, batch),
                                    rounds=args.rounds, calls=4)
    print(f'{workload.description}; teacher precision '
          f'{setup.task.teacher_precision}; load average {os.getloadavg()[0]:.2f}')
    for name, timing in timings.items():
      print(f'  {name:<36} {1000 * timing["seconds_per_call"]:7.1f} ms')
    for name, ms in loop_output_ms_per_step(setup, trainer, 24,
                                            args.loops).items():
      print(f'  {name:<36} {ms:7.1f} ms per step (24-step loops, real input)')
    with setup.strategy.scope():
      for name, ms in eval_output_ms_per_step(trainer, 12, args.loops).items():
        print(f'  {name:<36} {ms:7.1f} ms per step (12 steps a round, real input)')
    for steps in (3, 24):
      print(f'  Orbit loops of {steps:>2} steps, real input  '
            f'{loop_ms_per_step(folder, workload, steps, args.loops):7.1f} ms per step')
    if workload.teacher_format == 'run':
      for name, (convert, first_call) in conversion_seconds(folder, workload).items():
        print(f'  start-up, {name}: {convert:.1f} s, first call {first_call:.1f} s')
  finally:
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == '__main__':
  main()
