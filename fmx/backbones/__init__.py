"""Backbone entries: `entry(num_classes, input_shape) -> tf_keras.Model` of logits."""

from fmx.backbones import bit_resnet  # noqa: F401
from fmx.backbones import hub  # noqa: F401
from fmx.backbones import keras_applications  # noqa: F401
from fmx.backbones import simple_cnn  # noqa: F401
