"""BatchNorm statistics of short runs, recomputed before each evaluation.

A BatchNorm layer evaluates with moving averages of its batch statistics,
m <- momentum * m + (1 - momentum) * batch, which span the last
~1 / (1 - momentum) steps (10 at simple_cnn's 0.9). That describes the final
weights when those steps are a small part of the run. In a run of a few
dozen steps (a 1-epoch smoke run of the demo: 29) the weights change a lot
within the window, the averages mix statistics of networks that no longer
exist, and the model evaluates at chance (10.8% test top-1 on the demo's
10 classes; 95.0% with the statistics recomputed) although it trains well.

So a run shorter than SHORT_RUN_WINDOWS windows recomputes them (precise
BatchNorm, Wu & Johnson 2021): before each evaluation, the model runs in
training mode on up to STATISTICS_IMAGES training images, and each layer's
moving mean and variance become the plain average over those batches, all
from the current weights. Chosen over a momentum fitted to the run's length,
which cannot help here (the staleness comes from the weights moving, not
from the averages' start), and over a fixed number of extra steps. It keeps:
- exact resume: the batches come from a pipeline of their own, always from
  the start of the training stream, never from the trainer's iterator;
- the training itself: moving statistics do not enter the gradients, so
  every weight follows the same steps with or without it;
- one model: the checkpoint saved after an evaluation holds the statistics
  evaluated, so `fmx eval` and exports agree with results.json;
- long runs (at least 10 windows: 100 steps at momentum 0.9, 1000 at 0.99)
  as they were, bit for bit: nothing is recomputed for them.
"""

import math
from typing import List

import tensorflow as tf
import tf_keras

from fmx.tasks.base import fit_to_model

SHORT_RUN_WINDOWS = 10
STATISTICS_IMAGES = 2048


def batch_norm_layers(model: tf_keras.Model) -> List[tf_keras.layers.Layer]:
  return [layer for layer in model.submodules
          if isinstance(layer, tf_keras.layers.BatchNormalization)]


def is_short(layers, train_steps: int) -> bool:
  """True if a run of train_steps outruns its BatchNorm averages' window."""
  if not layers:
    return False
  # In whole steps: 1 / (1 - 0.9) is 9.999999999999998 in floats.
  window = round(1.0 / (1.0 - max(layer.momentum for layer in layers)))
  return train_steps < SHORT_RUN_WINDOWS * window


def recompute(model: tf_keras.Model, layers, batches) -> None:
  """Sets the layers' moving statistics to their average over `batches`.

  Batch i is given weight 1 / (i + 1) (momentum i / (i + 1)), which makes
  each moving value the running mean of the batches' values.
  """
  momenta = [layer.momentum for layer in layers]
  try:
    for index, batch in enumerate(batches):
      for layer in layers:
        layer.momentum = index / (index + 1)
      model(fit_to_model(model, batch['image']), training=True)
  finally:
    for layer, momentum in zip(layers, momenta):
      layer.momentum = momentum


def statistics_batches(task, batch_size: int) -> tf.data.Dataset:
  """The training batches the statistics are computed from, every time.

  From the stream's start whatever step the run resumed at (`start_step`),
  so every invocation of a run uses the same batches.
  """
  resumed_at, task.start_step = task.start_step, 0
  try:
    dataset = task.train_inputs(batch_size, task.sources['train'])
  finally:
    task.start_step = resumed_at
  images = min(STATISTICS_IMAGES, task.sources['train'].num_examples)
  return dataset.take(max(1, math.ceil(images / batch_size)))


def recompute_before_evals(trainer, task, strategy, eval_interval: int,
                           train_steps: int, global_batch_size: int):
  """A train action recomputing BatchNorm statistics of a short run before
  each evaluation (a no-op for other runs)."""
  layers = batch_norm_layers(trainer.model)
  if not is_short(layers, train_steps):
    return lambda _: None
  # Each replica normalises its own share of the global batch in training.
  batches = statistics_batches(
      task, max(1, global_batch_size // strategy.num_replicas_in_sync))

  def act(_):
    step = int(trainer.global_step.numpy())
    if step % eval_interval == 0 or step == train_steps:
      with strategy.scope():
        recompute(trainer.model, layers, batches)
  return act
