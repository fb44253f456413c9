"""Orbit actions for a person watching a run: a progress bar and images/s.

Orbit calls a train action with each loop's outputs (every steps_per_loop
steps); this one advances a tqdm bar and writes `images_per_second` to the
same TensorBoard folder as the trainer's own scalars, so the curves overlay.
"""

import os
import time

from absl import logging
import orbit.controller
import tensorflow as tf
# A notebook bar inside Jupyter, plain text lines in a terminal.
from tqdm import auto as tqdm


def quiet_library_logs() -> None:
  """Only the progress bar and eval lines: TF, absl and Orbit's chatter off."""
  logging.set_verbosity(logging.WARNING)
  # TF's Python warnings (deprecations, deferred checkpoint restores of
  # optimizer hyperparameters) mean nothing to a user; --verbose shows them.
  tf.get_logger().setLevel('ERROR')
  # Orbit's controller print()s every loop's metrics besides logging them;
  # the progress bar and eval lines already show them.
  orbit.controller._log = logging.info  # pylint: disable=protected-access


def bar_label(task_name: str, model_dir: str) -> str:
  """'distillation student': the task, then the run folder's name if it differs."""
  folder = os.path.basename(os.path.normpath(model_dir))
  return task_name if folder == task_name else f'{task_name} {folder}'


class ProgressBar:
  """tqdm bar over global steps, with loss and images/s in its postfix."""

  def __init__(self, total_steps: int, global_batch_size: int,
               summary_dir: str, description: str):
    self._total_steps = total_steps
    self._batch = global_batch_size
    self._summary_dir = summary_dir
    self._description = description
    self._global_step = self._bar = self._writer = None
    self._measured_loops = 0

  def attach(self, global_step: tf.Variable) -> None:
    """Starts the bar at the (possibly restored) step the run resumes from."""
    self._global_step = global_step
    self._last_step = int(global_step.numpy())
    self._last_time = time.perf_counter()
    if self._last_step:
      tqdm.tqdm.write(f'resuming from the checkpoint at step {self._last_step}')
    self._writer = tf.summary.create_file_writer(self._summary_dir)
    self._bar = tqdm.tqdm(total=self._total_steps, initial=self._last_step,
                          desc=self._description, unit='step',
                          dynamic_ncols=True, mininterval=1.0)

  def __call__(self, output) -> None:
    step = int(self._global_step.numpy())
    now = time.perf_counter()
    images_per_second = (step - self._last_step) * self._batch / max(
        now - self._last_time, 1e-9)
    postfix = {'img/s': f'{images_per_second:.0f}'}
    if output and 'training_loss' in output:
      postfix['loss'] = f'{float(output["training_loss"]):.4f}'
    self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(step - self._last_step)
    if self._measured_loops:  # the first loop's time includes tracing
      with self._writer.as_default(step=step):
        tf.summary.scalar('images_per_second', images_per_second)
    self._measured_loops += 1
    self._last_step, self._last_time = step, now

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._writer.flush()


class EvalPrinter:
  """Prints one line per evaluation, above the progress bar."""

  def __init__(self, bar: ProgressBar):
    self._bar = bar

  def __call__(self, output) -> None:
    values = ', '.join(f'{name} {float(value):.4f}'
                       for name, value in sorted(output.items()))
    tqdm.tqdm.write(f'eval @ step {int(self._bar._global_step.numpy())}: {values}')  # pylint: disable=protected-access
