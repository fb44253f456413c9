"""Adam vs Shampoo on the demo distillation: epochs to agreement, step time, memory.

    python benchmarks/shampoo.py                       # the full demo, 3 seeds
    python benchmarks/shampoo.py --epochs 4 --teacher_epochs 4 --evals 8 \
        --steps_per_loop 16 --warmup_steps 20          # shortened (shared CPU)
    python benchmarks/shampoo.py --teacher_run runs/demo/teacher   # reuse one

Trains the demo teacher once (experiments/demo_teacher.gin), then, for each
seed, the demo student with Adam (experiments/demo.gin) and with Shampoo
(experiments/demo_shampoo.gin), alternately, each as its own `fmx run`
process with the same schedule. From every run folder it reads:

- the eval agreement (student vs teacher top-1, on the eval split) at each
  eval, from the validation summaries;
- the training steps per second Orbit records for every loop of steps (the
  first loop, which traces the step, left out);
- the bytes of the optimiser's variables in the final checkpoint.

Then, per seed: the target is the Adam run's final agreement, and for each
run the epochs it took to first reach it (None if it never did); the
speed-up in epochs is Adam's mean over Shampoo's mean (over the seeds where
Shampoo reached it), and the one in time divides it by the step-time ratio. Writes JSON (default
benchmarks/results/shampoo.json) and prints a table.
"""

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import measure  # noqa: E402

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
RESULTS = os.path.join(BENCHMARKS, 'results')
OPTIMIZERS = {'adam': 'experiments/demo.gin',
              'shampoo': 'experiments/demo_shampoo.gin'}
TRAIN_EXAMPLES = 3600  # the demo's train split: train[:90%] of 4,000 images
BATCH = 128


def fmx_run(gin_file: str, model_dir: str, bindings, log: str) -> None:
  command = [sys.executable, '-m', 'fmx.cli', 'run', '--gin', gin_file,
             '--model_dir', model_dir]
  for binding in bindings:
    command += ['--bind', binding]
  with open(log, 'w') as out:
    subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                   check=True, env=dict(os.environ, PYTHONPATH=REPO))


