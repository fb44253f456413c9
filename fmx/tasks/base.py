"""What the teacher and distillation tasks share: inputs, splits, settings.

A Model Garden Task owns everything specific to a problem; the trainer and the
Orbit loop know nothing about it. Both fmx tasks read their data and settings
from gin through `Data` and `Training`, and add one hook for fmx's runner:
`results(eval_logs)`, the task's fields of results.json.
"""

from typing import Callable, Optional

import gin
import tensorflow as tf
import tf_keras
from absl import logging
from official.core import base_task

from fmx.data import held_out
from fmx.data.pipeline import Data
from fmx.data.source import Source, splits_overlap
from fmx.registry import BACKBONES
from fmx.training.settings import Optimizer, Training

# `DataConfig.input_path` tells build_inputs which split an eval pipeline reads.
EVAL_SPLIT, TEST_SPLIT = 'eval', 'test'


class FmxTask(base_task.Task):
  """Base of fmx's tasks: builds inputs from `Data`, keeps run settings."""

  def __init__(self, params, logging_dir: Optional[str] = None,
               name: Optional[str] = None):
    super().__init__(params, logging_dir=logging_dir, name=name)
    self.data = Data()
    self.training = Training()
    self.clip_gradients = Optimizer().clip  # grads -> clipped grads
    # The step a resumed run starts from (set by the runner before inputs are
    # built): its data stream starts there, exactly where the checkpoint left.
    self.start_step = 0
    # fmx.training.preemption.Preemption, set by the runner: its stop
    # request ends the loop of steps at the next step (fmx.training.trainer).
    self.preemption = None
    # Resolve the splits now, so a missing dataset, split or data_dir fails
    # before any model is built or anything is written.
    self.sources = {which: self.data.source(which)
                    for which in ('train', EVAL_SPLIT, TEST_SPLIT)}
    if self.data.check_held_out:
      held_out.check_held_out(self.sources)
    warn_if_test_overlaps_training(self.data)

  @property
  def num_classes(self) -> int:
    return self.sources['train'].num_classes

  @property
  def input_shape(self):
    return (self.data.image_size, self.data.image_size,
            self.sources['train'].channels)

  def build_inputs(self, params, input_context=None) -> tf.data.Dataset:
    batch_size = (input_context.get_per_replica_batch_size(params.global_batch_size)
                  if input_context else params.global_batch_size)
    if params.is_training:
      return self.train_inputs(batch_size, self.sources['train'], input_context)
    # Padded to whole global batches, with a 'weight' per example that the
    # metrics count by: exact under any number of replicas and workers.
    return self.data.eval_dataset_fn(batch_size, input_context,
                                     self.sources[params.input_path or EVAL_SPLIT],
                                     pad=True)

  def train_inputs(self, batch_size: int, source: Source,
                   input_context=None) -> tf.data.Dataset:
    """Training batches from `source` (tasks may feed their models otherwise)."""
    return self.data.train_dataset_fn(batch_size, self.training.seed,
                                      input_context, source,
                                      self.start_batch(input_context))

  def start_batch(self, input_context=None) -> int:
    """The first batch this input pipeline feeds, for a run at `start_step`.

    Each step takes one batch per replica; a pipeline feeds
    replicas / pipelines of them.
    """
    if input_context is None:
      return self.start_step
    return self.start_step * (input_context.num_replicas_in_sync //
                              input_context.num_input_pipelines)

  def build_backbone(self, entry_name: str, scope: str) -> tf_keras.Model:
    """Builds a backbone entry with the gin parameters of `scope/entry`."""
    with gin.config_scope(scope):
      return BACKBONES.get(entry_name)(num_classes=self.num_classes,
                                       input_shape=self.input_shape)

  def results(self, eval_logs) -> dict:
    raise NotImplementedError


def warn_if_test_overlaps_training(data: Data) -> bool:
  """Warns (and returns True) when the test split shares training examples."""
  if data.train_dataset != data.eval_dataset or not splits_overlap(
      data.train_split, data.test_split):
    return False
  logging.warning(
      'Data.test_split = %r overlaps Data.train_split = %r of the same dataset '
      '%r: the final test result is then measured partly on training images. '
      "Hold out a slice instead, e.g. Data.train_split = 'train[:85%%]' and "
      "Data.test_split = 'train[85%%:]'.", data.test_split, data.train_split,
      data.train_dataset)
  return True


