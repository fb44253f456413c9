"""Where the time of a short `fmx run` goes: start-up, training, evaluation, end.

    python benchmarks/startup.py                 # ~3 min on 2 CPU cores
    python benchmarks/startup.py --steps 28 --json out.json

The workload of issue 18's independent measurement, (a): a Keras
ResNet50V2 (BatchNorm) teacher exported as a SavedModel, a MobileNetV3-Large
student, 96 px, batch 16, Pet37-like TFRecords (benchmarks/workload.py),
`--steps` steps (28 by default: the measurement's run). `fmx run --gin` runs
in a child process, as a user runs it; the parent times the child from
exec to exit, so Python's and TensorFlow's imports count. Inside the child,
the functions that do each phase are wrapped with a clock (nothing else
changes), and each training loop's end is timed, so the first loop's
tracing shows against the steady loops.

Prints one row per phase (seconds, share of the wall time) and writes JSON
(default benchmarks/results/startup.json).
"""

import argparse
import collections
import contextlib
import dataclasses
import functools
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
RESULTS = os.path.join(BENCHMARKS, 'results')


def _workload(steps_per_loop: int, bindings=()):
  import precision_phases  # pylint: disable=g-import-not-at-top
  workload = precision_phases.SPEED['speed_saved_model']
  return dataclasses.replace(workload, steps_per_loop=steps_per_loop,
                             bindings=workload.bindings + tuple(bindings))


