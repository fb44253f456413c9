"""Finding a split's files from a pattern, local or gs://, with clear errors.

A pattern may hold `{split}`, replaced by the split's name without its slice:
`/data/pets/{split}/*.tfrec` reads `/data/pets/train/*.tfrec` for the split
'train[:90%]'. Without `{split}`, every split reads the same files and only
the slice tells them apart.
"""

from typing import List

import tensorflow as tf

from fmx.data import network
from fmx.data.source import split_name
from fmx.errors import UserError

SPLIT_PLACEHOLDER = '{split}'


def for_split(pattern: str, split: str) -> str:
  """`pattern` with `{split}` replaced by the name of `split`."""
  return pattern.replace(SPLIT_PLACEHOLDER, split_name(split))


def glob(pattern: str, split: str, key: str) -> List[str]:
  """Sorted files matching `pattern` for `split`; UserError if none.

  `key` is the gin key that set the pattern, e.g. 'tfrecords.file_pattern'.
  """
  expanded = for_split(pattern, split)
  network.require_cloud_storage(expanded, key)
  try:
    files = sorted(tf.io.gfile.glob(expanded))
  except tf.errors.OpError as e:
    raise UserError(f'{key} = {pattern!r}: {expanded!r} (split {split!r}) '
                    f'cannot be listed ({e.message}). Check the path and your '
                    'access to it.') from None
  if not files:
    raise UserError(
        f'{key} = {pattern!r} matches no files for split {split!r} (looked '
        f'for {expanded!r}). Check the path; {SPLIT_PLACEHOLDER} in it is '
        "replaced by the split's name (e.g. train, validation, test).")
  return files
