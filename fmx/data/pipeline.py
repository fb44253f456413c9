"""The input pipeline: dataset entry -> cache -> shuffle -> augment -> batch -> MixUp.

Randomness is stateless and keyed by position: image k of the (repeated)
training stream gets seed (run seed, k) and batch b gets (run seed, b), so the
same config and seed always produce the same pixels, whatever the number of
parallel calls. Teacher and student later receive the very same batch.
"""

import functools
from typing import Optional, Sequence

import gin
import tensorflow as tf

from fmx.augmentations.mixup import MIXUPS
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
               value_range: Sequence[float] = (0.0, 1.0),
               shuffle_buffer: int = 10_000,
               cache: str = 'auto'):
    self.train_dataset = train_dataset
    self.eval_dataset = eval_dataset
    self.image_size = image_size
    self.train_split = train_split
    self.eval_split = eval_split
    self.test_split = test_split
    self.train_ops = [_image_op(name) for name in train_augmentations]
    self.eval_ops = [_image_op(name) for name in eval_augmentations]
    self.mixup = AUGMENTATIONS.get(mixup) if mixup else None
    if mixup and mixup not in MIXUPS:
      raise UserError(f'Data.mixup = {mixup!r} is a per-image augmentation; '
                      f'use one of {list(MIXUPS)} or None.')
    self.value_range = tuple(value_range)
    self.shuffle_buffer = shuffle_buffer
    if cache not in ('auto', 'memory', 'none'):
      raise UserError(f"Data.cache = {cache!r}; use 'auto', 'memory' or 'none'.")
    self.cache = cache

  def source(self, which: str) -> Source:
    """The 'train', 'eval' (periodic validation) or 'test' (final) split."""
    name = self.train_dataset if which == 'train' else self.eval_dataset
    split = {'train': self.train_split, 'eval': self.eval_split,
             'test': self.test_split}[which]
    # The scope lets gin set e.g. `train/tfds.data_dir` apart from eval's.
    with gin.config_scope('train' if which == 'train' else 'eval'):
      return DATASETS.get(name)(split=split)

  def _to_model_range(self, image):
    low, high = self.value_range
    return image * (high - low) + low

  def _apply(self, ops, image, seed):
    image = tf.image.convert_image_dtype(image, tf.float32)
    for index, op in enumerate(ops):
      image = op(image, tf.random.experimental.stateless_fold_in(seed, index),
                 size=self.image_size)
    # Every pipeline ends at image_size, whatever its ops (a resize to the
    # size an image already has returns it unchanged).
    image = tf.image.resize(image, (self.image_size, self.image_size))
    return self._to_model_range(image)

  def _augment_example(self, seed, position, example):
    image_seed = tf.stack([tf.cast(seed, tf.int64), position])
    return {'image': self._apply(self.train_ops, example['image'], image_seed),
            'label': example['label']}

  def _mix_batch(self, seed, batch_index, batch):
    # MixUp stays within the value range: it is a convex combination.
    batch_seed = tf.stack([tf.cast(seed, tf.int64) + 1, batch_index])
    images, _ = self.mixup(batch['image'], batch_seed)
    return {'image': images, 'label': batch['label']}

  def _maybe_cache(self, dataset, source):
    if self.cache == 'memory' or (self.cache == 'auto' and _bytes_estimate(
        source) <= CACHE_LIMIT_BYTES):
      return dataset.cache()
    return dataset

  def train_dataset_fn(self, batch_size: int, seed: int,
                       input_context: Optional[tf.distribute.InputContext] = None,
                       source: Optional[Source] = None) -> tf.data.Dataset:
    """Infinite stream of augmented, MixUp'ed batches of `batch_size`."""
    source = source or self.source('train')
    dataset = source.dataset
    if input_context and input_context.num_input_pipelines > 1:
      dataset = dataset.shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id)
      seed = seed * 1_000_003 + input_context.input_pipeline_id
    dataset = self._maybe_cache(dataset, source)
    dataset = dataset.repeat().shuffle(
        self.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    dataset = dataset.enumerate().map(
        functools.partial(self._augment_example, seed),
        num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if self.mixup is not None:
      dataset = dataset.enumerate().map(
          functools.partial(self._mix_batch, seed), num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)

  def eval_dataset_fn(self, batch_size: int,
                      input_context: Optional[tf.distribute.InputContext] = None,
                      source: Optional[Source] = None) -> tf.data.Dataset:
    """One pass over the eval split; the last batch may be smaller."""
    source = source or self.source('eval')
    dataset = source.dataset
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
  spec = source.dataset.element_spec['image']
  height, width = (spec.shape[0] or 384), (spec.shape[1] or 384)
  return source.num_examples * height * width * source.channels
