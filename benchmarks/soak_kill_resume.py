"""Soak test: kill a distillation run again and again, then compare.

    python benchmarks/soak_kill_resume.py [--cycles 12] [--steps 1600]   # ~10 min

On the embedded MNIST data (offline) with tiny CNNs in deterministic mode:
1. trains a teacher once, then one uninterrupted student run (the reference);
2. starts the same student run in another folder and kills it (SIGKILL, or
   SIGTERM every --sigterm_every cycles), `--cycles` times, each time
   rerunning it: two kills in three land in training (within a second after
   a checkpoint past a random step), one anywhere in the first --max_delay
   seconds; after every kill the folder must still have a readable
   checkpoint, and the rerun must resume from it;
3. lets the last rerun finish and compares its student with the reference,
   tensor by tensor.

Kills land during start-up, in a loop of steps, during a save or an
evaluation. Prints the cycles survived, where the kills landed and the
largest difference from the reference (0.0 means bit-identical).
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

DATA = """
Data.train_dataset = 'mnist_embedded'
Data.eval_dataset = 'mnist_embedded'
Data.train_split = 'train[:512]'
Data.eval_split = 'train[512:640]'
Data.test_split = 'test[:200]'
Data.image_size = 16
Data.train_augmentations = ['random_translate', 'resize']
Data.eval_augmentations = ['resize']
Runtime.distribution_strategy = 'one_device'
Runtime.deterministic = True
Training.global_batch_size = 32
Training.steps_per_loop = 10
Optimizer.learning_rate = 3e-3
Optimizer.warmup_steps = 20
"""

TEACHER = DATA + """
Experiment.task = 'teacher'
teacher.backbone = 'simple_cnn'
teacher/backbones.simple_cnn.widths = (8, 16)
teacher/backbones.simple_cnn.convs_per_stage = 1
Data.mixup = None
Training.epochs = 2
Training.evals = 1
"""

STUDENT = DATA + """
Experiment.task = 'distillation'
distillation.student = 'simple_cnn'
distillation.teacher_run = '{teacher}'
student/backbones.simple_cnn.widths = (4, 8)
student/backbones.simple_cnn.convs_per_stage = 1
losses.kl.temperature = 2.0
Data.mixup = 'mixup_roll'
Training.epochs = {epochs}
Training.evals = 3
Training.checkpoint_every_steps = 30
Training.checkpoints_to_keep = 2
"""


def fmx_run(gin_file, model_dir):
  return subprocess.Popen(
      [sys.executable, '-m', 'fmx.cli', 'run', '--gin', gin_file,
       '--model_dir', model_dir],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))


def finish(gin_file, model_dir):
  process = fmx_run(gin_file, model_dir)
  out, err = process.communicate()
  if process.returncode != 0:
    sys.exit(f'run {model_dir} failed ({process.returncode}):\n{err[-2000:]}')
  return out


def checkpoint_step(model_dir):
  state = tf.train.get_checkpoint_state(model_dir)
  return int(state.model_checkpoint_path.rsplit('-', 1)[1]) if state else None


def readable(model_dir):
  """True if the latest listed checkpoint reads back, every tensor."""
  path = tf.train.latest_checkpoint(model_dir)
  if path is None:
    return True  # killed before the first save: nothing to lose yet
  reader = tf.train.load_checkpoint(path)
  for name in reader.get_variable_to_shape_map():
    reader.get_tensor(name)
  return True


def tensors(model_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name.startswith(('model/', 'optimizer/', 'global_step'))}


def write(path, text):
  with open(path, 'w') as f:
    f.write(text)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cycles', type=int, default=12, help='kills before the final run')
  parser.add_argument('--steps', type=int, default=1600, help='student steps (multiple of 16)')
  parser.add_argument('--sigterm_every', type=int, default=4,
                      help='every Nth kill is a SIGTERM (0: only SIGKILL)')
  parser.add_argument('--max_delay', type=float, default=20.0,
                      help='kills land uniformly in [0, max_delay] s after start')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--root', help='work folder (default: a new temporary one)')
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = args.root or tempfile.mkdtemp(prefix='fmx-soak-')
  os.makedirs(root, exist_ok=True)
  teacher = os.path.join(root, 'teacher')
  teacher_gin = write(os.path.join(root, 'teacher.gin'), TEACHER)
  student_gin = write(os.path.join(root, 'student.gin'), STUDENT.format(
      teacher=teacher, epochs=args.steps * 32 / 512))
  start = time.time()
  finish(teacher_gin, teacher)
  finish(student_gin, os.path.join(root, 'reference'))
  print(f'teacher and reference run: {time.time() - start:.0f} s')

  soaked = os.path.join(root, 'soaked')
  survived, landed = 0, []
  for cycle in range(args.cycles):
    sig = (signal.SIGTERM if args.sigterm_every and (cycle + 1) % args.sigterm_every == 0
           else signal.SIGKILL)
    before = checkpoint_step(soaked)
    process = fmx_run(student_gin, soaked)
    if cycle % 3 == 2:  # anywhere: start-up, restore, the first steps
      time.sleep(rng.uniform(0, args.max_delay))
      where = 'anywhere'
    else:  # in training: once the run has saved past a random step
      target = (before or 0) + rng.randint(1, 60)
      while (checkpoint_step(soaked) or 0) < target and process.poll() is None:
        time.sleep(0.01)
      time.sleep(rng.uniform(0, 1.0))  # into the next loop or save
      where = 'training'
    if process.poll() is not None:
      _, err = process.communicate()
      if process.returncode == 0:
        print(f'cycle {cycle + 1}: the run finished before the kill; stopping here')
        break
      landed.append(checkpoint_step(soaked))  # a failure of its own: counted
      print(f'cycle {cycle + 1:2d}: the run failed by itself (exit '
            f'{process.returncode}): {err.strip()[-300:]}', flush=True)
      continue
    process.send_signal(sig)
    _, err = process.communicate()
    if process.returncode == 0:  # the signal came after the last step
      print(f'cycle {cycle + 1}: the run finished before the signal; stopping here')
      break
    expected = -signal.SIGKILL if sig == signal.SIGKILL else 75
    ok = readable(soaked) and process.returncode == expected
    after = checkpoint_step(soaked)
    landed.append(after)
    survived += ok
    print(f'cycle {cycle + 1:2d}: {signal.Signals(sig).name:7s} ({where}) exit '
          f'{process.returncode:4d}, checkpoint step {before} -> {after}, '
          f'{"readable" if ok else "NOT READABLE: " + err[-300:]}', flush=True)

  out = finish(student_gin, soaked)
  reference, final = tensors(os.path.join(root, 'reference')), tensors(soaked)
  differing = [n for n in reference if not np.array_equal(reference[n], final.get(n))]
  largest = max((float(np.max(np.abs(reference[n].astype(np.float64) -
                                     final[n].astype(np.float64))))
                 for n in differing), default=0.0)
  print(f'\ncycles survived: {survived} of {len(landed)} '
        f'(checkpoint steps after the kills: {landed})')
  print(f'final run resumed: {"resuming from the checkpoint" in out}')
  print(f'tensors differing from the uninterrupted run: {len(differing)} of '
        f'{len(reference)}; largest absolute difference: {largest:g}')
  print(f'total {time.time() - start:.0f} s; runs in {root}')
  return 0 if survived == len(landed) and not differing else 1


if __name__ == '__main__':
  sys.exit(main())