def apply_gradients(tape: tf.GradientTape, loss, model: tf_keras.Model,
                    optimizer, clip: Optional[Callable] = None) -> None:
  """One update from this replica's mean loss; the same on every replica.

  Gradients are summed over replicas of each replica's loss / n (so the
  update is that of the mean over the global batch), then clipped by `clip`
  (Optimizer.clip), then applied. float16 runs scale the loss (Model Garden
  wraps the optimiser in a dynamic LossScaleOptimizer); bfloat16 needs no
  scaling.
  """
  context = tf.distribute.get_replica_context()
  num_replicas = context.num_replicas_in_sync if context else 1
  scaling = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  with tape:  # resumes recording: the gradient flows through these ops too
    scaled = (loss + tf.add_n(model.losses or [0.0])) / num_replicas
    if scaling:
      scaled = optimizer.get_scaled_loss(scaled)
  grads = tape.gradient(scaled, model.trainable_variables)
  if scaling:
    grads = optimizer.get_unscaled_gradients(grads)
  if context and num_replicas > 1:
    grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
  if clip is not None:
    grads = clip(grads)
  optimizer.apply_gradients(zip(grads, model.trainable_variables),
                            experimental_aggregate_gradients=False)
  if scaling:
    # A step whose gradients overflow at the current loss scale is skipped,
    # but Keras still counts it in `iterations`, which the learning-rate
    # schedule and Adam's bias correction read: take it back, so both follow
    # the updates actually applied. (The run's length is Orbit's global step.)
    applied = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
    optimizer.iterations.assign_sub(tf.cast(tf.logical_not(applied), tf.int64))


def validation_logs(inputs) -> dict:
  """What a validation step returns: the batch's number of real examples.

  The metrics hold the results (the loss is the 'validation_loss' metric);
  this count is returned so that the compiled eval step has an output. On
  CPUs a compiled step without outputs, all its ops ending in variable
  updates, runs without most of oneDNN's fusions (as the training loop
  did: fmx.training.trainer.Trainer.create_train_loop_fn); with one, an
  eval step took 9% less time (`python benchmarks/step_parts.py`). Orbit
  drops the value (fmx's tasks aggregate no logs).
  """
  weights = inputs.get('weight')
  if weights is None:  # no padding: every example is real
    return {'examples': tf.cast(tf.shape(inputs['image'])[0], tf.float32)}
  return {'examples': tf.reduce_sum(tf.cast(weights > 0, tf.float32))}


def update_mean(metric: tf_keras.metrics.Mean, values, weights=None) -> None:
  """Adds per-example `values` to a Mean; examples of weight 0 add nothing.

  Eval batches are padded to whole global batches (weight 0): their values
  are zeroed too, so a NaN on a padding image cannot reach the sum. The
  Mean's `count` is then the number of real examples seen.
  """
  if weights is None:
    metric.update_state(values)
    return
  weights = tf.cast(weights, values.dtype)
  metric.update_state(tf.where(weights > 0, values, tf.zeros_like(values)),
                      sample_weight=weights)


def fit_to_model(model: tf_keras.Model, images):
  """`images` resized to the model's static input size, if it has another.

  Teacher and student may run at different resolutions (the paper's teacher
  at 384 px, student at 224 px): each gets its own resize of the same crop.
  """
  try:
    size = tuple(model.input_shape[1:3])
  except AttributeError:  # a subclassed model: no static input size to fit
    return images
  if None in size or tuple(images.shape[1:3]) == size:
    return images
  return tf.image.resize(images, size)


def top1_correct(labels, logits):
  """1.0 where argmax(logits) == label, per example."""
  return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int64),
                          tf.cast(labels, tf.int64)), tf.float32)


def top_k_correct(labels, logits, k: int):
  """1.0 where the label is among the k highest logits, per example."""
  k = tf.minimum(k, tf.shape(logits)[-1])
  return tf.cast(tf.math.in_top_k(tf.cast(labels, tf.int32),
                                  tf.cast(logits, tf.float32), k), tf.float32)


def to_float(logs) -> dict:
  return {k: float(v) for k, v in logs.items()}
