"""Ctrl-C saves before it stops, and corrupt records do not shift a resume.

A teacher trains on an image folder holding one corrupt image, skipped with
`Data.skip_corrupt = True`. Killed (SIGKILL), rerun, stopped by Ctrl-C
(SIGINT: saves at a step boundary, exit 130) and rerun again, it ends with
exactly the weights and metrics of an uninterrupted run: the stream resumes
at the checkpoint's position, corrupt record or not. A second Ctrl-C aborts
at once.
"""

import json
import os
import signal
import threading
import time

import numpy as np
import tensorflow as tf

from conftest import TINY_DATA, tiny_teacher_gin, write
from fmx.errors import Interrupted
from fmx.training import preemption
from test_interruptions import _finish, _latest_step, _run_until, _start, _weights

STEPS = 61  # ceil(16 epochs x 61 records / 16): the corrupt one counts


def _image_folder(root):
  """3 classes x 20 small PNGs for training, 3 x 4 for test, 1 corrupt."""
  rng = np.random.default_rng(0)
  for split, count in (('train', 20), ('test', 4)):
    for label in range(3):
      folder = os.path.join(root, split, f'class{label}')
      os.makedirs(folder)
      for index in range(count):
        pixels = rng.integers(0, 256, (12, 12, 1), np.uint8) // (label + 1)
        with open(os.path.join(folder, f'{index}.png'), 'wb') as f:
          f.write(tf.io.encode_png(pixels).numpy())
  write(os.path.join(root, 'train', 'class1', 'corrupt.png'), 'not an image')


def _gin(tmp_path, name):
  model_dir = str(tmp_path / name)
  text = tiny_teacher_gin(model_dir, epochs=16)
  for line in TINY_DATA.splitlines():
    if line.startswith(("Data.train_dataset", "Data.eval_dataset",
                        "Data.train_split", "Data.eval_split", "Data.test_split")):
      text = text.replace(line + '\n', '')
  text += f"""
Data.train_dataset = 'image_folder'
Data.eval_dataset = 'image_folder'
Data.eval_split = 'test'
image_folder.root = '{tmp_path / 'images'}/{{split}}'
image_folder.channels = 1
Data.skip_corrupt = True
Training.checkpoint_every_steps = 12
"""
  return write(tmp_path / f'{name}.gin', text), model_dir


def _results(model_dir):
  results = json.load(open(os.path.join(model_dir, 'results.json')))
  return {k: v for k, v in results.items() if k != 'train_seconds'}


def test_kill_and_ctrl_c_resume_exactly_past_a_corrupt_record(tmp_path):
  _image_folder(str(tmp_path / 'images'))
  reference_gin, reference_dir = _gin(tmp_path, 'uninterrupted')
  reference = _start(reference_gin)  # alongside the interrupted one
  gin_file, model_dir = _gin(tmp_path, 'interrupted')

  code, _, _ = _run_until(gin_file, model_dir, 12, signal.SIGKILL, seed=0)
  assert code == -signal.SIGKILL
  code, _, err = _run_until(gin_file, model_dir, 24, signal.SIGINT, seed=1)
  assert code == Interrupted.exit_code == 130, err
  assert 'Traceback' not in err
  saved = _latest_step(model_dir)
  assert 24 <= saved < STEPS
  message = [l for l in err.splitlines() if l.startswith('fmx: interrupted:')]
  assert len(message) == 1, err
  assert (f'SIGINT received: saved a checkpoint at step {saved} ' in message[0]
          and f'resume from step {saved}.' in message[0])
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  seconds_before = reader.get_tensor('fmx_train_seconds/.ATTRIBUTES/VARIABLE_VALUE')
  assert seconds_before > 0

  out = _finish(gin_file)
  assert f'resuming from the checkpoint at step {saved}' in out
  out, err = reference.communicate(timeout=300)
  assert reference.returncode == 0, err
  expected, got = _weights(reference_dir), _weights(model_dir)
  assert int(got['global_step/.ATTRIBUTES/VARIABLE_VALUE']) == STEPS
  different = [k for k in expected if not np.array_equal(expected[k], got[k])]
  assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'
  assert _results(model_dir) == _results(reference_dir)
  assert _results(model_dir)['skipped_corrupt'] == 1
  # The time of every invocation, not only the last one's.
  total = json.load(open(os.path.join(model_dir, 'results.json')))['train_seconds']
  assert total >= round(float(seconds_before), 1)


def test_second_ctrl_c_aborts_at_once(monkeypatch):
  aborted = threading.Event()
  monkeypatch.setattr(preemption, 'abort', aborted.set)
  # Python's usual Ctrl-C handler, whatever an earlier test in this worker
  # left installed (the check below is that watching() puts it back).
  original = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    _second_ctrl_c(aborted)
  finally:
    signal.signal(signal.SIGINT, original)


def _second_ctrl_c(aborted):
  stop = preemption.Preemption()
  with stop.watching():
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: a request
    deadline = time.monotonic() + 10
    while not stop.is_requested:
      assert time.monotonic() < deadline
      time.sleep(0.01)
    assert not aborted.is_set() and stop.signal == signal.SIGINT
    os.kill(os.getpid(), signal.SIGINT)
    assert aborted.wait(10)
  # The usual handler is back (read, not raised: a signal sent to the
  # process may reach another thread first and wait past any sleep here).
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
