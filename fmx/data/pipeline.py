"""The input pipeline: dataset entry -> cache -> shuffle -> augment -> batch -> MixUp.

Randomness is stateless and keyed by position: image k of the (repeated)
training stream gets seed (run seed, k), batch b gets (run seed + 1, b) and
epoch e its own shuffle seed, so the same config and seed always produce the
same pixels, whatever the number of parallel calls, and a resumed run
continues the stream exactly where its checkpoint left it. Teacher and student later receive the very same
batch.

Entries hand over decoded uint8 images; their labels are checked against
num_classes, and a split small enough is cached right after that, so images
are decoded (and checked) once per run and only augmented per epoch.

MixUp runs here, in tf.data, on the batch one input pipeline builds: the
per-replica batch ('replica' scope). Its partners are therefore always images
of the same replica. See fmx.augmentations.mixup.
"""

import functools
import inspect
from typing import Optional, Sequence

import gin
import tensorflow as tf

from fmx.augmentations.mixup import MIXUPS
from fmx.data import decoding
from fmx.data.source import Source
from fmx.errors import UserError
from fmx.registry import AUGMENTATIONS, DATASETS

AUTOTUNE = tf.data.AUTOTUNE

# Below this many decoded bytes a split is cached in memory after decoding:
# Flowers102/Pet37 at 384 px are ~1-3 GB decoded, well within a TPU host's RAM,
# and decoding JPEGs every epoch would otherwise dominate a 1000-epoch run.
CACHE_LIMIT_BYTES = 8 << 30
# Epochs of a training stream: more than any run reaches.
_NEVER = 1 << 40


