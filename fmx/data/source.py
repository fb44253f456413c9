"""What every dataset entry returns: examples plus the facts a run needs.

A dataset entry is a function `entry(split) -> Source`. Its examples are
`{'image': uint8 [H, W, C], 'label': int64}`, decoded and in a fixed order;
the label is -1 for unlabeled images (distillation never needs labels).

Entries that decode images themselves also accept `skip_corrupt` (set by
`Data.skip_corrupt`, never directly): see fmx.data.decoding.
"""

import dataclasses
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from fmx.data.decoding import CorruptRecords
from fmx.errors import UserError

UNLABELED = -1


@dataclasses.dataclass(frozen=True)
class Source:
  name: str                 # e.g. 'mnist_embedded:train[:90%]', for messages
  dataset: tf.data.Dataset  # decoded examples, finite, in a fixed order
  num_examples: int
  num_classes: int
  channels: int
  labeled: bool = True      # False: every label is UNLABELED (-1)
  # Decoded size of the whole split, when the entry knows better than
  # num_examples x (static or 384 x 384) x channels; decides Data.cache 'auto'.
  decoded_bytes: Optional[int] = None
  # Corrupt records skipped so far, for entries that decode their own files
  # with Data.skip_corrupt on.
  corrupt: Optional[CorruptRecords] = None
  # Label k's name, when the data has names (folders, TFDS, a user's list).
  class_names: Optional[Tuple[str, ...]] = None

  def label_names(self) -> List[str]:
    """Label k's name for every k; 'class k' for data without names."""
    return list(self.class_names or (f'class {k}' for k in range(self.num_classes)))

  def skipped_corrupt(self) -> int:
    """How many corrupt records this split has skipped so far."""
    return self.corrupt.count() if self.corrupt is not None else 0


def checked_class_names(names: Optional[Sequence[str]], num_classes: int,
                        key: str) -> Optional[Tuple[str, ...]]:
  """A user's list of class names as a tuple; UserError unless one per class."""
  if names is None:
    return None
  if len(names) != num_classes:
    raise UserError(f'{key} lists {len(names)} class names but the data has '
                    f'{num_classes} classes; give one name per class, label '
                    '0 first.')
  return tuple(str(name) for name in names)


_SPLIT = re.compile(r'^(?P<name>\w+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$')


def _match(split: str, expected: str):
  match = _SPLIT.match(split.replace(' ', ''))
  if not match:
    raise UserError(
        f'split {split!r} is not valid: expected {expected}, '
        "optionally sliced like 'train[:90%]' or 'train[100:200]'.")
  return match


def split_name(split: str) -> str:
  """The split's name without its slice: 'train' for 'train[:90%]'."""
  return _match(split, 'a name such as train')['name']


def slice_bounds(split: str, sizes: dict) -> Tuple[str, int, int]:
  """Parses 'train', 'train[:90%]' or 'train[100:200]' against split sizes.

  Returns (base split name, start, stop) as absolute indices, with the same
  rounding as TFDS so that 'train[:90%]' means the same images here and there.
  """
  match = _match(split, f'one of {sorted(sizes)}')
  if match['name'] not in sizes:
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


def stratified_split(labels: np.ndarray, test_per_class: int) -> Dict[str, np.ndarray]:
  """{'train', 'test'}: indices of a fixed split, the same on every machine.

  The last `test_per_class` examples of every class are the test set. Fixed
  permutations interleave the classes in both splits, so that a slice such
  as train[90%:] or test[:100] holds every class.
  """
  test = np.concatenate([np.flatnonzero(labels == c)[-test_per_class:]
                         for c in np.unique(labels)])
  train = np.setdiff1d(np.arange(len(labels)), test)
  return {'train': np.random.RandomState(0).permutation(train),
          'test': np.random.RandomState(1).permutation(test)}


def splits_overlap(first: str, second: str, size: int = 1_000_000) -> bool:
  """Whether two splits of one dataset share examples.

  True for the same base split with intersecting slices. `size` is the base
  split's length: percent slices do not depend on it, and index slices are
  compared as they are for any split longer than their indices.
  """
  name = split_name(first)
  if split_name(second) != name:
    return False
  _, first_start, first_stop = slice_bounds(first, {name: size})
  _, second_start, second_stop = slice_bounds(second, {name: size})
  return first_start < second_stop and second_start < first_stop
