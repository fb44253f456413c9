"""fmx's compiled loop of training steps (fmx.training.trainer.Trainer)."""

import numpy as np
import tensorflow as tf
from official.core import train_utils

from conftest import tiny_student_gin, write
from fmx import gin_config
from fmx.training import run
from fmx.training import trainer as trainer_lib


def test_the_compiled_loop_returns_its_last_step_loss(trained_teacher, tmp_path):
  """The loop's output is its last step's loss.

  Kept for speed, not for the value: on CPUs a compiled loop whose steps
  end in variable updates only runs without most of oneDNN's fusions (~5%
  a step, fmx.training.trainer), so a loop returning nothing again would
  be a silent slowdown.
  """
  model_dir = str(tmp_path / 'run')
  gin_config.parse([write(tmp_path / 'student.gin', tiny_student_gin(
      model_dir, trained_teacher[0]))], [])
  setup = run.build_setup('distillation', model_dir)
  with setup.strategy.scope():
    trainer = train_utils.create_trainer(setup.params, setup.task, train=True,
                                         evaluate=False,
                                         trainer_cls=trainer_lib.Trainer)
  loop = trainer.create_train_loop_fn()
  iterator = iter(trainer.train_dataset)
  for steps in (1, 2):
    trainer.train_loss.reset_state()
    start = int(trainer.global_step.numpy())
    loss = loop(iterator, tf.constant(steps))
    assert int(trainer.global_step.numpy()) == start + steps
    assert loss.dtype == tf.float32 and np.isfinite(loss.numpy())
    if steps == 1:  # the train/loss metric then holds that one step's loss
      np.testing.assert_allclose(loss.numpy(), trainer.train_loss.result(),
                                 rtol=1e-6)
    else:  # the last step's, not the mean of the loop's steps
      assert abs(float(loss) - float(trainer.train_loss.result())) > 0