@gin.configurable
class Data:
  """Which data a run trains and evaluates on, and how it is augmented."""

  def __init__(self,
               train_dataset: str = gin.REQUIRED,
               eval_dataset: str = gin.REQUIRED,
               image_size: int = gin.REQUIRED,
               train_split: str = 'train',
               eval_split: str = 'test',
               test_split: str = 'test',
               train_augmentations: Sequence[str] = ('inception_crop',
                                                     'random_flip'),
               eval_augmentations: Sequence[str] = ('central_crop',),
               mixup: Optional[str] = 'mixup_roll',
               mixup_scope: str = 'replica',
               value_range: Sequence[float] = (0.0, 1.0),
               shuffle_buffer: int = 10_000,
               cache: str = 'auto',
               skip_corrupt: bool = False):
    self.train_dataset = train_dataset
    self.eval_dataset = eval_dataset
    self.image_size = image_size
    self.train_split = train_split
    self.eval_split = eval_split
    self.test_split = test_split
    self.train_augmentations = list(train_augmentations)
    self.train_ops = [_image_op(name) for name in train_augmentations]
    self.eval_ops = [_image_op(name) for name in eval_augmentations]
    self.mixup_name = mixup
    self.mixup = AUGMENTATIONS.get(mixup) if mixup else None
    if mixup and mixup not in MIXUPS:
      raise UserError(f'Data.mixup = {mixup!r} is a per-image augmentation; '
                      f'use one of {list(MIXUPS)} or None.')
    if mixup_scope not in ('replica', 'global'):
      raise UserError(f"Data.mixup_scope = {mixup_scope!r}; use 'replica' (each "
                      "replica's batch, in tf.data) or 'global' (the global "
                      'batch, in the distillation step).')
    self.mixup_scope = mixup_scope
    self.value_range = tuple(value_range)
    self.shuffle_buffer = shuffle_buffer
    if cache not in ('auto', 'memory', 'none'):
      raise UserError(f"Data.cache = {cache!r}; use 'auto', 'memory' or 'none'.")
    self.cache = cache
    self.skip_corrupt = bool(skip_corrupt)

  def source(self, which: str) -> Source:
    """The 'train', 'eval' (periodic validation) or 'test' (final) split."""
    name = self.train_dataset if which == 'train' else self.eval_dataset
    split = {'train': self.train_split, 'eval': self.eval_split,
             'test': self.test_split}[which]
    entry = DATASETS.get(name)
    # Only entries that decode their own files can skip corrupt ones.
    extra = ({'skip_corrupt': self.skip_corrupt}
             if 'skip_corrupt' in inspect.signature(entry).parameters else {})
    # The scope lets gin set e.g. `train/tfds.data_dir` apart from eval's.
    with gin.config_scope('train' if which == 'train' else 'eval'):
      return entry(split=split, **extra)

  def _to_model_range(self, image):
    low, high = self.value_range
    return image * (high - low) + low

  def to_unit_range(self, images):
    """Inverse of the value range mapping: model inputs back to [0, 1]."""
    low, high = self.value_range
    return (images - low) / (high - low)

  @staticmethod
  def op_seed(image_seed, op_index: int):
    """The stateless seed of the `op_index`-th op applied to an image."""
    return tf.random.experimental.stateless_fold_in(image_seed, op_index)

  @staticmethod
  def image_seed(seed, position):
    """The seed of image `position` of the training stream."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])

  @staticmethod
  def mixup_seed(seed, batch_index):
    """The seed of batch `batch_index`'s MixUp."""
    return tf.stack([tf.cast(seed, tf.int64) + 1,
                     tf.cast(batch_index, tf.int64)])

  def _apply(self, ops, image, seed):
    image = tf.image.convert_image_dtype(image, tf.float32)
    for index, op in enumerate(ops):
      image = op(image, self.op_seed(seed, index), size=self.image_size)
    # Every pipeline ends at image_size, whatever its ops (a resize to the
    # size an image already has returns it unchanged).
    image = tf.image.resize(image, (self.image_size, self.image_size))
    return self._to_model_range(image)

  def augment_example(self, seed, position, example):
    return {'image': self._apply(self.train_ops, example['image'],
                                 self.image_seed(seed, position)),
            'label': example['label']}

  def _mix_batch(self, seed, batch_index, batch):
    # MixUp stays within the value range: it is a convex combination.
    images, _ = self.mixup(batch['image'], self.mixup_seed(seed, batch_index))
    return {'image': images, 'label': batch['label']}

  def _maybe_cache(self, dataset, source):
    if self.cache == 'memory' or (self.cache == 'auto' and _bytes_estimate(
        source) <= CACHE_LIMIT_BYTES):
      return dataset.cache()
    return dataset

  def _checked(self, source: Source) -> tf.data.Dataset:
    """The source's examples, with labels checked against num_classes.

    Placed before the cache, so a cached split is checked once.
    """
    if not source.labeled:
      return source.dataset
    num_classes = source.num_classes

    def fail(position, label):
      with tf.control_dependencies([decoding.fail(
          'dataset ', source.name, ' has label ', tf.strings.as_string(label),
          ' at example ', tf.strings.as_string(position),
          f', outside [0, {num_classes}). Check the number of classes set '
          'for the dataset entry, or its labels.')]):
        return tf.identity(label)

    def check(position, example):
      label = example['label']
      valid = tf.logical_and(label >= 0, label < num_classes)
      label = tf.cond(valid, lambda: label, lambda: fail(position, label))
      return dict(example, label=label)  # other keys (e.g. 'index') pass

    return source.dataset.enumerate().map(check)

  def train_seed(self, seed: int,
                 input_context: Optional[tf.distribute.InputContext] = None):
    """The seed of one input pipeline (each pipeline draws its own)."""
    if input_context and input_context.num_input_pipelines > 1:
      return seed * 1_000_003 + input_context.input_pipeline_id
    return seed

  def train_examples(self, seed: int,
                     input_context: Optional[tf.distribute.InputContext] = None,
                     source: Optional[Source] = None,
                     start: int = 0) -> tf.data.Dataset:
    """(position, example): the shuffled, repeated stream before augmentation.

    The stream is a pure function of (seed, position): epoch e is the split
    shuffled with a seed of its own, so the stream from `start` on (a resumed
    run's) is exactly the tail of the stream from 0, without replaying it.
    """
    source = source or self.source('train')
    dataset = self._checked(source)
    count = source.num_examples
    if input_context and input_context.num_input_pipelines > 1:
      pipelines, index = (input_context.num_input_pipelines,
                          input_context.input_pipeline_id)
      dataset = dataset.shard(pipelines, index)
      count = (count - index + pipelines - 1) // pipelines
    dataset = self._maybe_cache(dataset, source)
    count = max(1, count)
    # A buffer larger than the split would only hold repeated copies of its
    # decoded images (10,000 x 384 px is 4.4 GB for a 1,020-image split).
    buffer = min(self.shuffle_buffer, count)
    pipeline_seed = self.train_seed(seed, input_context)

    def epoch(index):
      # The seed is a tensor here; with the global seed 0 (a run's seed 0)
      # tf.random's seed pairing would test it as a Python bool, so this
      # function's graph gets a fixed graph-level seed of its own.
      tf.random.set_seed(1)
      return dataset.shuffle(buffer, seed=pipeline_seed * 1_000_003 + index,
                             reshuffle_each_iteration=False)

    first_epoch, offset = divmod(start, count)
    # The cache is filled by the first epoch's pass and read by the others.
    stream = tf.data.Dataset.range(first_epoch, _NEVER).flat_map(epoch)
    return stream.skip(offset).enumerate(start)

  def train_dataset_fn(self, batch_size: int, seed: int,
                       input_context: Optional[tf.distribute.InputContext] = None,
                       source: Optional[Source] = None,
                       start_batch: int = 0) -> tf.data.Dataset:
    """Infinite stream of augmented, MixUp'ed batches of `batch_size`.

    `start_batch` > 0 starts at that batch of the stream (a resumed run):
    the same pixels an uninterrupted run would have seen from there on.
    """
    dataset = self.train_examples(seed, input_context, source,
                                  start=start_batch * batch_size)
    seed = self.train_seed(seed, input_context)
    dataset = dataset.map(functools.partial(self.augment_example, seed),
                          num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if self.mixup is not None and self.mixup_scope == 'replica':
      dataset = dataset.enumerate(start_batch).map(
          functools.partial(self._mix_batch, seed), num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)

  def eval_dataset_fn(self, batch_size: int,
                      input_context: Optional[tf.distribute.InputContext] = None,
                      source: Optional[Source] = None) -> tf.data.Dataset:
    """One pass over the eval split; the last batch may be smaller."""
    source = source or self.source('eval')
    dataset = self._checked(source)
    if input_context and input_context.num_input_pipelines > 1:
      dataset = dataset.shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id)
    zero_seed = tf.zeros([2], tf.int64)
    dataset = dataset.map(
        lambda ex: {'image': self._apply(self.eval_ops, ex['image'], zero_seed),
                    'label': ex['label']},
        num_parallel_calls=AUTOTUNE)
    dataset = self._maybe_cache(dataset, source)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def _image_op(name: str):
  if name in MIXUPS:
    raise UserError(f'{name!r} is a batch augmentation and cannot be listed in '
                    f"Data.train_augmentations; set Data.mixup = {name!r}.")
  return AUGMENTATIONS.get(name)


def _bytes_estimate(source: Source) -> int:
  if source.decoded_bytes is not None:
    return source.decoded_bytes
  spec = source.dataset.element_spec['image']
  height, width = (spec.shape[0] or 384), (spec.shape[1] or 384)
  return source.num_examples * height * width * source.channels
