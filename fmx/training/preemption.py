"""SIGTERM: stop at the next step boundary, save a checkpoint, exit 75.

Preemptible TPUs and GPUs, and most job schedulers, send SIGTERM some
seconds before killing a job. Python runs signal handlers only between
bytecodes, and a training loop spends minutes inside one tf.function call,
so the handler alone would act only at the end of the loop. Instead the
signal also wakes a watcher thread (through `signal.set_wakeup_fd`), which
sets a TF variable that the loop of steps reads before every step
(fmx.training.trainer): the loop ends early, between two whole steps. The
train action `stop_if_requested` then saves a checkpoint at the step
reached and raises `Preempted` (exit code 75); rerunning the same command
resumes there.

Further SIGTERMs change nothing (a scheduler's SIGKILL still ends the
process, and a kill during a save leaves the previous checkpoint readable).
"""

import contextlib
import os
import signal
import threading

import tensorflow as tf
from absl import logging

from fmx.errors import Preempted


class Preemption:
  """The stop request of one run, and the SIGTERM watcher that sets it."""

  def __init__(self):
    # On the host CPU, outside any strategy scope: read by tf.data.
    with tf.device('/cpu:0'):
      self.requested = tf.Variable(False, trainable=False,
                                   name='fmx_stop_requested')

  @property
  def is_requested(self) -> bool:
    return bool(self.requested.numpy())

  @contextlib.contextmanager
  def watching(self):
    """Turns SIGTERM into a stop request while the block runs."""
    if threading.current_thread() is not threading.main_thread():
      yield  # signals can only be handled in the main thread
      return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd requires it
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: None)
    previous_fd = signal.set_wakeup_fd(write_fd)
    watcher = threading.Thread(target=self._watch, args=(read_fd,),
                               name='fmx-sigterm-watcher', daemon=True)
    watcher.start()
    # Orbit warns when a loop ran fewer steps than asked: here that is the point.
    quiet = _DropShortLoopWarning()
    logging.get_absl_logger().addFilter(quiet)
    try:
      yield
    finally:
      logging.get_absl_logger().removeFilter(quiet)
      signal.set_wakeup_fd(previous_fd)
      signal.signal(signal.SIGTERM, previous_handler)
      os.close(write_fd)  # the watcher reads EOF and ends
      watcher.join(timeout=5)
      os.close(read_fd)

  def _watch(self, read_fd: int) -> None:
    while True:
      try:
        received = os.read(read_fd, 64)  # one byte per signal: its number
      except OSError:
        return
      if not received:
        return
      if signal.SIGTERM in received:
        self.requested.assign(True)


def stop_if_requested(preemption: Preemption, save_checkpoint, model_dir: str):
  """An Orbit train action: after a loop cut short by SIGTERM, save and stop.

  `save_checkpoint()` saves at the current step and returns a description
  of what it saved.
  """
  def act(_):
    if preemption.is_requested:
      saved = save_checkpoint()
      raise Preempted(f'SIGTERM received: {saved} in {model_dir}. Rerun the '
                      'same command to resume from it.')
  return act


class _DropShortLoopWarning:
  def filter(self, record) -> bool:
    return 'did not update `global_step`' not in record.getMessage()
