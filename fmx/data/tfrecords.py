"""The original implementation's TFRecords: JPEG `image` and int64 `class`.

Its files hold shards of 128 examples, images pre-resized to 384x384, named
like `train/train_pets37-0-128.tfrec`, `validation/...`, `test/...`; they
load as they are:

    Data.train_dataset = 'tfrecords'
    tfrecords.file_pattern = 'gs://bucket/pets37/{split}/*.tfrec'
    tfrecords.num_classes = 37

(gin/data/pets37_tfrecords.gin holds the rest.) `image_key` / `label_key`
name other features; any image format TensorFlow decodes works.

TFRecord files have no index, so a split's records are counted once, when it
is opened: every record is read and its label parsed, but no image is decoded
(decoding is what costs). The same pass proves the files readable and every
label inside [0, num_classes) before any model is built.
"""

import dataclasses
import struct
import sys
from typing import List, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf

from fmx.data import decoding, files
from fmx.data.source import Source, checked_class_names, slice_bounds, split_name
from fmx.errors import UserError
from fmx.registry import DATASETS

_KEY = 'tfrecords'
# Placeholder label of a record without the label feature, while counting.
_MISSING = -(2 ** 62)
_READ_BUFFER = 8 << 20  # bytes: long sequential reads, e.g. from gs://
_SKIP_HINT = ('or set Data.skip_corrupt = True to skip and count corrupt '
              'records')


@dataclasses.dataclass
class _FileStats:
  """What counting one file found."""
  records: int                 # readable records
  missing_labels: int = 0      # records without an int64 label
  low: int = 0                 # smallest and largest label present
  high: int = -1
  damaged_at: Optional[int] = None  # index of the first unreadable record
  damage: str = ''
  lost: int = 0                # records at and after damaged_at


def _parse_label(record, label_key: str):
  parsed = tf.io.parse_single_example(record, {
      label_key: tf.io.FixedLenFeature([], tf.int64, default_value=_MISSING)})
  return parsed[label_key]


