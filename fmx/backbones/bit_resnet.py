"""BiT ResNet-V2 (Kolesnikov et al. 2020, "Big Transfer"): the paper's models.

Pre-activation bottleneck ResNets with GroupNorm (32 groups) and
weight-standardised convolutions, laid out like google-research/big_transfer
(bit_tf2/models.py), so the official `.npz` checkpoints load into them (see
fmx.backbones.bit_weights):

- root: pad 3, 7x7/2 conv, pad 1 with zeros, 3x3/2 max-pool (no activation in
  between: the padding value matters, and zeros is what BiT was trained with);
- four blocks of units (`depth` picks their counts), 64/128/256/512 x `width`
  bottleneck channels, the first unit of blocks 2-4 with stride 2 on its 3x3
  conv (explicitly padded by 1 on every side, not Keras' 'same');
- unit: GN+ReLU ("a") feeds both the 1x1 conv and, when the shape changes, the
  1x1 projection shortcut; then GN+ReLU+3x3 ("b"), GN+ReLU+1x1 to 4x ("c");
- final GN+ReLU, global average pool, Dense logits head (zero-initialised as
  BiT does, float32 under mixed precision).

Layer names mirror the official variable names (`block1_unit01_a_conv` for
`resnet/block1/unit01/a/standardized_conv2d`). The model is a functional
tf_keras model of stock layers plus `StandardizedConv2D`, which is registered
with Keras, so `model.to_json()` round-trips: that is how a distillation run
rebuilds a teacher from its run's model.json.

Inputs: a BiT trained from scratch takes the pipeline's images as they come
(Data.value_range). One built with official `.npz` weights starts with a
layer mapping Data.value_range onto [-1, 1], the range those weights were
trained on (fmx.backbones.input_range), so they always see it.
"""

from typing import Optional, Tuple

import tensorflow as tf
import tf_keras

from fmx.backbones import bit_weights, input_range
from fmx.errors import UserError
from fmx.registry import BACKBONES

UNITS_PER_BLOCK = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                   152: (3, 8, 36, 3)}
GROUPS = 32
# BiT's GroupNorm epsilon (Keras' default 1e-3 would change pretrained outputs).
GN_EPSILON = 1e-5


@tf_keras.saving.register_keras_serializable(package='fmx')
class StandardizedConv2D(tf_keras.layers.Conv2D):
  """Conv2D whose kernel is standardised per output channel at every call.

  Weight standardisation (Qiao et al. 2019): the kernel minus its mean over
  (height, width, input channels), divided by its standard deviation, as in
  BiT (epsilon 1e-10 on the variance).
  """

  # True once fold_standardization() has standardised the kernel in place.
  # Not part of the config: model.json describes the architecture only.
  folded = False

  def fold_standardization(self) -> None:
    """Standardises the kernel once, in place, and no longer at every call.

    Only for a model whose weights never change again (a frozen teacher):
    the standardised kernel depends on the weights alone, and recomputing it
    at every call cost ~15% of a BiT-R50x1 forward pass (batch 16, 96 px,
    2-core CPU; docs/performance.md). Restore weights before folding, never
    after.
    """
    self.kernel.assign(tf.cast(_standardize(tf.cast(self.kernel, tf.float32)),
                               self.kernel.dtype))
    self.folded = True

  def convolution_op(self, inputs, kernel):
    if not self.folded:
      # In float32 even under mixed precision: the mean and variance of a
      # bfloat16 kernel are too coarse to standardise it.
      kernel = _standardize(tf.cast(kernel, tf.float32))
    return super().convolution_op(inputs, tf.cast(kernel, inputs.dtype))


def _standardize(kernel):
  mean, variance = tf.nn.moments(kernel, axes=[0, 1, 2], keepdims=True)
  return (kernel - mean) * tf.math.rsqrt(variance + 1e-10)


def fold_weight_standardization(model: tf_keras.Model) -> int:
  """Folds every StandardizedConv2D of a frozen `model`; returns how many."""
  convs = [m for m in model.submodules if isinstance(m, StandardizedConv2D)]
  for conv in convs:
    conv.fold_standardization()
  return len(convs)


