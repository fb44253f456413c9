"""The pixel range a backbone's pretrained weights expect, owned by the backbone.

fmx's pipeline feeds models images in `Data.value_range` ([0, 1] by default).
Pretrained weights were trained on one range of their own: the official BiT
`.npz` weights on [-1, 1] (big_transfer's input pipeline; big_vision's
`value_range(-1, 1)`), TF-Hub BiT modules on [0, 1] (they convert inside). A
backbone that loads such weights starts with `to_expected_range`, a fixed
affine layer from Data.value_range to the range its weights expect, so the
weights always see their range whatever Data says; the layer is part of the
model, hence of its model.json, its checkpoints' model and its exports.
Backbones trained from scratch have no such layer: they learn on what they get.
"""

import inspect
from typing import Tuple

import gin
import tf_keras

BIT_NPZ_RANGE = (-1.0, 1.0)
HUB_MODULE_RANGE = (0.0, 1.0)


def pipeline_range() -> Tuple[float, float]:
  """Data.value_range as gin binds it (else its default): what models are fed."""
  try:
    return tuple(float(v) for v in gin.query_parameter('Data.value_range'))
  except ValueError:  # not bound
    from fmx.data.pipeline import Data  # pylint: disable=g-import-not-at-top
    default = inspect.signature(Data).parameters['value_range'].default
    return tuple(float(v) for v in default)


def to_expected_range(inputs, expected: Tuple[float, float]):
  """`inputs` (in Data.value_range) mapped linearly onto `expected`."""
  low, high = pipeline_range()
  expected_low, expected_high = (float(v) for v in expected)
  if (low, high) == (expected_low, expected_high):
    return inputs
  scale = (expected_high - expected_low) / (high - low)
  return tf_keras.layers.Rescaling(scale, offset=expected_low - low * scale,
                                   name='input_range')(inputs)
