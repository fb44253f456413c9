"""Decoding encoded images once, and what happens to the ones that will not decode.

Entries that read image files (fmx.data.tfrecords, fmx.data.image_folder)
decode here, in parallel and in order, to uint8 [H, W, channels] (channels
fixed, so a grayscale JPEG among RGB ones still has 3). The pipeline caches
the result for small datasets, so every image is decoded once per run.

A record that cannot be decoded (a truncated JPEG, a file that is not an
image or cannot be read, a record without the expected features) is dropped
and noticed as a gap in the record positions that follow:

- by default the gap is an error naming the file (and record index);
- with `Data.skip_corrupt = True` it is skipped, printed once, and counted:
  `CorruptRecords.count()` is the number of distinct records skipped so far,
  which a run reports as `skipped_corrupt`.

The error surfaces where the pipeline is iterated (inside the training loop)
as a tf.errors.InvalidArgumentError; `as_user_error` turns it back into the
one-paragraph UserError it stands for.
"""

import contextlib
import re
import sys
from typing import Callable, Iterable, Optional

import tensorflow as tf

from fmx.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
# Marks fmx's own messages inside TensorFlow's errors, see `as_user_error`.
ERROR_MARKER = 'fmx data error: '
END_MARKER = ' (end of fmx message)'


class CorruptRecords:
  """The distinct records of one split skipped as corrupt, so far."""

  def __init__(self, num_records: int, lost_before_decoding: int = 0):
    # One flag per record, not a counter: without a cache every epoch meets
    # the same corrupt records again, and they must be counted once.
    self._skipped = tf.Variable(tf.zeros([max(1, num_records)], tf.bool),
                                trainable=False, name='skipped_corrupt')
    # Records lost before decoding, e.g. the unreadable tail of a damaged
    # TFRecord file, found when the split was opened.
    self.lost_before_decoding = lost_before_decoding

  def mark(self, start, stop):
    """Flags positions [start, stop) as skipped (inside a tf.data function)."""
    positions = tf.reshape(tf.range(start, stop), [-1, 1])
    return self._skipped.scatter_nd_update(
        positions, tf.ones([stop - start], tf.bool))

  def count(self) -> int:
    skipped = int(tf.reduce_sum(tf.cast(self._skipped, tf.int32)))
    return self.lost_before_decoding + skipped


def total_skipped(sources: Iterable) -> int:
  """Corrupt records skipped by a run's sources, each split counted once."""
  # Two sources of one name (e.g. eval and test both 'test') read the same
  # records: count them once.
  counts = {}
  for source in sources:
    counts[source.name] = max(counts.get(source.name, 0),
                              source.skipped_corrupt())
  return sum(counts.values())


def decode_image(encoded, channels: int):
  """JPEG, PNG, GIF (first frame) or BMP bytes -> uint8 [H, W, channels]."""
  image = tf.io.decode_image(encoded, channels=channels, dtype=tf.uint8,
                             expand_animations=False)
  return tf.ensure_shape(image, [None, None, channels])


def decode_examples(records: tf.data.Dataset, num_records: int,
                    decode_fn: Callable, describe: Callable, *,
                    source_name: str, channels: int, skip_corrupt: bool):
  """Decoded examples of `records`, and their CorruptRecords (or None).

  `records` holds exactly `num_records` elements in a fixed order;
  `decode_fn(element) -> {'image', 'label'}` may fail on a corrupt one;
  `describe(position) -> tf.string` names the record at that position
  ('record 5 of gs://b/train-0-128.tfrec', '/data/cat/1.jpg') for messages.
  """
  corrupt = CorruptRecords(num_records) if skip_corrupt else None
  end = tf.constant(num_records, tf.int64)

  def decode_or_nothing(position, element):
    # ignore_errors on a one-element dataset swallows only this element's
    # decoding error. On the whole stream it would also swallow read errors
    # of `records`, and TFRecordDataset retries a missing file forever.
    return tf.data.Dataset.from_tensors((position, element)).map(
        lambda position, element: (position, decode_fn(element))
    ).ignore_errors()

  decoded = records.enumerate().interleave(
      decode_or_nothing, cycle_length=AUTOTUNE, num_parallel_calls=AUTOTUNE,
      deterministic=True)  # one element each: the order stays
  # A last, empty element at position num_records reveals corrupt records at
  # the very end of the split as a gap, like any other.
  sentinel = tf.data.Dataset.from_tensors(
      (end, {'image': tf.zeros([1, 1, channels], tf.uint8),
             'label': tf.constant(-1, tf.int64)}))

  def on_gap(last, position):
    first_missing = last + 1
    if corrupt is None:
      with tf.control_dependencies([fail(
          source_name, ': cannot read or decode ', describe(first_missing),
          '. The file is corrupt or not an image: replace it, or set '
          'Data.skip_corrupt = True to skip corrupt images (a run reports '
          'how many in results.json as skipped_corrupt).')]):
        return tf.constant(0, tf.int64)
    # On a line of its own: a progress bar may hold the current line.
    report = tf.print('\nfmx: skipping', position - first_missing,
                      'corrupt image(s) of', source_name, 'from',
                      describe(first_missing), output_stream=sys.stderr)
    with tf.control_dependencies([corrupt.mark(first_missing, position), report]):
      return tf.constant(0, tf.int64)

  def check(last, element):
    position, example = element
    checked = tf.cond(position > last + 1, lambda: on_gap(last, position),
                      lambda: tf.constant(0, tf.int64))
    with tf.control_dependencies([checked]):
      position = tf.identity(position)
    return position, (position, example)

  examples = decoded.concatenate(sentinel).scan(
      tf.constant(-1, tf.int64), check)
  examples = examples.filter(lambda position, _: position < end).map(
      lambda _, example: example)
  if corrupt is not None:
    # The flags live outside the dataset: checkpointing an iterator must not
    # fail on them (they only feed a report).
    options = tf.data.Options()
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    examples = examples.with_options(options)
  return examples, corrupt


def fail(*parts):
  """Raises, when run, an error carrying an fmx message made of `parts`."""
  message = tf.strings.join([ERROR_MARKER, *parts, END_MARKER])
  return tf.debugging.Assert(False, [message], summarize=1)


def as_user_error(error: Exception) -> Optional[UserError]:
  """The UserError an fmx data check raised inside TensorFlow, else None."""
  match = re.search(re.escape(ERROR_MARKER) + r'(.*?)' + re.escape(END_MARKER),
                    str(error), re.DOTALL)
  return UserError(match[1]) if match else None


@contextlib.contextmanager
def data_errors_as_user_errors():
  """Re-raises a data check that failed inside a TF graph as its UserError."""
  try:
    yield
  except tf.errors.OpError as e:
    user_error = as_user_error(e)
    if user_error is None:
      raise
    raise user_error from None
