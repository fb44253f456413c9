"""A plain VGG-style CNN: the embedded demo's teacher and student.

Small enough to train on a 2-core CPU in a minute, and built only from stock
tf_keras layers so its architecture round-trips through `model.to_json()`
(which is how a distillation run rebuilds a teacher from the teacher's run).
"""

from typing import Sequence, Tuple

import tf_keras

from fmx.registry import BACKBONES


@BACKBONES.register(denylist=('num_classes', 'input_shape'))
def simple_cnn(num_classes: int, input_shape: Tuple[int, int, int],
               widths: Sequence[int] = (32, 64, 128),
               convs_per_stage: int = 2,
               batch_norm: bool = True,
               dropout: float = 0.0,
               batch_norm_momentum: float = 0.9,
               name: str = 'simple_cnn') -> tf_keras.Model:
  """VGG-style CNN: stages of 3x3 convs + max-pool, global pool, dense logits.

  Args:
    widths: filters of each stage's convolutions; one stage per value.
    convs_per_stage: 3x3 convolutions in each stage.
    batch_norm: BatchNormalization after each convolution.
    dropout: dropout rate before the logits (0: none).
    batch_norm_momentum: momentum of BatchNorm's moving statistics.
    name: the Keras model's name.
  """
  inputs = tf_keras.Input(shape=input_shape, name='image')
  x = inputs
  for stage, width in enumerate(widths):
    for conv in range(convs_per_stage):
      x = tf_keras.layers.Conv2D(width, 3, padding='same',
                                 use_bias=not batch_norm,
                                 name=f'stage{stage}_conv{conv}')(x)
      if batch_norm:
        # Momentum 0.9, not Keras' 0.99: runs of a few hundred steps would
        # otherwise evaluate with moving statistics still near their init.
        x = tf_keras.layers.BatchNormalization(
            momentum=batch_norm_momentum, name=f'stage{stage}_bn{conv}')(x)
      x = tf_keras.layers.ReLU()(x)
    if stage < len(widths) - 1:
      x = tf_keras.layers.MaxPool2D(name=f'stage{stage}_pool')(x)
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  if dropout:
    x = tf_keras.layers.Dropout(dropout)(x)
  # Logits stay float32 under mixed precision: softmax and KL need the range.
  logits = tf_keras.layers.Dense(num_classes, dtype='float32', name='logits')(x)
  return tf_keras.Model(inputs, logits, name=name)
