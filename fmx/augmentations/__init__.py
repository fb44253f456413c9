"""Augmentation entries: per-image crops/flips and batch MixUp variants."""

from fmx.augmentations import crops  # noqa: F401
from fmx.augmentations import mixup  # noqa: F401