@tf_keras.saving.register_keras_serializable(package='fmx')
class GroupNormalization(tf_keras.layers.GroupNormalization):
  """tf_keras' GroupNormalization (same weights and config), leaner `call`.

  The stock call builds a mask of ones and weighted moments for every layer:
  same result, but it made building a BiT model ~2x slower (R152x2 has 151 of
  these). Statistics are computed in float32 even under mixed precision.
  """

  def call(self, inputs):
    shape = tf.shape(inputs)
    channels = inputs.shape[-1]
    grouped = tf.reshape(tf.cast(inputs, tf.float32), tf.concat(
        [shape[:-1], [self.groups, channels // self.groups]], axis=0))
    # Every axis but the batch and the group one: spatial and within-group.
    axes = list(range(1, inputs.shape.rank - 1)) + [inputs.shape.rank]
    mean, variance = tf.nn.moments(grouped, axes, keepdims=True)
    normalized = (grouped - mean) * tf.math.rsqrt(variance + self.epsilon)
    normalized = tf.cast(tf.reshape(normalized, shape), inputs.dtype)
    return normalized * self.gamma + self.beta


def _conv(filters, size, name, strides=1):
  return StandardizedConv2D(filters, size, strides=strides, padding='valid',
                            use_bias=False, name=name)


def _norm_relu(x, name):
  x = GroupNormalization(GROUPS, epsilon=GN_EPSILON, name=f'{name}_gn')(x)
  return tf_keras.layers.ReLU(name=f'{name}_relu')(x)


def _unit(x, filters: int, stride: int, name: str):
  """One pre-activation bottleneck unit: filters -> 4 x filters channels."""
  out_channels = 4 * filters
  preact = _norm_relu(x, f'{name}_a')
  shortcut = x
  if stride != 1 or x.shape[-1] != out_channels:
    # BiT projects the pre-activated input, not the raw one.
    shortcut = _conv(out_channels, 1, f'{name}_a_proj', strides=stride)(preact)
  y = _conv(filters, 1, f'{name}_a_conv')(preact)
  y = _norm_relu(y, f'{name}_b')
  y = tf_keras.layers.ZeroPadding2D(1, name=f'{name}_b_pad')(y)
  y = _conv(filters, 3, f'{name}_b_conv', strides=stride)(y)
  y = _norm_relu(y, f'{name}_c')
  y = _conv(out_channels, 1, f'{name}_c_conv')(y)
  return tf_keras.layers.Add(name=f'{name}_add')([shortcut, y])


def build(num_classes: int, input_shape: Tuple[int, int, int], depth: int,
          width: int, weights: Optional[str] = None,
          name: Optional[str] = None) -> tf_keras.Model:
  """BiT ResNet-V2 `depth` x `width`, random init or loaded from `weights`."""
  if depth not in UNITS_PER_BLOCK:
    raise UserError(f'BiT ResNet depth {depth!r} is not one of '
                    f'{sorted(UNITS_PER_BLOCK)}; set the depth to one of those.')
  if not isinstance(width, int) or not 1 <= width <= 4:
    raise UserError(f'BiT ResNet width {width!r} is not a whole number from 1 '
                    'to 4 (BiT uses 1, 2, 3 and 4); set width to one of those.')
  inputs = tf_keras.Input(shape=input_shape, name='image')
  x = (input_range.to_expected_range(inputs, input_range.BIT_NPZ_RANGE)
       if weights else inputs)
  x = tf_keras.layers.ZeroPadding2D(3, name='root_pad')(x)
  x = _conv(64 * width, 7, 'root_conv', strides=2)(x)
  x = tf_keras.layers.ZeroPadding2D(1, name='root_pool_pad')(x)
  x = tf_keras.layers.MaxPool2D(3, strides=2, name='root_pool')(x)
  for block, units in enumerate(UNITS_PER_BLOCK[depth], 1):
    filters = 64 * width * 2 ** (block - 1)
    for unit in range(1, units + 1):
      stride = 2 if block > 1 and unit == 1 else 1
      x = _unit(x, filters, stride, f'block{block}_unit{unit:02d}')
  x = _norm_relu(x, 'final')
  x = tf_keras.layers.GlobalAveragePooling2D(name='pool')(x)
  # Zero-initialised like BiT's head: a fresh head starts from uniform
  # predictions instead of random ones. float32 keeps logits exact under
  # mixed precision.
  logits = tf_keras.layers.Dense(num_classes, kernel_initializer='zeros',
                                 dtype='float32', name='head')(x)
  model = tf_keras.Model(inputs, logits, name=name or f'bit_r{depth}x{width}')
  if weights:
    bit_weights.load_bit_weights(model, weights)
  return model


_DENYLIST = ('num_classes', 'input_shape')


@BACKBONES.register(denylist=_DENYLIST)
def bit_resnet(num_classes: int, input_shape: Tuple[int, int, int],
               depth: int = 50, width: int = 1,
               weights: Optional[str] = None) -> tf_keras.Model:
  """BiT ResNet-V2 of any depth (26/50/101/152) and width (1-4), GroupNorm + WS.

  Args:
    depth: 26, 50, 101 or 152 layers.
    width: width multiplier, 1 to 4.
    weights: an official BiT .npz (path or URL) to start from; None: random init.
  """
  return build(num_classes, input_shape, depth, width, weights)


@BACKBONES.register(denylist=_DENYLIST)
def bit_r50x1(num_classes: int, input_shape: Tuple[int, int, int],
              weights: Optional[str] = None) -> tf_keras.Model:
  """BiT ResNet-V2 50x1 (25.55M params with 1000 classes): the paper's student.

  Args:
    weights: an official BiT .npz (path or URL) to start from; None: random init.
  """
  return build(num_classes, input_shape, 50, 1, weights)


@BACKBONES.register(denylist=_DENYLIST)
def bit_r101x3(num_classes: int, input_shape: Tuple[int, int, int],
               weights: Optional[str] = None) -> tf_keras.Model:
  """BiT ResNet-V2 101x3 (387.93M params): the original implementation's teacher.

  Args:
    weights: an official BiT .npz (path or URL) to start from; None: random init.
  """
  return build(num_classes, input_shape, 101, 3, weights)


@BACKBONES.register(denylist=_DENYLIST)
def bit_r152x2(num_classes: int, input_shape: Tuple[int, int, int],
               weights: Optional[str] = None) -> tf_keras.Model:
  """BiT ResNet-V2 152x2 (236.34M params): the paper's ImageNet teacher.

  Args:
    weights: an official BiT .npz (path or URL) to start from; None: random init.
  """
  return build(num_classes, input_shape, 152, 2, weights)
