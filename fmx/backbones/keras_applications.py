"""Students from `tf_keras.applications`, so users can distill into other families.

Weights are None (random init, as in the paper) or a local weights file; the
ImageNet download is not used because the classifier head is replaced.
"""

from typing import Optional, Tuple

import tf_keras

from fmx.registry import BACKBONES

_APPLICATIONS = {
    'resnet50v2': tf_keras.applications.ResNet50V2,
    'mobilenetv3small': tf_keras.applications.MobileNetV3Small,
    'mobilenetv3large': tf_keras.applications.MobileNetV3Large,
    'efficientnetb0': tf_keras.applications.EfficientNetB0,
}


def _make_entry(entry_name, constructor):
  def build(num_classes: int, input_shape: Tuple[int, int, int],
            weights: Optional[str] = None) -> tf_keras.Model:
    kwargs = dict(include_top=True, weights=None, classes=num_classes,
                  input_shape=input_shape, classifier_activation=None)
    if 'mobilenetv3' in entry_name:
      # Its built-in rescaling expects [0, 255]; fmx feeds [0, 1] or [-1, 1].
      kwargs['include_preprocessing'] = False
    model = constructor(**kwargs)
    if weights:
      model.load_weights(weights)
    if entry_name.startswith('efficientnet'):
      # EfficientNet always rescales by 1/255 inside; fmx feeds [0, 1]
      # (Data.value_range's default), so undo that first.
      inputs = tf_keras.Input(input_shape)
      model = tf_keras.Model(inputs, model(tf_keras.layers.Rescaling(255.0)(inputs)),
                             name=model.name)
    return model

  build.__name__ = entry_name
  build.__doc__ = (f'tf_keras.applications.{constructor.__name__}, logits '
                   'head, random init or a local weights file.\n\n  Args:\n'
                   '    weights: a local Keras weights file; None: random init.\n')
  return BACKBONES.register(entry_name, denylist=('num_classes', 'input_shape'))(build)


for _name, _constructor in _APPLICATIONS.items():
  _make_entry(_name, _constructor)
