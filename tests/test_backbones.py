"""Every backbone entry builds at a tiny shape and returns float32 logits."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from fmx.registry import BACKBONES


# Entries this generic test cannot build cheaply, and where each is covered.
SKIPPED = {
    'bit_r101x3': 'full R101x3 took 57 s here (built twice, 1.5 GB checkpoint); '
                  'tests/test_bit_resnet.py checks its parameter count',
    'bit_r152x2': 'full R152x2 took 38 s here (built twice, 0.9 GB checkpoint); '
                  'tests/test_bit_resnet.py checks its parameter count',
    'hub': 'its default handle is a TF-Hub download; '
           'tests/test_hub_teacher.py builds it from a local SavedModel',
}


@pytest.mark.parametrize('name', [
    pytest.param(name, marks=pytest.mark.skip(reason=SKIPPED[name]))
    if name in SKIPPED else name for name in BACKBONES.names()])
def test_backbone_builds_and_outputs_logits(name, tmp_path):
  # 32 px is the smallest input every tf_keras.applications model accepts.
  model = BACKBONES.get(name)(num_classes=7, input_shape=(32, 32, 3))
  assert isinstance(model, tf_keras.Model)
  images = tf.random.uniform([2, 32, 32, 3])
  # Random values everywhere (BiT's head starts at zero, which would make
  # the restore check below hold for any weights).
  rng = np.random.RandomState(0)
  model.set_weights([rng.normal(0, 0.05, w.shape).astype(w.dtype) if w.size
                     else w for w in model.get_weights()])
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