def _count_in_parallel(paths: List[str], label_key: str) -> dict:
  """{file index: _FileStats} for the files that count without an error."""
  big, small = tf.constant(2 ** 62, tf.int64), tf.constant(-2 ** 62, tf.int64)

  def count(state, label):
    records, missing, low, high = state
    present = tf.not_equal(label, _MISSING)
    return (records + 1, missing + tf.cast(~present, tf.int64),
            tf.where(present, tf.minimum(low, label), low),
            tf.where(present, tf.maximum(high, label), high))

  def count_file(index, path):
    labels = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER).map(
        lambda record: _parse_label(record, label_key))
    zero = tf.constant(0, tf.int64)
    return index, labels.reduce((zero, zero, big, small), count)

  counted = tf.data.Dataset.from_tensor_slices(
      (tf.range(len(paths), dtype=tf.int64), paths)).map(
          count_file, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  stats = {}
  for index, (records, missing, low, high) in counted.as_numpy_iterator():
    stats[int(index)] = _FileStats(int(records), int(missing), int(low),
                                   int(high))
  return stats


def _label_of(record: bytes, label_key: str) -> Tuple[Optional[int], str]:
  """(label, '') or (None, what is wrong with the record)."""
  try:
    example = tf.train.Example.FromString(record)
  except Exception:  # pylint: disable=broad-except
    return None, 'is not a tf.train.Example'
  features = example.features.feature
  if label_key not in features or len(features[label_key].int64_list.value) != 1:
    found = ', '.join(f'{k!r} ({features[k].WhichOneof("kind")})'
                      for k in sorted(features)) or 'none'
    return None, (f'has no int64 {label_key!r} feature (its features: '
                  f'{found}); set {_KEY}.label_key / image_key to your names')
  return int(features[label_key].int64_list.value[0]), ''


def _scan(path: str, label_key: str, stop_at=None) -> Tuple[_FileStats, list]:
  """Reads one file record by record: its stats and [(index, problem)].

  `stop_at(index, label, problem)` ends the scan at the record for which it
  returns True (label None and problem set for a record without one).
  """
  stats, problems = _FileStats(records=0, low=2 ** 62, high=-2 ** 62), []
  iterator = iter(tf.data.TFRecordDataset(path))
  while True:
    try:
      record = next(iterator)
    except StopIteration:
      break
    except tf.errors.DataLossError as e:
      stats.damaged_at, stats.damage = stats.records, e.message.split('[')[0]
      stats.lost = max(1, _framed_records(path) - stats.records)
      break
    label, problem = _label_of(record.numpy(), label_key)
    if problem:
      stats.missing_labels += 1
      problems.append((stats.records, problem))
    else:
      stats.low, stats.high = min(stats.low, label), max(stats.high, label)
    if stop_at and stop_at(stats.records, label, problem):
      break
    stats.records += 1
  return stats, problems


def _framed_records(path: str) -> int:
  """Records in a file by their length headers alone (CRCs not checked)."""
  count, offset = 0, 0
  with tf.io.gfile.GFile(path, 'rb') as f:
    size = f.size()
    while offset + 12 <= size:  # length (8 bytes) + its CRC (4)
      f.seek(offset)
      (length,) = struct.unpack('<Q', f.read(8))
      offset += 12 + length + 4  # + data + its CRC
      if offset > size:
        break
      count += 1
  return count


def _count(paths: List[str], label_key: str) -> List[_FileStats]:
  stats = _count_in_parallel(paths, label_key)
  # Files that failed to count are damaged (or hold records that are no
  # tf.train.Example): read them record by record to say where and why.
  for index in sorted(set(range(len(paths))) - set(stats)):
    stats[index], _ = _scan(paths[index], label_key)
  return [stats[index] for index in range(len(paths))]


def _check(paths, stats, split, num_classes, label_key, skip_corrupt) -> None:
  """UserErrors for damaged files, records without labels, labels out of range."""
  for path, file_stats in zip(paths, stats):
    if file_stats.damaged_at is not None and not skip_corrupt:
      raise UserError(
          f'TFRecord file {path!r} (split {split!r}) is damaged at record '
          f'{file_stats.damaged_at}: {file_stats.damage}. Copy or re-create '
          f'the file, {_SKIP_HINT}.')
    if file_stats.missing_labels and not skip_corrupt:
      _, problems = _scan(path, label_key, stop_at=lambda i, _, p: bool(p))
      index, problem = problems[0]
      raise UserError(f'record {index} of TFRecord file {path!r} (split '
                      f'{split!r}) {problem}. Fix the file, {_SKIP_HINT}.')
    if file_stats.records > file_stats.missing_labels and (
        file_stats.low < 0 or file_stats.high >= num_classes):
      out_of_range = lambda i, label, p: label is not None and not (
          0 <= label < num_classes)
      scanned, _ = _scan(path, label_key, stop_at=out_of_range)
      label = scanned.low if scanned.low < 0 else scanned.high
      raise UserError(
          f'record {scanned.records} of TFRecord file {path!r} (split '
          f'{split!r}) has label {label}, outside [0, {num_classes}) set by '
          f'{_KEY}.num_classes. Set num_classes to the number of classes of '
          'the data, or fix the labels.')
  if sum(s.records for s in stats) == 0:
    raise UserError(f'the {len(paths)} TFRecord file(s) for split {split!r} '
                    f'(e.g. {paths[0]!r}) hold no readable record; check '
                    f'{_KEY}.file_pattern and the files.')
  if sum(s.records - s.missing_labels for s in stats) == 0:
    raise UserError(f'no record of the TFRecord files for split {split!r} '
                    f'(e.g. {paths[0]!r}) has a readable int64 {label_key!r} '
                    f'label; check {_KEY}.label_key and the files.')


def _decode_fn(image_key: str, label_key: str, channels: int):
  features = {image_key: tf.io.FixedLenFeature([], tf.string),
              label_key: tf.io.FixedLenFeature([], tf.int64)}

  def decode(record):
    parsed = tf.io.parse_single_example(record, features)
    return {'image': decoding.decode_image(parsed[image_key], channels),
            'label': parsed[label_key]}
  return decode


@DATASETS.register(denylist=('split', 'skip_corrupt'))
def tfrecords(split: str, file_pattern: str = gin.REQUIRED,
              num_classes: int = gin.REQUIRED, channels: int = 3,
              image_key: str = 'image', label_key: str = 'class',
              class_names: Optional[Sequence[str]] = None,
              skip_corrupt: bool = False) -> Source:
  """TFRecords of encoded images + int64 labels, e.g. the original's files.

  Args:
    file_pattern: glob of the files; may contain {split}, e.g. '/data/{split}/*.tfrec'.
    num_classes: labels run from 0 to num_classes - 1.
    channels: 3 (RGB) or 1 (grayscale): images are decoded to this many.
    image_key: feature holding the encoded (JPEG/PNG) image.
    label_key: int64 feature holding the class.
    class_names: label k's name, label 0 first; None: 'class 0', 'class 1', ...
  """
  names = checked_class_names(class_names, num_classes, f'{_KEY}.class_names')
  paths = files.glob(file_pattern, split, f'{_KEY}.file_pattern')
  stats = _count(paths, label_key)
  _check(paths, stats, split, num_classes, label_key, skip_corrupt)
  readable = np.array([s.records for s in stats], np.int64)
  ends = np.cumsum(readable)
  _, start, stop = slice_bounds(split, {split_name(split): int(ends[-1])})

  lost = 0
  for path, file_stats, end in zip(paths, stats, ends):
    # A damaged record ends what TFRecordDataset can read of its file.
    if file_stats.damaged_at is not None and (start < end <= stop or
                                              start == end == 0):
      lost += file_stats.lost
      print(f'fmx: skipping {file_stats.lost} unreadable record(s) of {path} '
            f'from record {file_stats.damaged_at} on ({file_stats.damage}).',
            file=sys.stderr)

  records = tf.data.Dataset.from_tensor_slices((paths, readable)).flat_map(
      lambda path, count: tf.data.TFRecordDataset(
          path, buffer_size=_READ_BUFFER).take(count))
  records = records.skip(start).take(stop - start)
  starts, ends_tensor = tf.constant(ends - readable), tf.constant(ends)
  paths_tensor = tf.constant(paths)

  def describe(position):
    index = position + start
    file_index = tf.searchsorted(ends_tensor, [index], side='right')[0]
    return tf.strings.join(['record ', tf.strings.as_string(
        index - starts[file_index]), ' of ', paths_tensor[file_index]])

  name = f'tfrecords:{split}'
  dataset, corrupt = decoding.decode_examples(
      records, stop - start, _decode_fn(image_key, label_key, channels),
      describe, source_name=name, channels=channels, skip_corrupt=skip_corrupt)
  if corrupt is not None:
    corrupt.lost_before_decoding = lost
  return Source(name=name, dataset=dataset, num_examples=stop - start,
                num_classes=num_classes, channels=channels,
                decoded_bytes=_decoded_bytes(records, stop - start, image_key,
                                             channels),
                corrupt=corrupt, class_names=names)


def _decoded_bytes(records, count: int, image_key: str, channels: int):
  """count x the decoded size of the first image (the original's are all 384 px)."""
  try:
    first = next(iter(records.take(1)))
    encoded = tf.io.parse_single_example(
        first, {image_key: tf.io.FixedLenFeature([], tf.string)})[image_key]
    if bool(tf.io.is_jpeg(encoded)):  # reads the header only
      height, width = tf.image.extract_jpeg_shape(encoded).numpy()[:2]
    else:
      height, width = decoding.decode_image(encoded, channels).shape[:2]
  except (tf.errors.OpError, StopIteration):
    return None
  return int(count) * int(height) * int(width) * channels
