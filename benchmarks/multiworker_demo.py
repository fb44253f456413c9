"""Two workers on 127.0.0.1 against one process, at the demo's scale.

    python benchmarks/multiworker_demo.py                 # ~15 min on 2 CPU cores
    python benchmarks/multiworker_demo.py --steps 100 --root /tmp/mw

The demo's student (experiments/demo.gin: BatchNorm CNN, MixUp per replica,
global batch 128) distilled for --steps steps, from fresh run folders under
--root:

- `two_workers`: two `fmx run` processes, MultiWorkerMirroredStrategy, one
  replica each (TF_CONFIG on 127.0.0.1 ports); both are SIGKILLed once the
  chief has saved a checkpoint mid-run, then started again: they resume;
- `one_process_2_replicas`: one `fmx run`, MirroredStrategy over 2 logical
  CPU devices: the same replicas, per-replica batch (64), data, MixUp pairs
  and BatchNorm batches as the workers: the same computation, rounded
  differently (other kernels' thread partitions, another all-reduce);
- `one_process_2_replicas_1_thread`: the same with one thread per op, the
  noise floor: the same computation again, only the float rounding differs;
- `one_device`: the everyday `fmx run`: the same global batches, but
  BatchNorm statistics and MixUp pairs over 128 images, not 2 x 64.

This student's training amplifies rounding: Adam moves a weight whose
gradient is ~0 by about the learning rate in the direction of the
gradient's sign, which rounding flips, and BatchNorm carries it on. So the
weights of the first three runs drift apart by the noise floor's amount
(not 1e-7): the two workers match one process when their difference is no
larger than that of one process with itself under other rounding, and
their accuracy and agreement agree. Prints wall time, test top-1,
agreement with the teacher, KL and the largest absolute difference of each
student's weights (BatchNorm statistics included) from the two workers'
and from `one_process_2_replicas`. Every run is deterministic
(Runtime.deterministic). The teacher is --teacher_run if finished, else
experiments/demo_teacher.gin trained once into ROOT/teacher.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, 'experiments', 'demo.gin')
TEACHER_GIN = os.path.join(REPO, 'experiments', 'demo_teacher.gin')

# `fmx run` in a process whose CPU is split into N logical devices, with
# Runtime's strategy replaced by MirroredStrategy over them (Runtime has no
# setting for that: a real host's devices are its GPUs).
LOGICAL_CPUS = r'''
import sys
import tensorflow as tf
n = int(sys.argv[1])
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0],
    [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
from fmx.training import settings
settings.Runtime.strategy = lambda self: tf.distribute.MirroredStrategy(
    [f'/cpu:{i}' for i in range(n)])
from fmx import cli
sys.exit(cli.main(sys.argv[2:]))
'''


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _fmx_run(model_dir, bindings, log, prefix=(sys.executable, '-m', 'fmx.cli'),
             env=None):
  command = list(prefix) + ['run', '--gin', DEMO, '--model_dir', model_dir]
  for binding in bindings:
    command += ['--bind', binding]
  return subprocess.Popen(command, cwd=REPO, stdout=open(log, 'a'),
                          stderr=subprocess.STDOUT, env=env)


def _latest_step(model_dir):
  try:
    with open(os.path.join(model_dir, 'checkpoint')) as f:
      return int(f.readline().split('"')[1].rsplit('-', 1)[1])
  except (OSError, IndexError, ValueError):
    return -1


def _wait(processes, timeout=3600):
  deadline = time.monotonic() + timeout
  try:
    for process in processes:
      process.wait(max(1, deadline - time.monotonic()))
  finally:
    for process in processes:  # a straggler hung in a collective
      process.kill()
  return [process.returncode for process in processes]


def two_workers(model_dir, bindings, kill_after_step):
  """Two workers, SIGKILLed after a checkpoint past `kill_after_step`, resumed."""
  log = model_dir + '.log'
  launches = []
  for launch in ('killed', 'resumed'):
    hosts = [f'127.0.0.1:{port}' for port in _free_ports(2)]
    start = time.perf_counter()
    workers = []
    for index in range(2):
      env = dict(os.environ, TF_CONFIG=json.dumps({
          'cluster': {'worker': hosts},
          'task': {'type': 'worker', 'index': index}}))
      workers.append(_fmx_run(model_dir, bindings + [
          "Runtime.distribution_strategy = 'multi_worker_mirrored'"],
                              f'{log}.{index}', env=env))
    if launch == 'killed':
      while _latest_step(model_dir) <= kill_after_step:
        if any(w.poll() is not None for w in workers):
          raise SystemExit(f'a worker ended before the kill; see {log}.*')
        time.sleep(0.05)
      for worker in workers:
        worker.send_signal(signal.SIGKILL)
      _wait(workers)
      launches.append((launch, time.perf_counter() - start,
                       _latest_step(model_dir)))
      continue
    codes = _wait(workers)
    if codes != [0, 0]:
      raise SystemExit(f'workers exited with {codes}; see {log}.*')
    launches.append((launch, time.perf_counter() - start, None))
  return launches


def one_process(model_dir, bindings, replicas):
  start = time.perf_counter()
  if replicas == 1:
    process = _fmx_run(model_dir, bindings, model_dir + '.log')
  else:
    process = _fmx_run(model_dir, bindings + [
        "Runtime.distribution_strategy = 'mirrored'"], model_dir + '.log',
                       prefix=(sys.executable, '-c', LOGICAL_CPUS, str(replicas)))
  if _wait([process]) != [0]:
    raise SystemExit(f'the run failed; see {model_dir}.log')
  return time.perf_counter() - start


def _weights(model_dir):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {name: reader.get_tensor(name).astype(np.float64)
          for name in reader.get_variable_to_shape_map()
          if name.startswith('model/') and 'OPTIMIZER_SLOT' not in name}


def _max_difference(a, b):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return max(float(np.max(np.abs(a[name] - b[name]))) for name in a)


def _teacher(requested, root):
  if requested and os.path.exists(os.path.join(requested, 'results.json')):
    return os.path.abspath(requested)
  teacher = os.path.join(root, 'teacher')
  if not os.path.exists(os.path.join(teacher, 'results.json')):
    print(f'training the demo teacher into {teacher} ...', flush=True)
    process = subprocess.Popen(
        [sys.executable, '-m', 'fmx.cli', 'run', '--gin', TEACHER_GIN,
         '--model_dir', teacher], cwd=REPO, stdout=open(teacher + '.log', 'w'),
        stderr=subprocess.STDOUT)
    if _wait([process]) != [0]:
      raise SystemExit(f'the teacher failed; see {teacher}.log')
  return teacher


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--root', help='folder for the runs (default: a new '
                      'temporary folder)')
  parser.add_argument('--teacher_run', default=os.path.join(REPO, 'runs', 'demo',
                                                            'teacher'))
  args = parser.parse_args(argv)
  root = os.path.abspath(args.root or tempfile.mkdtemp(prefix='fmx-multiworker-'))
  os.makedirs(root, exist_ok=True)
  teacher = _teacher(args.teacher_run, root)
  bindings = [f'Training.max_steps = {args.steps}',
              f'distillation.teacher_run = {teacher!r}',
              'Runtime.deterministic = True']
  runs = {name: os.path.join(root, name) for name in
          ('two_workers', 'one_process_2_replicas',
           'one_process_2_replicas_1_thread', 'one_device')}
  for folder in runs.values():
    if os.path.exists(folder):
      raise SystemExit(f'{folder} exists; use another --root')

  print(f'runs in {root}; teacher {teacher}', flush=True)
  walls = {}
  launches = two_workers(runs['two_workers'], bindings,
                         kill_after_step=args.steps // 4)
  walls['two_workers'] = sum(seconds for _, seconds, _ in launches)
  walls['one_process_2_replicas'] = one_process(
      runs['one_process_2_replicas'], bindings, 2)
  walls['one_process_2_replicas_1_thread'] = one_process(
      runs['one_process_2_replicas_1_thread'],
      bindings + ['Runtime.intra_op_threads = 1'], 2)
  walls['one_device'] = one_process(runs['one_device'], bindings, 1)

  workers = _weights(runs['two_workers'])
  replicas = _weights(runs['one_process_2_replicas'])
  rows = []
  for name, folder in runs.items():
    with open(os.path.join(folder, 'results.json')) as f:
      results = json.load(f)
    weights = _weights(folder)
    rows.append((name, walls[name], results['student_top1'],
                 results['agreement'], results['kl'],
                 _max_difference(workers, weights),
                 _max_difference(replicas, weights), results['global_step']))
  print()
  print(f'demo student, {args.steps} steps at global batch 128; teacher test '
        f'top-1 {results["teacher_top1"]:.2%} ({results["test_split"]})')
  killed = launches[0]
  print(f'2 workers: SIGKILLed after {killed[1]:.0f} s with the checkpoint at '
        f'step {killed[2]} saved, resumed and finished in {launches[1][1]:.0f} s')
  print(f'{"run":<33}{"wall s":>7}{"top-1":>8}{"agreement":>10}{"KL":>8}'
        f'{"max |dw| vs":>13}{"max |dw| vs":>13}{"step":>6}')
  print(f'{"":<66}{"2 workers":>13}{"2 replicas":>13}')
  for name, wall, top1, agreement, kl, to_workers, to_replicas, step in rows:
    print(f'{name:<33}{wall:>7.0f}{top1:>8.2%}{agreement:>10.2%}{kl:>8.4f}'
          f'{to_workers:>13.3g}{to_replicas:>13.3g}{step:>6}')


if __name__ == '__main__':
  main()
