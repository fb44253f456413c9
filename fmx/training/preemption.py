"""SIGTERM and Ctrl-C: stop at the next step boundary, save a checkpoint, exit.

Preemptible TPUs and GPUs, and most job schedulers, send SIGTERM some
seconds before killing a job; a user at a terminal presses Ctrl-C (SIGINT).
Python runs signal handlers only between bytecodes, and a training loop
spends minutes inside one tf.function call, so the handler alone would act
only at the end of the loop. Instead the signal also wakes a watcher thread
(through `signal.set_wakeup_fd`), which sets a TF variable that the loop of
steps reads before every step (fmx.training.trainer): the loop ends early,
between two whole steps. The train action `stop_if_requested` then saves a
checkpoint at the step reached and raises `Preempted` (exit 75) for SIGTERM
or `Interrupted` (exit 130, as for any Ctrl-C) for SIGINT; rerunning the
same command resumes at that step.

Under multi-worker training every worker must stop at the same step, since
steps and saves are collective: the loop then sums the workers' stop flags
(one scalar all-reduce per step) and every worker stops when any was
signalled, so a scheduler may signal one machine or all of them.

Further SIGTERMs change nothing (a scheduler's SIGKILL still ends the
process). A second Ctrl-C aborts at once, unsaved (exit 130): the latest
checkpoint is intact, since TF lists a checkpoint only once it is complete.
"""

import contextlib
import os
import signal
import sys
import threading

import tensorflow as tf
from absl import logging

from fmx.errors import Interrupted, Preempted

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
  """The stop request of one run, and the signal watcher that sets it.

  `across_workers`: the run has several workers, which must agree on the
  step they stop at (see fmx.training.trainer).
  """

  def __init__(self, across_workers: bool = False):
    # On the host CPU, outside any strategy scope: read by tf.data.
    with tf.device('/cpu:0'):
      self.requested = tf.Variable(False, trainable=False,
                                   name='fmx_stop_requested')
    self.across_workers = across_workers
    self.signal = None  # the first signal received: SIGTERM or SIGINT
    self._interrupts = 0

  @property
  def is_requested(self) -> bool:
    return bool(self.requested.numpy())

  @contextlib.contextmanager
  def watching(self):
    """Turns SIGTERM and SIGINT into a stop request while the block runs."""
    if threading.current_thread() is not threading.main_thread():
      yield  # signals can only be handled in the main thread
      return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd requires it
    previous_handlers = {number: signal.signal(number, lambda *_: None)
                         for number in _SIGNALS}
    previous_fd = signal.set_wakeup_fd(write_fd)
    watcher = threading.Thread(target=self._watch, args=(read_fd,),
                               name='fmx-signal-watcher', daemon=True)
    watcher.start()
    # Orbit warns when a loop ran fewer steps than asked: here that is the point.
    quiet = _DropShortLoopWarning()
    logging.get_absl_logger().addFilter(quiet)
    try:
      yield
    finally:
      logging.get_absl_logger().removeFilter(quiet)
      signal.set_wakeup_fd(previous_fd)
      for number, handler in previous_handlers.items():
        signal.signal(number, handler)
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
      for number in received:
        self.receive(number)

  def receive(self, number: int) -> None:
    """Acts on one signal (called by the watcher thread)."""
    if number not in _SIGNALS:
      return
    if number == signal.SIGINT:
      self._interrupts += 1
      if self._interrupts > 1:
        print('\nfmx: second Ctrl-C: aborting now, unsaved; the latest '
              'checkpoint is intact.', file=sys.stderr, flush=True)
        abort()
        return
      print('\nfmx: Ctrl-C: stopping at the next step to save a checkpoint '
            '(press Ctrl-C again to abort at once, unsaved).',
            file=sys.stderr, flush=True)
    if self.signal is None:
      self.signal = signal.Signals(number)
    self.requested.assign(True)


def abort() -> None:
  """Ends the process now (a second Ctrl-C), whatever the main thread does."""
  os._exit(Interrupted.exit_code)  # pylint: disable=protected-access


def stop_if_requested(preemption: Preemption, save_checkpoint, model_dir: str):
  """An Orbit train action: after a loop cut short by a signal, save and stop.

  `save_checkpoint()` saves at the current step and returns (a description
  of what it saved, the step a rerun resumes from).
  """
  def act(_):
    if preemption.is_requested:
      saved, resume_step = save_checkpoint()
      # Without a signal of its own, another worker's stopped this one.
      what = (f'{preemption.signal.name} received' if preemption.signal else
              'another worker of this run received SIGTERM or SIGINT')
      where = ' on every worker' if preemption.across_workers else ''
      error = (Interrupted if preemption.signal == signal.SIGINT
               else Preempted)
      raise error(f'{what}: {saved} in {model_dir}. Rerun the same command'
                  f'{where} to resume from step {resume_step}.')
  return act


class _DropShortLoopWarning:
  def filter(self, record) -> bool:
    return 'did not update `global_step`' not in record.getMessage()
