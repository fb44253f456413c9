"""The packages that register entries, imported before gin parses a file.

gin knows a configurable only once its module has been imported, and a
registry lists only the entries whose modules ran. The list lives here, not
in fmx.registry, because every one of these packages imports the registry:
so the registry stays a leaf that anything can import.
"""


def load_all() -> None:
  """Imports every module that registers entries (cheap after the first call)."""
  # pylint: disable=g-import-not-at-top,unused-import
  import fmx.augmentations  # noqa: F401
  import fmx.backbones  # noqa: F401
  import fmx.data  # noqa: F401
  import fmx.grid  # noqa: F401  (Grid.axes may sit in any gin file)
  import fmx.losses  # noqa: F401
  import fmx.tuning  # noqa: F401  (Tune.space may sit in any gin file)
  import fmx.tasks  # noqa: F401
  import fmx.training  # noqa: F401
