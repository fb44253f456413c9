"""Killed, preempted and repeated runs end with the same student, bit for bit.

Each run here is a real `fmx run` process on the embedded data (deterministic
mode), distilling a tiny student for 160 steps with a checkpoint every 20:
- the same config twice gives identical weights and metrics;
- SIGKILL at two different points, then a rerun, ends with exactly the
  weights of an uninterrupted run (data position and every random draw are
  restored, not replayed);
- SIGTERM saves a checkpoint at a step boundary and exits 75; the rerun
  ends with exactly the uninterrupted weights too.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_student_gin, write
from fmx.errors import Preempted

STEPS = 160  # 10 epochs of 256 images at batch 16
EXTRA = """
Training.epochs = 10
Training.checkpoint_every_steps = 20
Training.checkpoints_to_keep = 3
"""


def _gin(tmp_path, teacher_dir, name):
  model_dir = str(tmp_path / name)
  return write(tmp_path / f'{name}.gin',
               tiny_student_gin(model_dir, teacher_dir) + EXTRA), model_dir


def _start(gin_file):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.Popen([sys.executable, '-m', 'fmx.cli', 'run', '--gin', gin_file],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)


def _latest_step(model_dir):
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None:
    return -1
  return int(state.model_checkpoint_path.rsplit('-', 1)[1])


def _run_until(gin_file, model_dir, step, sig, seed):
  """Starts a run and sends `sig` once a checkpoint at >= `step` is listed."""
  process = _start(gin_file)
  while _latest_step(model_dir) < step:
    assert process.poll() is None, f'run ended before step {step}: {process.communicate()}'
    time.sleep(0.01)
  time.sleep(random.Random(seed).uniform(0, 0.05))  # somewhere in the next loop
  process.send_signal(sig)
  out, err = process.communicate(timeout=120)
  return process.returncode, out, err


def _finish(gin_file):
  process = _start(gin_file)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err
  return out


def _weights(model_dir):
  """Every model and optimizer tensor of the latest checkpoint, by name."""
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name.startswith(('model/', 'optimizer/', 'global_step'))}


def _assert_same_weights(expected_dir, model_dir):
  expected, got = _weights(expected_dir), _weights(model_dir)
  assert expected.keys() == got.keys()
  assert int(got['global_step/.ATTRIBUTES/VARIABLE_VALUE']) == STEPS
  different = [name for name in expected if not np.array_equal(expected[name], got[name])]
  assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'


def _metrics(model_dir):
  results = json.load(open(os.path.join(model_dir, 'results.json')))
  return {k: v for k, v in results.items() if k != 'train_seconds'}


@pytest.fixture(scope='module')
def reference(trained_teacher, tmp_path_factory):
  """An uninterrupted run of the config every test here interrupts."""
  tmp_path = tmp_path_factory.mktemp('reference')
  gin_file, model_dir = _gin(tmp_path, trained_teacher[0], 'uninterrupted')
  _finish(gin_file)
  return model_dir


def test_deterministic_mode_repeats_a_run_exactly(reference, trained_teacher, tmp_path):
  gin_file, model_dir = _gin(tmp_path, trained_teacher[0], 'again')
  _finish(gin_file)
  _assert_same_weights(reference, model_dir)
  assert _metrics(model_dir) == _metrics(reference)


def test_two_sigkills_then_resume_end_with_the_uninterrupted_weights(
    reference, trained_teacher, tmp_path):
  gin_file, model_dir = _gin(tmp_path, trained_teacher[0], 'killed')
  for kill, step in enumerate((40, 100)):
    code, _, _ = _run_until(gin_file, model_dir, step, signal.SIGKILL, seed=kill)
    assert code == -signal.SIGKILL
    assert not os.path.exists(os.path.join(model_dir, 'results.json'))
  assert _latest_step(model_dir) < STEPS  # the kills did cut the run short
  out = _finish(gin_file)
  assert 'resuming from the checkpoint at step' in out
  _assert_same_weights(reference, model_dir)
  assert _metrics(model_dir) == _metrics(reference)


def test_sigterm_saves_at_a_step_boundary_exits_75_and_resumes(
    reference, trained_teacher, tmp_path):
  gin_file, model_dir = _gin(tmp_path, trained_teacher[0], 'preempted')
  code, _, err = _run_until(gin_file, model_dir, 60, signal.SIGTERM, seed=2)
  assert code == Preempted.exit_code == 75, err
  assert 'Traceback' not in err
  message = [line for line in err.splitlines() if line.startswith('fmx: preempted:')]
  assert len(message) == 1 and 'Rerun the same command' in message[0]
  saved = _latest_step(model_dir)
  assert f'checkpoint at step {saved} ' in message[0]
  assert 60 <= saved < STEPS
  _finish(gin_file)
  _assert_same_weights(reference, model_dir)
