"""Model Garden tasks: supervised teacher training and distillation."""

from fmx.tasks import distillation  # noqa: F401
from fmx.tasks import teacher  # noqa: F401
