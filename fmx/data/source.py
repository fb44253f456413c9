"""What every dataset entry returns: examples plus the facts a run needs.

A dataset entry is a function `entry(split) -> Source`. Its examples are
`{'image': uint8 [H, W, C], 'label': int64}`; the label may be -1 for
unlabeled images (distillation never needs labels).
"""

import dataclasses
import re
from typing import Tuple

import tensorflow as tf

from fmx.errors import UserError


@dataclasses.dataclass(frozen=True)
class Source:
  name: str                 # e.g. 'mnist_embedded:train[:90%]', for messages
  dataset: tf.data.Dataset  # undecoded-once examples, finite, in fixed order
  num_examples: int
  num_classes: int
  channels: int


_SPLIT = re.compile(r'^(?P<name>\w+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$')


def slice_bounds(split: str, sizes: dict) -> Tuple[str, int, int]:
  """Parses 'train', 'train[:90%]' or 'train[100:200]' against split sizes.

  Returns (base split name, start, stop) as absolute indices, with the same
  rounding as TFDS so that 'train[:90%]' means the same images here and there.
  """
  match = _SPLIT.match(split.replace(' ', ''))
  if not match or match['name'] not in sizes:
    raise UserError(
        f'split {split!r} is not valid: expected one of {sorted(sizes)}, '
        "optionally sliced like 'train[:90%]' or 'train[100:200]'.")
  size = sizes[match['name']]

  def index(text, default):
    if text is None:
      return default
    value = int(text.rstrip('%'))
    if text.endswith('%'):
      value = int(round(value * size / 100.0))  # TFDS' default rounding
    return max(0, min(size, value + size if value < 0 else value))

  start, stop = index(match['start'], 0), index(match['stop'], size)
  if stop <= start:
    raise UserError(f'split {split!r} selects no examples ({size} in '
                    f'{match["name"]!r}); check the slice bounds.')
  return match['name'], start, stop