def scalars(folder: str, tag: str) -> dict:
  """{step: value} of one scalar summary in a folder of event files."""
  values = {}
  for path in sorted(glob.glob(os.path.join(folder, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


def optimizer_bytes(model_dir: str) -> int:
  """Bytes of the optimiser's slot variables (Adam's moments, Shampoo's
  statistics and roots) in the run's latest checkpoint."""
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  shapes, dtypes = (reader.get_variable_to_shape_map(),
                    reader.get_variable_to_dtype_map())
  return sum(int(np.prod(shapes[name])) * dtypes[name].size for name in shapes
             if '/.OPTIMIZER_SLOT/' in name)


def read_run(model_dir: str) -> dict:
  agreement = scalars(os.path.join(model_dir, 'validation'), 'agreement')
  speed = scalars(os.path.join(model_dir, 'train'), 'steps_per_second')
  loops = [v for step, v in sorted(speed.items())][1:] or list(speed.values())
  return {'epochs': [step * BATCH / TRAIN_EXAMPLES for step in sorted(agreement)],
          'agreement': [agreement[step] for step in sorted(agreement)],
          'seconds_per_step': statistics.mean(1.0 / v for v in loops),
          'optimizer_bytes': optimizer_bytes(model_dir)}


def epochs_to(run: dict, target: float):
  for epoch, value in zip(run['epochs'], run['agreement']):
    if value >= target:
      return epoch
  return None


def summarise(runs: dict) -> dict:
  """Per seed, the target is that seed's final Adam agreement."""
  targets = [r['agreement'][-1] for r in runs['adam']]
  summary = {'target_agreement': targets}
  for name, group in runs.items():
    summary[name] = {
        'final_agreement': [r['agreement'][-1] for r in group],
        'epochs_to_target': [epochs_to(r, t) for r, t in zip(group, targets)],
        'seconds_per_step': statistics.mean(r['seconds_per_step'] for r in group),
        'optimizer_bytes': group[0]['optimizer_bytes']}
  adam, shampoo = summary['adam'], summary['shampoo']
  summary['step_time_ratio'] = shampoo['seconds_per_step'] / adam['seconds_per_step']
  summary['optimizer_memory_ratio'] = shampoo['optimizer_bytes'] / adam['optimizer_bytes']
  reached = [(a, s) for a, s in zip(adam['epochs_to_target'],
                                    shampoo['epochs_to_target']) if s]
  summary['seeds_where_shampoo_reached_target'] = len(reached)
  if reached:
    # Adam's epochs over Shampoo's, over the seeds where Shampoo got there.
    epochs = (statistics.mean(a for a, _ in reached) /
              statistics.mean(s for _, s in reached))
    summary['speedup_in_epochs'] = epochs
    summary['speedup_in_time'] = epochs / summary['step_time_ratio']
  return summary


def print_table(summary: dict) -> None:
  targets = ' '.join(f'{t:.4f}' for t in summary['target_agreement'])
  print(f"\ntarget per seed: Adam's final agreement {targets}")
  print(f"{'optimizer':10} {'final agreement (seeds)':32} {'epochs to target':24} "
        f"{'s/step':>8} {'optimizer MB':>13}")
  for name in OPTIMIZERS:
    s = summary[name]
    finals = ' '.join(f'{v:.4f}' for v in s['final_agreement'])
    reached = ' '.join('-' if e is None else f'{e:.1f}' for e in s['epochs_to_target'])
    print(f"{name:10} {finals:32} {reached:24} {s['seconds_per_step']:8.4f} "
          f"{s['optimizer_bytes'] / 1e6:13.3f}")
  print(f"step time ratio {summary['step_time_ratio']:.2f}, optimiser memory "
        f"ratio {summary['optimizer_memory_ratio']:.2f}, speed-up in epochs "
        f"{summary.get('speedup_in_epochs', 'n/a')}, in time "
        f"{summary.get('speedup_in_time', 'n/a')}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--epochs', type=float, default=None,
                      help="student epochs (default: the demo's)")
  parser.add_argument('--evals', type=int, default=11)
  parser.add_argument('--steps_per_loop', type=int, default=None,
                      help='finer evals need shorter loops (demo: 28)')
  parser.add_argument('--warmup_steps', type=int, default=None,
                      help="for a shortened schedule (demo: 100)")
  parser.add_argument('--teacher_epochs', type=float, default=None)
  parser.add_argument('--teacher_run', help='a finished demo teacher to reuse')
  parser.add_argument('--workdir', help='keep the runs here (default: temporary)')
  parser.add_argument('--json', default=os.path.join(RESULTS, 'shampoo.json'))
  args = parser.parse_args()
  start = time.perf_counter()
  workdir = args.workdir or tempfile.mkdtemp(prefix='fmx-shampoo-')
  os.makedirs(workdir, exist_ok=True)
  teacher = os.path.abspath(args.teacher_run or os.path.join(workdir, 'teacher'))
  if not args.teacher_run and not os.path.exists(
      os.path.join(teacher, 'results.json')):
    bindings = ([f'Training.epochs = {args.teacher_epochs}']
                if args.teacher_epochs else [])
    print(f'teacher -> {teacher}', flush=True)
    fmx_run('experiments/demo_teacher.gin', teacher, bindings,
            os.path.join(workdir, 'teacher.log'))
  common = [f"distillation.teacher_run = '{teacher}'",
            f'Training.evals = {args.evals}']
  if args.epochs:
    common.append(f'Training.epochs = {args.epochs}')
  if args.steps_per_loop:
    common.append(f'Training.steps_per_loop = {args.steps_per_loop}')
  if args.warmup_steps is not None:
    common.append(f'Optimizer.warmup_steps = {args.warmup_steps}')
  runs = {name: [] for name in OPTIMIZERS}
  for seed in args.seeds:
    for name, gin_file in OPTIMIZERS.items():
      model_dir = os.path.join(workdir, f'{name}-seed{seed}')
      began = time.perf_counter()
      if not os.path.exists(os.path.join(model_dir, 'results.json')):
        # A finished run (--workdir of an earlier invocation) is only read.
        fmx_run(gin_file, model_dir, common + [f'Training.seed = {seed}'],
                model_dir + '.log')
      runs[name].append(read_run(model_dir))
      print(f"{name} seed {seed}: agreement {runs[name][-1]['agreement'][-1]:.4f} "
            f'({time.perf_counter() - began:.0f} s)', flush=True)
  summary = summarise(runs)
  print_table(summary)

  class Workload:  # what measure.write_results records as the workload
    pass
  workload = Workload()
  workload.__dict__.update(seeds=args.seeds, epochs=args.epochs or 'demo (22)',
                           evals=args.evals, teacher_run=teacher,
                           steps_per_loop=args.steps_per_loop or 'demo (28)',
                           warmup_steps=(args.warmup_steps if args.warmup_steps
                                         is not None else 'demo (100)'),
                           teacher_epochs=(args.teacher_epochs or
                                           ('see teacher_run' if args.teacher_run
                                            else 'demo (20)')),
                           experiments=OPTIMIZERS)
  measure.write_results(args.json, workload, measure.machine(), start,
                        summary=summary, runs=runs)


if __name__ == '__main__':
  main()
