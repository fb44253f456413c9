"""Supervised losses for the teacher task: `loss(labels, logits) -> [batch]`."""

import tensorflow as tf

from fmx.registry import LOSSES


@LOSSES.register(denylist=('labels', 'logits'))
def cross_entropy(labels, logits, label_smoothing: float = 0.0):
  """Softmax cross-entropy against integer labels (teacher training).

  Args:
    label_smoothing: share of the target spread evenly over all classes.
  """
  num_classes = tf.shape(logits)[-1]
  targets = tf.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / tf.cast(
        num_classes, tf.float32)
  return tf.nn.softmax_cross_entropy_with_logits(
      targets, tf.cast(logits, tf.float32))


cross_entropy.takes_labels = True
