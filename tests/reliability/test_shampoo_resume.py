"""A run with Shampoo killed mid-way resumes to the uninterrupted weights.

Shampoo's statistics and inverse roots are slot variables, so they are
checkpointed like Adam's moments; the roots are recomputed on the step
counter, which is restored too. A tiny distillation (deterministic mode)
with a root recompute every 3 steps is SIGKILLed after its first periodic
checkpoint, rerun, and compared tensor by tensor (model and optimizer) with
an uninterrupted run of the same config.
"""

import signal

import numpy as np

from conftest import tiny_student_gin, write
from test_interruptions import _finish, _latest_step, _run_until, _weights

STEPS = 32  # 2 epochs of 256 images at batch 16
SHAMPOO = """
Training.epochs = 2
Training.checkpoint_every_steps = 8
Optimizer.name = 'shampoo'
Optimizer.shampoo = {'preconditioning_compute_steps': 3,
                     'start_preconditioning_step': 2, 'block_size': 16}
"""


def _gin(tmp_path, teacher_dir, name):
  model_dir = str(tmp_path / name)
  return write(tmp_path / f'{name}.gin',
               tiny_student_gin(model_dir, teacher_dir) + SHAMPOO), model_dir


def test_killed_shampoo_run_resumes_bit_identically(trained_teacher, tmp_path):
  reference_gin, reference_dir = _gin(tmp_path, trained_teacher[0], 'uninterrupted')
  _finish(reference_gin)
  gin_file, model_dir = _gin(tmp_path, trained_teacher[0], 'killed')
  code, _, _ = _run_until(gin_file, model_dir, 8, signal.SIGKILL, seed=0)
  assert code == -signal.SIGKILL
  assert _latest_step(model_dir) < STEPS
  assert 'resuming from the checkpoint at step' in _finish(gin_file)
  expected, got = _weights(reference_dir), _weights(model_dir)
  assert int(got['global_step/.ATTRIBUTES/VARIABLE_VALUE']) == STEPS
  # The optimizer's Shampoo slots are in the checkpoint and compared too.
  assert any('statistics_' in name for name in got)
  assert expected.keys() == got.keys()
  different = [n for n in expected if not np.array_equal(expected[n], got[n])]
  assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'
