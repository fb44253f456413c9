"""Every backbone entry builds at a tiny shape and returns float32 logits."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from fmx.registry import BACKBONES


@pytest.mark.parametrize('name', BACKBONES.names())
def test_backbone_builds_and_outputs_logits(name, tmp_path):
  # 32 px is the smallest input every tf_keras.applications model accepts.
  model = BACKBONES.get(name)(num_classes=7, input_shape=(32, 32, 3))
  assert isinstance(model, tf_keras.Model)
  images = tf.random.uniform([2, 32, 32, 3])
  logits = model(images, training=False)
  assert logits.shape == (2, 7) and logits.dtype == tf.float32
  # Logits, not probabilities: rows need not sum to one.
  assert not np.allclose(tf.reduce_sum(logits, -1).numpy(), 1.0)
  # Save and restore through a checkpoint gives identical outputs.
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / 'ckpt'))
  clone = BACKBONES.get(name)(num_classes=7, input_shape=(32, 32, 3))
  tf.train.Checkpoint(model=clone).read(path).assert_existing_objects_matched()
  np.testing.assert_allclose(clone(images, training=False).numpy(),
                             logits.numpy(), rtol=1e-5, atol=1e-5)


def test_frozen_backbone_has_no_trainable_weights():
  model = BACKBONES.get('simple_cnn')(num_classes=3, input_shape=(16, 16, 1))
  assert model.trainable_weights
  model.trainable = False
  assert not model.trainable_weights
