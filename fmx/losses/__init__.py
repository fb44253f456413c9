"""Loss entries: distillation losses compare teacher and student logits;
supervised ones (marked `takes_labels`) compare labels and logits."""

from fmx.losses import distillation  # noqa: F401
from fmx.losses import supervised  # noqa: F401
