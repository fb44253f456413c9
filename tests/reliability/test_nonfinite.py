"""A non-finite step is rolled back to the last good checkpoint, boundedly.

The teacher task's gradient step is poisoned from step 5 on (a NaN loss into
the gradient), a given number of times: once is survived by one rollback;
for ever stops the run with exit code 3 after Training.nan_rollbacks. No
checkpoint ever written holds a non-finite value.
"""

import glob
import json
import os

import numpy as np
import tensorflow as tf

from conftest import tiny_teacher_gin, write
from fmx import cli
from fmx.errors import Diverged
from fmx.tasks import teacher
from fmx.training import run

ROLLBACKS = 2


def _poison(monkeypatch, times):
  """From step 5 on, the next `times` gradient steps get a NaN loss."""
  poisoned = tf.Variable(0, dtype=tf.int64)
  original = teacher.apply_gradients

  def apply_gradients(tape, loss, model, optimizer, clipnorm=None):
    poison = tf.logical_and(optimizer.iterations >= 5, poisoned < times)
    with tape:  # a factor, so that the gradient is NaN too
      loss = loss * tf.where(poison, tf.constant(np.nan, loss.dtype), 1.0)
    poisoned.assign_add(tf.cast(poison, tf.int64))
    original(tape, loss, model, optimizer, clipnorm)

  monkeypatch.setattr(teacher, 'apply_gradients', apply_gradients)
  return poisoned


def _gin(tmp_path):
  model_dir = str(tmp_path / 'run')
  text = tiny_teacher_gin(model_dir) + (
      f'Training.checkpoint_every_steps = 4\nTraining.nan_rollbacks = {ROLLBACKS}\n')
  return write(tmp_path / 'teacher.gin', text), model_dir


def _assert_every_checkpoint_finite(model_dir):
  prefixes = [p[:-len('.index')] for p in glob.glob(os.path.join(model_dir, 'ckpt-*.index'))]
  assert prefixes
  for prefix in prefixes:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
      value = reader.get_tensor(name)
      if np.issubdtype(np.asarray(value).dtype, np.floating):
        assert np.all(np.isfinite(value)), f'{prefix}: {name} is not finite'


def test_one_non_finite_step_is_rolled_back_and_the_run_finishes(
    tmp_path, monkeypatch, capsys):
  poisoned = _poison(monkeypatch, times=1)
  gin_file, model_dir = _gin(tmp_path)
  results = run.run([gin_file])
  assert int(poisoned.numpy()) == 1
  out = capsys.readouterr().out
  assert 'rolling back to' in out and 'ckpt-4' in out and 'rollback 1 of 2' in out
  assert results['global_step'] == results['train_steps'] == 8
  assert np.isfinite(results['top1'])
  _assert_every_checkpoint_finite(model_dir)


def test_a_loss_that_stays_non_finite_stops_with_exit_3(tmp_path, monkeypatch, capsys):
  _poison(monkeypatch, times=10**6)
  gin_file, model_dir = _gin(tmp_path)
  assert cli.main(['run', '--gin', gin_file]) == Diverged.exit_code == 3
  captured = capsys.readouterr()
  assert captured.out.count('rolling back to') == ROLLBACKS
  errors = [l for l in captured.err.splitlines() if l.startswith('fmx: error:')]
  assert len(errors) == 1 and 'Traceback' not in captured.err
  assert f'after {ROLLBACKS} rollbacks' in errors[0] and 'Optimizer.learning_rate' in errors[0]
  assert not os.path.exists(os.path.join(model_dir, 'results.json'))
  _assert_every_checkpoint_finite(model_dir)
  # The last good checkpoint is the one the run can resume from.
  assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-4')


def test_all_finite_checks_model_and_optimizer_variables():
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  from fmx.training import recovery  # pylint: disable=g-import-not-at-top
  weight, slot = tf.Variable([1.0, 2.0]), tf.Variable([0.0])
  trainer = SimpleNamespace(model=SimpleNamespace(weights=[weight]),
                            optimizer=SimpleNamespace(variables=lambda: [slot, tf.Variable(3)]))
  assert recovery.all_finite(trainer)
  slot.assign([np.inf])
  assert not recovery.all_finite(trainer)
  slot.assign([0.0])
  weight.assign([1.0, np.nan])
  assert not recovery.all_finite(trainer)
