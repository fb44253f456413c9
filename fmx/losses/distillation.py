"""Distillation losses: `loss(teacher_logits, student_logits) -> [batch]`.

Computed in float32 from log-softmax, so extreme logits (|x| ~ 1e4) give
finite values rather than NaN from log(0).
"""

import tensorflow as tf

from fmx.registry import LOSSES

_FRAMEWORK_ARGS = ('teacher_logits', 'student_logits')


def _log_softmax(logits, temperature=1.0):
  return tf.nn.log_softmax(tf.cast(logits, tf.float32) / temperature)


@LOSSES.register(denylist=_FRAMEWORK_ARGS)
def kl(teacher_logits, student_logits, temperature: float = 1.0,
       scale_by_temperature_squared: bool = False):
  """KL(teacher || student) of softmax(logits / T), per example.

  Args:
    temperature: T, dividing both models' logits (the original used 2).
    scale_by_temperature_squared: multiply by T^2 (Hinton et al.; the original did not).
  """
  teacher_log_p = _log_softmax(teacher_logits, temperature)
  student_log_p = _log_softmax(student_logits, temperature)
  per_example = tf.reduce_sum(
      tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
  if scale_by_temperature_squared:
    # Hinton et al.: keeps gradient magnitudes comparable across temperatures.
    per_example *= temperature ** 2
  return per_example


@LOSSES.register(denylist=_FRAMEWORK_ARGS)
def soft_cross_entropy(teacher_logits, student_logits, temperature: float = 1.0):
  """Cross-entropy H(teacher, student) of softmax(logits / T), per example.

  Args:
    temperature: T, dividing both models' logits.
  """
  teacher_p = tf.exp(_log_softmax(teacher_logits, temperature))
  return -tf.reduce_sum(teacher_p * _log_softmax(student_logits, temperature), -1)


@LOSSES.register(denylist=_FRAMEWORK_ARGS)
def hard(teacher_logits, student_logits, label_smoothing: float = 0.0):
  """Cross-entropy on the teacher's argmax, optionally label-smoothed.

  Smoothing as big_vision's: the target keeps 1 - ls and each of the K - 1
  other classes gets ls / (K - 1) (not ls / K on every class).

  Args:
    label_smoothing: share of the target spread over the other classes.
  """
  num_classes = tf.shape(teacher_logits)[-1]
  targets = tf.one_hot(tf.argmax(teacher_logits, -1), num_classes)
  if label_smoothing:
    others = tf.cast(num_classes - 1, tf.float32)
    targets = targets * (1.0 - label_smoothing) + (
        1.0 - targets) * label_smoothing / others
  return -tf.reduce_sum(targets * _log_softmax(student_logits), -1)


@LOSSES.register(denylist=_FRAMEWORK_ARGS)
def mse_logits(teacher_logits, student_logits):
  """Mean squared difference of the logits over classes, per example."""
  difference = tf.cast(student_logits, tf.float32) - tf.cast(teacher_logits, tf.float32)
  return tf.reduce_mean(tf.square(difference), -1)


@LOSSES.register(denylist=_FRAMEWORK_ARGS)
def mse_log_softmax(teacher_logits, student_logits):
  """Mean squared difference of the log-softmax outputs, per example."""
  return tf.reduce_mean(
      tf.square(_log_softmax(student_logits) - _log_softmax(teacher_logits)), -1)