class Clock:
  """Seconds spent in wrapped functions, by phase (outermost call counts)."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.calls = collections.Counter()
    self.loop_ends = []

  def wrap(self, owner, attribute: str, phase: str) -> None:
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def timed(*args, **kwargs):
      start = time.perf_counter()
      try:
        return original(*args, **kwargs)
      finally:
        self.seconds[phase] += time.perf_counter() - start
        self.calls[phase] += 1
    setattr(owner, attribute, timed)


# (module, attribute, phase), in the order a run meets them; '  of which'
# phases happen inside the phase above them.
WRAPPED = (
    ('fmx.gin_config', 'parse', 'parse gin'),
    ('fmx.training.run', 'build_setup', 'task: data sources, strategy'),
    ('official.core.train_utils', 'create_trainer',
     'build: models, optimizer, pipelines'),
    ('fmx.backbones.hub', 'saved_model_teacher',
     '  of which: load the SavedModel teacher'),
    ('fmx.tasks.teacher_precision', 'graph_teacher',
     '  of which: teacher graph rewrite'),
    ('fmx.training.run_dir', 'check_config', 'checks, labels.txt'),
    ('fmx.training.run_dir', 'check_free_space', 'checks, labels.txt'),
    ('fmx.training.labels', 'announce', 'checks, labels.txt'),
    ('orbit:Controller', 'save_checkpoint', 'checkpoints (step 0, end)'),
    ('fmx.training.input_images', 'log_first_batch',
     'first-batch images to TensorBoard'),
    ('orbit:Controller', 'train', 'training loops'),
    ('fmx.training.batch_norm', 'recompute',
     '  of which: precise BatchNorm statistics'),
    ('orbit:Controller', 'evaluate', 'validation'),
    ('fmx.training.run', 'evaluate_split', 'test evaluation'),
)


def _owner(path: str):
  """'package.module' -> the module; 'package.module:Class' -> the class."""
  module, _, name = path.partition(':')
  owner = importlib.import_module(module)
  return getattr(owner, name) if name else owner


def child(gin_file: str, model_dir: str, out: str) -> None:
  """Runs `fmx run` here with its phases timed; writes the times to `out`."""
  entered = time.time()
  from fmx import cli  # pylint: disable=g-import-not-at-top
  from fmx.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  for path, _, _ in WRAPPED:
    _owner(path)  # imported before the clock stops counting imports
  imported = time.time()
  clock = Clock()
  for path, attribute, phase in WRAPPED:
    clock.wrap(_owner(path), attribute, phase)
  loop_end = trainer_lib.Trainer.train_loop_end

  def timed_loop_end(self):
    clock.loop_ends.append(time.perf_counter())
    return loop_end(self)
  trainer_lib.Trainer.train_loop_end = timed_loop_end
  started = time.perf_counter()
  code = cli.main(['run', '--gin', gin_file, '--model_dir', model_dir])
  ran = time.perf_counter() - started
  with open(out, 'w') as f:
    json.dump({'exit_code': code, 'entered': entered, 'imported': imported,
               'run_seconds': ran, 'phases': dict(clock.seconds),
               'calls': dict(clock.calls), 'loop_ends': clock.loop_ends,
               'train_started': started}, f)


def measure(folder: str, steps: int, steps_per_loop: int, bindings=()) -> dict:
  """One `fmx run` of `steps` steps in a child process, its phases timed."""
  import workload as workload_lib  # pylint: disable=g-import-not-at-top
  workload = _workload(steps_per_loop, bindings)
  workload_lib.prepare(folder, workload)
  model_dir = os.path.join(folder, 'run')
  gin_file = workload_lib.write_gin(folder, workload, model_dir, steps)
  out = os.path.join(folder, 'phases.json')
  launched = time.time()
  subprocess.run([sys.executable, __file__, '--child', gin_file, model_dir, out],
                 cwd=REPO, check=True, stdout=open(os.path.join(folder, 'run.log'), 'w'),
                 stderr=subprocess.STDOUT)
  wall = time.time() - launched
  with open(out) as f:
    child_times = json.load(f)
  if child_times['exit_code'] != 0:
    raise SystemExit(f'fmx run failed: see {folder}/run.log')
  phases = dict(child_times['phases'])
  phases['Python + TensorFlow + fmx imports'] = child_times['imported'] - launched
  ends = child_times['loop_ends']
  loops = [b - a for a, b in zip(ends, ends[1:])]
  steady = statistics.median(loops) if loops else 0.0
  return {'wall_seconds': wall, 'steps': steps, 'steps_per_loop': steps_per_loop,
          'phases': phases, 'calls': child_times['calls'],
          'steady_loop_seconds': steady,
          'steady_step_seconds': steady / steps_per_loop,
          'training_at_steady_speed': steady / steps_per_loop * steps,
          'description': workload.description, 'bindings': list(bindings)}


def table(result: dict) -> str:
  wall = result['wall_seconds']
  rows = [f'{"phase":<48} {"seconds":>8} {"share":>6}']
  order = ['Python + TensorFlow + fmx imports'] + list(dict.fromkeys(
      phase for _, _, phase in WRAPPED))
  for phase in order:
    seconds = result['phases'].get(phase, 0.0)
    rows.append(f'{phase:<48} {seconds:8.1f} {seconds / wall:6.0%}')
  counted = sum(s for p, s in result['phases'].items() if not p.startswith(' '))
  rows.append(f'{"other (not wrapped)":<48} {wall - counted:8.1f} '
              f'{(wall - counted) / wall:6.0%}')
  rows.append(f'{"wall time of `fmx run`, exec to exit":<48} {wall:8.1f}')
  rows.append(f'training loops at the steady speed: {result["training_at_steady_speed"]:.1f} s '
              f'({result["steps"]} steps x {result["steady_step_seconds"] * 1e3:.0f} ms); '
              f'the first loop (tracing) took the rest of "training loops".')
  return '\n'.join(rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=28)
  parser.add_argument('--steps_per_loop', type=int, default=4)
  parser.add_argument('--json', default=os.path.join(RESULTS, 'startup.json'))
  parser.add_argument('--keep', action='store_true', help='keep the temporary folder')
  parser.add_argument('--bind', action='append', default=[],
                      help="an extra gin binding, e.g. \"distillation.teacher_precision = 'float32'\"")
  parser.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  sys.path.insert(0, BENCHMARKS)
  sys.path.insert(0, REPO)
  if args.child:
    child(*args.child)
    return 0
  folder = tempfile.mkdtemp(prefix='fmx-startup-')
  try:
    result = measure(folder, args.steps, args.steps_per_loop, args.bind)
  finally:
    if not args.keep:
      shutil.rmtree(folder, ignore_errors=True)
  print(result['description'])
  print(table(result))
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'wrote {args.json}')
  return 0


if __name__ == '__main__':
  with contextlib.suppress(BrokenPipeError):
    sys.exit(main())
