"""The one exception type for a user's mistake.

`fmx` prints a UserError as one paragraph and exits non-zero, without a stack
trace: the message itself must say what is wrong (file, key or value) and what
to do about it.
"""


class UserError(Exception):
  """A mistake in the user's configuration, data or command line."""

  exit_code = 2
