"""`fmx predict`: the top classes of image files, by name.

The model is a run folder's (a distillation run's student, rebuilt from its
latest or a chosen checkpoint as `fmx eval` rebuilds it) or an export: a
SavedModel folder or a .tflite file. Every image goes through the export's
own serving signature (raw uint8 pixels in, the run's eval preprocessing
inside), so a prediction here is what a deployed model would answer.
"""

import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from fmx import export
from fmx.data import decoding
from fmx.data.image_folder import IMAGE_EXTENSIONS
from fmx.errors import UserError
from fmx.training import evaluate, labels

# (probabilities [classes] of one uint8 [h, w, c] image)
Classifier = Callable[[np.ndarray], np.ndarray]


def image_files(paths: Sequence[str]) -> List[str]:
  """The image files among `paths`, folders searched at any depth, sorted."""
  found = []
  for path in paths:
    if tf.io.gfile.isdir(path):
      found += sorted(os.path.join(folder, name)
                      for folder, _, names in tf.io.gfile.walk(path)
                      for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    elif tf.io.gfile.exists(path):
      found.append(path)
    else:
      raise UserError(f'{path!r} is neither an image file nor a folder; pass '
                      'image files (JPEG/PNG) or folders holding them.')
  if not found:
    raise UserError(f'no {"/".join(IMAGE_EXTENSIONS)} image in {list(paths)}.')
  return found


def _from_run(model_dir: str, checkpoint: Optional[str]) -> Tuple[Classifier, List[str], int]:
  servable = export.Servable.from_run(evaluate.restore_run(
      model_dir, export.EXPORT_BINDINGS, checkpoint))
  serve = servable.serving_function()
  return (lambda image: serve(image[np.newaxis])['probabilities'][0].numpy(),
          servable.class_names, servable.channels)


def _from_saved_model(path: str) -> Tuple[Classifier, List[str], int]:
  serve = tf.saved_model.load(path).signatures[export.SIGNATURE]
  channels = serve.structured_input_signature[1]['images'].shape[-1]
  names = labels.read(os.path.join(path, 'assets'))
  return (lambda image: serve(images=tf.constant(image[np.newaxis]))[
      'probabilities'][0].numpy(), names, channels)


def _from_tflite(path: str) -> Tuple[Classifier, List[str], int]:
  from fmx import report  # pylint: disable=g-import-not-at-top
  interpreter = report.tflite_interpreter(path)
  serve = interpreter.get_signature_runner(export.SIGNATURE)
  _, height, width, channels = interpreter.get_input_details()[0]['shape_signature']

  def classify(image):
    image = tf.cast(tf.round(tf.image.resize(image, (height, width))), tf.uint8)
    # Its C++ runtime announces its CPU delegate on stderr at the first call.
    with export.native_stderr_kept_on_failure():
      return serve(images=image.numpy()[np.newaxis])['probabilities'][0]
  # An export in MODEL_DIR/export/: the run folder's labels.
  names = labels.read(os.path.dirname(os.path.dirname(os.path.abspath(path))))
  return classify, names, int(channels)


def load(model: str, checkpoint: Optional[str] = None
         ) -> Tuple[Classifier, List[str], int]:
  """(classify, class names, channels) of a run folder or an export."""
  is_export = model.endswith('.tflite') or tf.io.gfile.exists(
      os.path.join(model, 'saved_model.pb'))
  if not is_export:
    return _from_run(model, checkpoint)
  if checkpoint is not None:
    raise UserError(f'--checkpoint applies to a run folder; {model!r} is an '
                    'export, which holds one set of weights.')
  return _from_tflite(model) if model.endswith('.tflite') else _from_saved_model(model)


def predict(model: str, paths: Sequence[str], top_k: int = 5,
            checkpoint: Optional[str] = None) -> List[Tuple[str, List[Tuple[str, float]]]]:
  """[(image path, [(class name, probability), ...] best first)]."""
  files = image_files(paths)  # before the (slow) model
  classify, names, channels = load(model, checkpoint)
  results = []
  for path in files:
    try:
      image = decoding.decode_image(tf.io.read_file(path), channels).numpy()
    except tf.errors.OpError as e:
      raise UserError(f'{path!r} cannot be decoded as an image ({e.message.splitlines()[0]}).') from None
    probabilities = np.asarray(classify(image))
    class_names = names if names and len(names) == len(probabilities) else [
        f'class {k}' for k in range(len(probabilities))]
    best = np.argsort(-probabilities, kind='stable')[:max(1, top_k)]
    results.append((path, [(class_names[k], float(probabilities[k])) for k in best]))
  return results


def format_predictions(results) -> str:
  return '\n'.join(f'{path}: ' + ', '.join(f'{name} {p:.1%}' for name, p in top)
                   for path, top in results)
