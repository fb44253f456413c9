"""Non-finite training: roll back to the last good checkpoint, boundedly.

After every loop of `steps_per_loop` steps (Orbit train actions run before
the controller's checkpoint save), the loss and every model and optimizer
variable are checked. A non-finite loss, a loss above the bound, or a
non-finite variable restores the latest checkpoint with Model Garden's
`RecoveryAction`; the loop is then retrained on the next batches of the
stream. So a checkpoint never holds a non-finite value, and a run whose
loss stays non-finite stops with `Diverged` after `max_rollbacks`.
"""

import functools
import math

import tensorflow as tf
from official.core import actions

from fmx.errors import Diverged


def _floating_variables(trainer):
  optimizer_variables = trainer.optimizer.variables
  if callable(optimizer_variables):  # legacy optimisers: a method
    optimizer_variables = optimizer_variables()
  return [v for v in list(trainer.model.weights) + list(optimizer_variables)
          if v.dtype.is_floating]


def all_finite(trainer) -> bool:
  """True if every float variable of the model and optimizer is finite.

  One compiled check of all of them and one result back to the host:
  checked one by one, eagerly, they took ~0.4 s after every loop for a
  4M-parameter student on a 2-core CPU (docs/performance.md).
  """
  refs = tuple(v.ref() for v in _floating_variables(trainer))
  return bool(_finite_check(refs)())


# A few runs' checks (a new one when optimiser slots appear at the first
# step); each holds its variables.
@functools.lru_cache(maxsize=4)
def _finite_check(refs):
  variables = [ref.deref() for ref in refs]
  return tf.function(lambda: tf.reduce_all(tf.stack(
      [tf.reduce_all(tf.math.is_finite(v)) for v in variables])))


class NonFiniteCondition:
  """An Orbit condition: True when the last loop must be rolled back."""

  def __init__(self, trainer, model_dir: str, max_rollbacks: int,
               loss_upper_bound: float):
    self.trainer = trainer
    self.model_dir = model_dir
    self.max_rollbacks = max_rollbacks
    self.loss_upper_bound = loss_upper_bound
    self.rollbacks = 0

  def __call__(self, outputs) -> bool:
    loss = float(outputs.get('training_loss', 0.0))
    step = int(self.trainer.global_step.numpy())
    if math.isfinite(loss) and loss <= self.loss_upper_bound:
      if all_finite(self.trainer):
        return False
      what = 'a model or optimizer variable became non-finite'
    else:
      what = f'the training loss was {loss:g}'
    checkpoint = tf.train.latest_checkpoint(self.model_dir)
    self.rollbacks += 1
    if self.rollbacks > self.max_rollbacks:
      raise Diverged(
          f'{what} in the {self.trainer.config.trainer.steps_per_loop} steps '
          f'before step {step}, after {self.max_rollbacks} rollbacks to the last '
          f'good checkpoint; stopped. The checkpoints in {self.model_dir} hold '
          f'only finite values (latest: {checkpoint}). Lower '
          'Optimizer.learning_rate, set Optimizer.clipnorm or lengthen '
          'Optimizer.warmup_steps, then rerun to resume; or raise '
          'Training.nan_rollbacks.')
    print(f'fmx: warning: {what} before step {step}; rolling back to '
          f'{checkpoint} (rollback {self.rollbacks} of {self.max_rollbacks}).',
          flush=True)
    return True


def rollback_action(trainer, model_dir: str, max_rollbacks: int,
                    loss_upper_bound: float, checkpoint_manager_fn):
  """The Orbit train action: Model Garden's RecoveryAction under our condition.

  `checkpoint_manager_fn` returns the runner's checkpoint manager, which
  exists only once the runner that takes this action is built.
  """
  condition = NonFiniteCondition(trainer, model_dir, max_rollbacks,
                                 loss_upper_bound)

  def act(outputs):
    if condition(outputs):
      actions.RecoveryAction(checkpoint_manager_fn())(outputs)

  act.condition = condition
  return act
