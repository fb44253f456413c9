"""Exceptions that end an fmx command with one paragraph and an exit code.

`fmx` prints them as one paragraph on stderr and exits with their code,
without a stack trace: the message itself must say what happened (file, key
or value) and what to do about it.
"""


class StopRun(Exception):
  """A run or command that ends early for a reason fmx can explain."""

  exit_code = 1
  label = 'error'  # printed as 'fmx: <label>: <message>'


class UserError(StopRun):
  """A mistake in the user's configuration, data or command line."""

  exit_code = 2


class Diverged(StopRun):
  """The loss or the weights stayed non-finite after every allowed rollback."""

  exit_code = 3


class Preempted(StopRun):
  """SIGTERM: a checkpoint was saved at a step boundary; rerun to resume.

  75 is sysexits' EX_TEMPFAIL ("try again later"), so job schedulers can
  tell a preempted run (restart it) from a failed one.
  """

  exit_code = 75
  label = 'preempted'


class Interrupted(Preempted):
  """Ctrl-C: a checkpoint was saved at a step boundary; rerun to resume.

  130 is what a shell reports for a process ended by SIGINT.
  """

  exit_code = 130
  label = 'interrupted'
