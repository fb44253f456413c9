"""Distilling from several teachers at once: how their outputs are combined.

`distillation.ensemble` says what the student learns from n teachers'
logits z_1..z_n (per example, at the loss's temperature T):

- 'mean_probabilities' (default, the usual ensemble): the student matches
  p = mean_i softmax(z_i / T). fmx passes the loss the logits
  T * log(p), whose softmax at temperature T is exactly p.
- 'mean_logits': the student matches the teachers' mean logits mean_i z_i
  (a geometric mean of their probabilities; sharper where they agree).
- 'sum_losses': big_vision's distillation trainer: the sum over teachers of
  loss(z_i, student). For the KL loss this has the gradient of n times
  'mean_probabilities' (cross-entropy is linear in the target; the two
  differ by the teachers' entropies, a constant), so it is that rule with an
  n-times larger loss: with Adam the scale hardly matters, with SGD it
  multiplies the learning rate. For other losses (hard, mse) it is its own rule.

Two identical teachers give exactly the single teacher's loss under both
mean rules, and twice it under 'sum_losses'.

The ensemble *as a classifier* (its top-1, the student's agreement with it,
KL at temperature 1 in the eval) is its mean logits under 'mean_logits' and
its mean probabilities at temperature 1 otherwise (big_vision's
teacher_ensemble evaluator).
"""

import inspect
import re
from typing import Callable, List, Sequence

import gin
import tensorflow as tf
import tf_keras

from fmx.errors import UserError
from fmx.registry import LOSSES

RULES = ('mean_probabilities', 'mean_logits', 'sum_losses')


def check_rule(rule: str) -> str:
  if rule not in RULES:
    raise UserError(f'distillation.ensemble = {rule!r}; use one of {list(RULES)} '
                    "('mean_probabilities': the teachers' averaged probabilities; "
                    "'mean_logits': their averaged logits; 'sum_losses': one "
                    "loss per teacher, summed, as big_vision).")
  return rule


def teacher_names(paths: Sequence[str]) -> List[str]:
  """Short, unique metric names for teachers: their folders' base names.

  'runs/demo/teacher' -> 'teacher'; a TF-Hub handle's last word that is not
  a version number; duplicates get '_2', '_3', ...
  """
  names = []
  for path in paths:
    parts = [p for p in re.split(r'[/\\]+', path.rstrip('/')) if p]
    words = [p for p in parts if not p.isdigit()] or parts or ['teacher']
    name = re.sub(r'[^\w.-]+', '_', words[-1]) or 'teacher'
    base, count = name, 2
    while name in names:
      name, count = f'{base}_{count}', count + 1
    names.append(name)
  return names


def _mean_probabilities_logits(stacked, temperature: float):
  """T * log(mean_i softmax(z_i / T)): logits whose softmax at T is the mean."""
  log_p = tf.nn.log_softmax(tf.cast(stacked, tf.float32) / temperature, axis=-1)
  count = tf.cast(tf.shape(stacked)[0], tf.float32)
  return temperature * (tf.reduce_logsumexp(log_p, axis=0) - tf.math.log(count))


def target_logits(stacked, rule: str, temperature: float):
  """The single [batch, classes] target the student matches under a mean rule."""
  if rule == 'mean_logits':
    return tf.reduce_mean(tf.cast(stacked, tf.float32), axis=0)
  return _mean_probabilities_logits(stacked, temperature)


def classifier_logits(stacked, rule: str):
  """The ensemble's own prediction, [batch, classes] (its top-1, agreement, KL)."""
  if rule == 'mean_logits':
    return tf.reduce_mean(tf.cast(stacked, tf.float32), axis=0)
  return _mean_probabilities_logits(stacked, 1.0)


def loss(loss_fn: Callable, stacked, student_logits, rule: str,
         temperature: float):
  """The per-example distillation loss from n teachers' [n, batch, classes] logits."""
  if rule == 'sum_losses':
    return tf.add_n([loss_fn(stacked[i], student_logits)
                     for i in range(stacked.shape[0])])
  return loss_fn(target_logits(stacked, rule, temperature), student_logits)


def loss_temperature(loss_name: str) -> float:
  """The temperature the configured loss divides logits by (1 if it has none)."""
  try:
    return float(gin.query_parameter(f'losses.{loss_name}.temperature'))
  except ValueError:
    pass  # not bound: the function's default
  parameter = inspect.signature(LOSSES.get(loss_name)).parameters.get('temperature')
  return float(parameter.default) if parameter is not None else 1.0


class EnsembleLogits(tf_keras.layers.Layer):
  """[n teachers' logits] -> the ensemble's classifier logits (classifier_logits)."""

  def __init__(self, rule: str = 'mean_probabilities', **kwargs):
    super().__init__(**kwargs)
    self.rule = rule

  def call(self, logits):
    return classifier_logits(tf.stack(logits), self.rule)

  def get_config(self):
    return dict(super().get_config(), rule=self.rule)


def keras_ensemble(models: Sequence[tf_keras.Model], names: Sequence[str],
                   rule: str, input_shape) -> tf_keras.Model:
  """One float32 Keras model of the ensemble: crop in, combined logits out.

  Each teacher gets its own bilinear resize of the crop, as in training
  (fmx.tasks.base.fit_to_model); what exports and fmx.api's Run.teacher use.
  """
  inputs = tf_keras.Input(input_shape)
  outputs = []
  for model, name in zip(models, names):
    size = tuple(model.input_shape[1:3])
    images = inputs
    if None not in size and size != tuple(input_shape[:2]):
      images = tf_keras.layers.Resizing(*size, name=f'resize_{name}')(inputs)
    # Wrapped under the teacher's metric name: seeds of one architecture
    # share their model's name, and a Keras model's layer names must differ.
    own_input = tf_keras.Input(model.input_shape[1:])
    wrapped = tf_keras.Model(own_input, model(own_input), name=f'teacher_{name}')
    outputs.append(wrapped(images))
  return tf_keras.Model(inputs, EnsembleLogits(rule, name='ensemble')(outputs),
                        name='teacher_ensemble')
