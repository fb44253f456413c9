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
of the same replica, but its coefficient is the step's, the same on every
replica. See fmx.augmentations.mixup.

The stream does not depend on how many workers read it: step s takes
positions [s * G, (s + 1) * G) of it (G the global batch), on one device or
on many; with several input pipelines (one per worker) each reads the whole
stream and keeps its replicas' share (see train_examples). Evaluation pads
the last batches instead, so every replica gets whole batches and each
example weighs exactly once (see eval_dataset_fn).
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


@gin.configurable
class Data:
  """Which data a run trains and evaluates on, and how it is augmented.

  Args:
    train_dataset: the dataset entry trained on (`fmx list datasets`).
    eval_dataset: the dataset entry evaluated on.
    image_size: side in pixels of the images the models see.
    train_split: split of train_dataset, e.g. 'train' or 'train[:90%]'.
    eval_split: split evaluated during the run.
    test_split: split evaluated at the end (results.json).
    train_augmentations: per-image augmentations for training, in order.
    eval_augmentations: per-image steps for evaluation, e.g. ['central_crop'].
    mixup: batch augmentation ('mixup_roll', ...) or None.
    mixup_scope: 'replica' (each replica's batch) or 'global' (the global batch).
    value_range: (low, high) the pixels are scaled to.
    shuffle_buffer: examples in the shuffle buffer.
    cache: 'auto' (decoded splits that fit in memory), 'memory' or 'none'.
    skip_corrupt: skip (and count) undecodable images instead of stopping.
    check_held_out: at start, refuse a test split sharing an image (by pixel
      digest) with the training or validation split.
  """

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
               skip_corrupt: bool = False,
               check_held_out: bool = False):
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
    # Compare the test images with the training and validation images at
    # start-up (fmx.data.held_out); reads every image once.
    self.check_held_out = bool(check_held_out)

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
  def mixup_seed(seed, step):
    """The seed of step `step`'s MixUp, shared by all replicas in both scopes."""
    return tf.stack([tf.cast(seed, tf.int64) + 1, tf.cast(step, tf.int64)])

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

  def _mix_batch(self, seed, step, batch):
    # MixUp stays within the value range: it is a convex combination.
    images, _ = self.mixup(batch['image'], self.mixup_seed(seed, step))
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

  def train_examples(self, seed: int,
                     input_context: Optional[tf.distribute.InputContext] = None,
                     source: Optional[Source] = None,
                     start: int = 0,
                     batch_size: Optional[int] = None) -> tf.data.Dataset:
    """(position, example): the shuffled, repeated stream before augmentation.

    The stream is a pure function of (seed, position): epoch e is the split
    shuffled with a seed of its own, so the stream from `start` on (a resumed
    run's) is exactly the tail of the stream from 0, without replaying it.

    With P > 1 input pipelines (multi-worker: one per worker) every pipeline
    reads the same stream and keeps its replicas' positions: pipeline i feeds
    the i-th of the P chunks of each global batch (chunks of G / P =
    `batch_size` x its replicas). So a run's global batches, pixels and
    positions are those of a one-device run, whatever the number of workers,
    at the cost of each worker reading (and caching) the whole split rather
    than 1/P of it. `start` counts this pipeline's own examples
    (FmxTask.start_batch x `batch_size`).
    """
    source = source or self.source('train')
    dataset = self._maybe_cache(self._checked(source), source)
    count = max(1, source.num_examples)
    # A buffer larger than the split would only hold repeated copies of its
    # decoded images (10,000 x 384 px is 4.4 GB for a 1,020-image split).
    buffer = min(self.shuffle_buffer, count)

    def shuffled(index, epoch):
      # The seed is a tensor here; with the global seed 0 (a run's seed 0)
      # tf.random's seed pairing would test it as a Python bool, so this
      # function's graph gets a fixed graph-level seed of its own.
      tf.random.set_seed(1)
      return tf.data.Dataset.zip(epoch).shuffle(
          buffer, seed=seed * 1_000_003 + index, reshuffle_each_iteration=False)

    pipelines = input_context.num_input_pipelines if input_context else 1
    start *= pipelines  # this pipeline's examples -> positions of the stream
    first_epoch, offset = divmod(start, count)
    # Epochs are windows of one repeat() of the cache, so one reader at a
    # time fills, then reads, the cache (concurrent readers of a cache that a
    # corrupt image left half-filled block for ever).
    epochs = dataset.repeat().window(count).enumerate()
    stream = epochs.skip(first_epoch).flat_map(shuffled)
    stream = stream.skip(offset).enumerate(start)
    if pipelines == 1:
      return stream
    if not batch_size:
      raise ValueError('train_examples needs batch_size with several pipelines')
    chunk = batch_size * input_context.num_replicas_in_sync // pipelines
    index = input_context.input_pipeline_id
    return stream.filter(
        lambda position, _: position // chunk % pipelines == index)

  def train_dataset_fn(self, batch_size: int, seed: int,
                       input_context: Optional[tf.distribute.InputContext] = None,
                       source: Optional[Source] = None,
                       start_batch: int = 0) -> tf.data.Dataset:
    """Infinite stream of augmented, MixUp'ed batches of `batch_size`.

    `start_batch` > 0 starts at that batch of this pipeline's stream (a
    resumed run): the same pixels an uninterrupted run would have seen from
    there on.
    """
    dataset = self.train_examples(seed, input_context, source,
                                  start=start_batch * batch_size,
                                  batch_size=batch_size)
    dataset = dataset.map(functools.partial(self.augment_example, seed),
                          num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if self.mixup is not None and self.mixup_scope == 'replica':
      # Seeded by the step the batch is for, so every replica mixes its batch
      # with the step's coefficient (one per global batch, as the original
      # and big_vision drew it), on one worker or several.
      replicas = input_context.num_replicas_in_sync if input_context else 1
      dataset = dataset.enumerate(start_batch).map(
          lambda index, batch: self._mix_batch(
              seed, _replica_batch_index(index, input_context) // replicas,
              batch),
          num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)

  def eval_dataset_fn(self, batch_size: int,
                      input_context: Optional[tf.distribute.InputContext] = None,
                      source: Optional[Source] = None,
                      pad: bool = False) -> tf.data.Dataset:
    """One pass over the eval split; the last batch may be smaller.

    With `pad`, every batch is whole instead: each example gets a 'weight'
    of 1 and the split is padded with examples of weight 0 (all-zero
    images) to a whole number of global batches, so every replica gets the
    same number of whole batches (static shapes, as TPUs need; no replica
    starved of data) and metrics weighted by 'weight' count each example
    exactly once, under any strategy.
    """
    source = source or self.source('eval')
    dataset = self._checked(source)
    pipelines = input_context.num_input_pipelines if input_context else 1
    if pipelines > 1:
      dataset = dataset.shard(pipelines, input_context.input_pipeline_id)
    zero_seed = tf.zeros([2], tf.int64)
    dataset = dataset.map(
        lambda ex: {'image': self._apply(self.eval_ops, ex['image'], zero_seed),
                    'label': ex['label']},
        num_parallel_calls=AUTOTUNE)
    dataset = self._maybe_cache(dataset, source)
    if not pad:
      return dataset.batch(batch_size).prefetch(AUTOTUNE)
    replicas = input_context.num_replicas_in_sync if input_context else 1
    global_batch = batch_size * replicas
    steps = -(-source.num_examples // global_batch)
    # Every pipeline's shard holds at most ceil(N / P) examples, which fits
    # in steps x G / P: each pipeline pads its own shard to that length.
    length = steps * global_batch // pipelines
    padding = tf.data.Dataset.from_tensors({
        'image': tf.zeros([self.image_size, self.image_size, source.channels]),
        'label': tf.zeros([], dataset.element_spec['label'].dtype),
        'weight': tf.zeros([])}).repeat()
    dataset = dataset.map(lambda ex: dict(ex, weight=tf.ones([])))
    dataset = dataset.concatenate(padding).take(length)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def _replica_batch_index(index, input_context=None):
  """The run-wide index of a pipeline's `index`-th per-replica batch.

  A pipeline feeding L of R replicas gives them its batches in turn: its
  batch j is that of replica (its first + j % L) at step j // L, which is
  batch (j // L) x R + its first + j % L of all replicas' batches.
  """
  if not input_context or input_context.num_input_pipelines == 1:
    return index
  replicas = input_context.num_replicas_in_sync
  local = replicas // input_context.num_input_pipelines
  first = input_context.input_pipeline_id * local
  return index // local * replicas + first + index % local


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
