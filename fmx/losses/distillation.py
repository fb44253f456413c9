"""Distillation losses: `loss(teacher_logits, student_logits) -> [batch]`.

Computed in float32 from log-softmax, so extreme logits (|x| ~ 1e4) give
finite values rather than NaN from log(0).
"""

import tensorflow as tf

from fmx.registry import LOSSES

_FRAMEWORK_ARGS = ('teacher_logits', 'student_logits')


@LOSSES.register(denylist=_FRAMEWORK_ARGS)
def kl(teacher_logits, student_logits, temperature: float = 1.0,
       scale_by_temperature_squared: bool = False):
  """KL(teacher || student) of softmax(logits / T), per example."""
  teacher_log_p = tf.nn.log_softmax(tf.cast(teacher_logits, tf.float32) / temperature)
  student_log_p = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature)
  per_example = tf.reduce_sum(
      tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
  if scale_by_temperature_squared:
    # Hinton et al.: keeps gradient magnitudes comparable across temperatures.
    per_example *= temperature ** 2
  return per_example
