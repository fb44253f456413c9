"""How fmx's distillation step scales with batch size and resolution.

    python benchmarks/sweep.py            # ~5 minutes on 2 CPU cores
    python benchmarks/sweep.py --quick    # small CNNs, a smoke check
    python benchmarks/sweep.py --batches 8 16 --resolutions 64 128
    python benchmarks/sweep.py --bind 'distillation.teacher_jit_compile = False'

For every resolution, builds the workload of benchmarks/workload.py (same
teacher, student, data and gin config as benchmarks/distillation.py, the
teacher run written at that resolution), then times
`DistillationTask.train_step` (the full step, as the trainer runs it) on a
batch held in memory for every batch size, in rounds alternating with
float32 matmuls. Prints images/s (over the timed rounds) and the FLOP/s the
step achieves as a fraction of the matmuls', and writes JSON (default
benchmarks/results/sweep.json).
"""

import argparse
import dataclasses
import os
import tempfile
import shutil
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import measure  # noqa: E402
import phases  # noqa: E402
import workload as workload_lib  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def sweep(workload, batches, resolutions, rounds: int, folder: str) -> list:
  points = []
  matmul, matmul_flops = measure.matmul_function()
  for resolution in resolutions:
    at_size = dataclasses.replace(workload, image_size=resolution)
    workload_lib.write_teacher(folder, at_size)
    setup, trainer = workload_lib.build_fmx(
        folder, at_size, os.path.join(folder, f'run-{resolution}px'))
    step_flops = measure.distillation_step_flops(setup.task.teacher,
                                                 trainer.model)
    for batch_size in batches:
      batch = workload_lib.one_batch(setup.task, batch_size)
      full_step = phases.step_functions(setup, trainer, batch)['full_step']
      with setup.strategy.scope():
        timings = measure.time_rounds({'full_step': full_step, 'matmul': matmul},
                                      rounds=rounds, calls=1)
      seconds = timings['full_step']['seconds_per_call']
      points.append({'resolution': resolution, 'batch_size': batch_size,
                     'images_per_second': batch_size / seconds,
                     'ms_per_step': 1000 * seconds,
                     'step_flops_per_image': step_flops,
                     'matmul_flops_per_second': matmul_flops / timings[
                         'matmul']['seconds_per_call'],
                     'rounds': timings['full_step']['rounds']})
      print(f'  {resolution:4d} px  batch {batch_size:3d}  '
            f'{batch_size / seconds:7.1f} img/s', flush=True)
  return points


def format_table(points, batches, resolutions) -> str:
  by_point = {(p['resolution'], p['batch_size']): p for p in points}
  header = ['resolution'] + [f'batch {b}' for b in batches]
  rows = [header]
  for resolution in resolutions:
    row = [f'{resolution} px']
    for batch_size in batches:
      point = by_point[(resolution, batch_size)]
      fraction = (point['images_per_second'] * point['step_flops_per_image']
                  / point['matmul_flops_per_second'])
      row.append(f'{point["images_per_second"]:.1f} img/s ({fraction:.0%})')
    rows.append(row)
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  return '\n'.join('  '.join(cell.rjust(w) if i else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths)))
                   for row in rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--batches', type=int, nargs='+')
  parser.add_argument('--resolutions', type=int, nargs='+')
  parser.add_argument('--rounds', type=int, default=3,
                      help='timed steps per point, after one untimed step')
  parser.add_argument('--json', help='default: benchmarks/results/sweep[-quick].json')
  parser.add_argument('--bind', action='append', default=[],
                      help="a gin binding for the run, e.g. "
                      "'distillation.teacher_jit_compile = False' (repeatable)")
  args = parser.parse_args()
  # Every point makes its own tf.functions (new shapes): TensorFlow's
  # retracing warnings say nothing here.
  measure.tf.get_logger().setLevel('ERROR')
  workload = dataclasses.replace(
      workload_lib.QUICK if args.quick else workload_lib.DEFAULT,
      bindings=tuple(args.bind))
  settings = workload.settings
  batches = args.batches or ([8, 16] if args.quick else [8, 16, 32])
  resolutions = args.resolutions or ([32, 48] if args.quick else [64, 96, 128])
  machine = measure.machine()
  start = time.perf_counter()
  folder = tempfile.mkdtemp(prefix='fmx_sweep_')
  try:
    print(f'{workload.teacher} -> {workload.student}: full step, batch x '
          f'resolution{settings}', flush=True)
    workload_lib.prepare_data(folder, workload)
    points = sweep(workload, batches, resolutions, args.rounds, folder)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  print()
  print('fmx full step (DistillationTask.train_step), images/s (FLOP/s '
        'achieved as a fraction of float32 2048^2 matmuls timed in the same '
        'rounds)')
  print(f'{workload.teacher}{workload.teacher_params} -> {workload.student}'
        f'{workload.student_params or ""}{settings}; {machine["cpu"]}, '
        f'{machine["cores"]} cores, TensorFlow {machine["tensorflow"]}')
  print(format_table(points, batches, resolutions))
  path = args.json or os.path.join(
      RESULTS, 'sweep-quick.json' if args.quick else 'sweep.json')
  measure.write_results(path, workload, machine, start, points=points)


if __name__ == '__main__':
  main()
