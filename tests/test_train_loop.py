"""fmx's compiled loop of training steps (fmx.training.trainer.Trainer) and
its eval step: both have outputs."""

import numpy as np
import pytest
import tensorflow as tf
from official.core import config_definitions as cfg
from official.core import train_utils

from conftest import tiny_student_gin, tiny_teacher_gin, write
from fmx import gin_config
from fmx.tasks.base import TEST_SPLIT
from fmx.training import run
from fmx.training import trainer as trainer_lib


def _trainer(task: str, gin_text: str, tmp_path, evaluate: bool = False):
  gin_config.parse([write(tmp_path / f'{task}.gin', gin_text)], [])
  setup = run.build_setup(task, str(tmp_path / 'run'))
  with setup.strategy.scope():
    trainer = train_utils.create_trainer(setup.params, setup.task, train=True,
                                         evaluate=evaluate,
                                         trainer_cls=trainer_lib.Trainer)
  return setup, trainer


def test_the_compiled_loop_returns_its_last_step_loss(trained_teacher, tmp_path):
  """The loop's output is its last step's loss.

  Kept for speed, not for the value: on CPUs a compiled loop whose steps
  end in variable updates only runs without most of oneDNN's fusions (6%
  a step, fmx.training.trainer), so a loop returning nothing again would
  be a silent slowdown.
  """
  _, trainer = _trainer('distillation', tiny_student_gin(
      str(tmp_path / 'run'), trained_teacher[0]), tmp_path)
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


@pytest.mark.parametrize('task', ['teacher', 'distillation'])
def test_an_eval_step_returns_its_number_of_real_examples(trained_teacher,
                                                          tmp_path, task):
  """Each compiled eval step returns how many examples of its batch are real.

  Kept for speed, like the training loop's output: an eval step without
  outputs ran ~9% slower on CPUs (fmx.tasks.base.validation_logs). The
  count leaves out the padding of the split's last batch.
  """
  model_dir = str(tmp_path / 'run')
  gin_text = (tiny_teacher_gin(model_dir) if task == 'teacher'
              else tiny_student_gin(model_dir, trained_teacher[0]))
  setup, trainer = _trainer(task, gin_text, tmp_path, evaluate=True)
  # TINY_DATA's test split is 'test[:100]' and its eval batches hold 32:
  # three full batches and one of 4 real examples and 28 of padding.
  dataset = trainer.distribute_dataset(setup.task.build_inputs, cfg.DataConfig(
      is_training=False, input_path=TEST_SPLIT, global_batch_size=32))
  step = tf.function(trainer.eval_step)
  iterator = iter(dataset)
  with setup.strategy.scope():
    counts = [float(tf.add_n(step(iterator)['examples'])) for _ in range(4)]
  assert counts == [32.0, 32.0, 32.0, 4.0]
