"""TF-Hub modules and exported SavedModels as backbones and as frozen teachers.

The original implementation fine-tuned a BiT-M module from TF-Hub (a feature
extractor) with a zero-initialised Dense head; the `hub` entry does the same
for any handle: a https://tfhub.dev/... URL, a gs:// path, or a local
SavedModel folder, which `hub.KerasLayer` loads offline; or a short name of
`BIT_M_HANDLES` such as 'bit_m-r101x3'. TF-Hub image modules (BiT-M's
included) expect images in [0, 1]: the `hub` entry maps Data.value_range onto
that (fmx.backbones.input_range), so a module sees [0, 1] whatever Data says.

`saved_model_teacher` wraps a SavedModel that outputs logits as a frozen
tf_keras model, for `distillation.teacher_saved_model`.
"""

from typing import Tuple

import tensorflow as tf
import tensorflow_hub
import tf_keras

from fmx.backbones import input_range
from fmx.errors import UserError
from fmx.registry import BACKBONES

# The original implementation's teachers: BiT-M (ImageNet-21k) feature vectors.
BIT_M_HANDLES = {
    f'bit_m-r{size}': f'https://tfhub.dev/google/bit/m-r{size}/1'
    for size in ('50x1', '50x3', '101x1', '101x3', '152x4')}
_REMOTE_PREFIXES = ('http://', 'https://', 'gs://')
_SAVED_MODEL_FILES = ('saved_model.pb', 'saved_model.pbtxt', 'tfhub_module.pb')

# A teacher run whose backbone is `hub` writes a KerasLayer into model.json;
# the distillation run can rebuild it only if Keras knows the class by name.
tf_keras.saving.get_custom_objects().setdefault('KerasLayer',
                                                tensorflow_hub.KerasLayer)


def keras_layer(handle: str, trainable: bool, setting: str) -> tensorflow_hub.KerasLayer:
  """hub.KerasLayer of `handle`; a UserError naming `setting` if unusable."""
  if not isinstance(handle, str) or not handle:
    raise UserError(f'{setting} = {handle!r} is not a TF-Hub handle or a '
                    'SavedModel folder; set it to one (a string).')
  handle = BIT_M_HANDLES.get(handle, handle)
  if not handle.startswith(_REMOTE_PREFIXES):
    # Checked here, not left to hub: a local path must never reach a resolver
    # that might try the network, and the message should say what is missing.
    path = handle[len('file://'):] if handle.startswith('file://') else handle
    if not any(tf.io.gfile.exists(f'{path}/{f}') for f in _SAVED_MODEL_FILES):
      reason = ('it holds no saved_model.pb' if tf.io.gfile.isdir(path)
                else 'it does not exist')
      raise UserError(
          f'{setting} = {handle!r} is not a SavedModel folder ({reason}). '
          'Pass the folder a SavedModel was exported to (tf.saved_model.save,'
          ' or a TF-Hub model downloaded and extracted), or a TF-Hub URL '
          f'such as {BIT_M_HANDLES["bit_m-r101x3"]!r}.')
  try:
    # float32 whatever the mixed-precision policy: the SavedModel's functions
    # were traced for float32 inputs and would reject bfloat16 ones.
    return tensorflow_hub.KerasLayer(handle, trainable=trainable, dtype='float32')
  except Exception as e:  # pylint: disable=broad-except
    # Resolvers, downloads and the SavedModel loader fail with many types.
    raise UserError(
        f'{setting} = {handle!r} could not be loaded ({type(e).__name__}: '
        f'{_first_line(e)}). Check the handle; without network access, '
        'download the model elsewhere and pass its local folder.') from e


def _call(layer, inputs, handle: str, setting: str):
  try:
    return layer(inputs)
  except (ValueError, TypeError) as e:
    raise UserError(
        f'{setting} = {handle!r} cannot be called on images of shape '
        f'{tuple(inputs.shape[1:])}: its signature expects other inputs. '
        'Export the SavedModel for that image size and channel count (or '
        'with unknown height and width), or change Data.image_size.') from e


@BACKBONES.register(denylist=('num_classes', 'input_shape'))
def hub(num_classes: int, input_shape: Tuple[int, int, int],
        handle: str = BIT_M_HANDLES['bit_m-r101x3'],
        trainable: bool = True, head: bool = True) -> tf_keras.Model:
  """A TF-Hub module or local SavedModel (default BiT-M-R101x3) + zero-init head.

  Args:
    handle: TF-Hub URL or SavedModel folder of a feature (or logits) model.
    trainable: fine-tune the module's weights (False: only the head trains).
    head: add a zero-initialised Dense head (False: the module outputs logits).
  """
  setting = 'backbones.hub.handle'
  layer = keras_layer(handle, trainable, setting)
  inputs = tf_keras.Input(shape=input_shape, name='image')
  outputs = _call(layer, input_range.to_expected_range(
      inputs, input_range.HUB_MODULE_RANGE), handle, setting)
  if head:
    # Zero-initialised like the original implementation's head on BiT-M.
    logits = tf_keras.layers.Dense(num_classes, kernel_initializer='zeros',
                                   dtype='float32', name='head')(outputs)
  else:
    _check_logits(outputs, num_classes, handle, setting + ' (head = False)')
    logits = outputs
  return tf_keras.Model(inputs, logits, name='hub')


def saved_model_teacher(handle: str, input_shape: Tuple[int, int, int]
                        ) -> tf_keras.Model:
  """A frozen tf_keras model around a SavedModel (or hub handle) of logits.

  A functional model, so the distillation task can call it like an fmx
  teacher (`teacher(images, training=False)`), read `output_shape` and
  `count_params()`.
  """
  setting = 'distillation.teacher_saved_model'
  layer = keras_layer(handle, trainable=False, setting=setting)
  inputs = tf_keras.Input(shape=input_shape, name='image')
  logits = _call(layer, inputs, handle, setting)
  _check_logits(logits, None, handle, setting)
  teacher = tf_keras.Model(inputs, logits, name='saved_model_teacher')
  teacher.trainable = False
  return teacher


def _check_logits(outputs, num_classes, handle: str, setting: str) -> None:
  if not tf_keras.backend.is_keras_tensor(outputs) or outputs.shape.rank != 2 or (
      num_classes is not None and outputs.shape[-1] != num_classes):
    shape = getattr(outputs, 'shape', type(outputs).__name__)
    want = f'[batch, {num_classes}]' if num_classes else '[batch, classes]'
    raise UserError(
        f'{setting} = {handle!r} outputs {shape}, not logits of shape {want}. '
        'Use a SavedModel that outputs one logits tensor per image, or a '
        'feature extractor with backbones.hub.head = True.')


def _first_line(error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__
