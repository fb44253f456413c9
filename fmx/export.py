"""`fmx export`: ships a run's model as a SavedModel or a TFLite file.

The model of a distillation run is its student; of a teacher run, the
teacher. It is rebuilt exactly as `fmx eval` rebuilds it (the run's own
operative_config.gin and latest checkpoint), and exported with the run's eval
preprocessing inside its one signature, so a caller feeds raw pixels:

    serving_default(images: uint8 [batch, height, width, channels])
        -> {'logits': float32 [batch, classes],
            'probabilities': float32 [batch, classes],
            'class_names': string [batch, classes]}   (SavedModel only)

`class_names` repeats the run's labels.txt (label k's name at k) for each
image, so a caller can name its top classes; the SavedModel also holds
labels.txt as an asset (assets/labels.txt). TFLite outputs only numbers:
its labels are the run folder's labels.txt.

Inside, the eval pipeline's steps run on the batch: uint8 -> float in [0, 1],
the run's Data.eval_augmentations (e.g. a central crop), a resize to
Data.image_size, then Data.value_range. `channels` is the trained count (1 for
MNIST).

- SavedModel: any batch, height and width.
- TFLite needs static shapes: height and width are fixed at `--input_size`
  (default Data.image_size) and only the batch is dynamic (a signature runner
  or `resize_tensor_input` changes it). The caller resizes to that size; the
  model still crops and resizes to Data.image_size inside, so a camera's
  frames can be taken at another size than the one trained on.

Quantisation (TFLite only): `dynamic` stores weights as int8 and computes in
float; `float16` stores weights as float16; `int8` computes in int8, its
activation ranges calibrated on the start of the run's own training stream.
Every variant keeps the uint8 input and float32 outputs.

Everything is written to a temporary path and renamed, so a failed export
leaves nothing behind and an existing export is replaced only with
`overwrite`.
"""

import contextlib
import dataclasses
import os
import sys
import tempfile
from typing import Callable, Iterator, List, Optional

import tensorflow as tf
import tf_keras

from fmx.data.pipeline import Data
from fmx.data.source import Source
from fmx.errors import UserError
from fmx.tasks import teacher_run
from fmx.tasks.base import fit_to_model
from fmx.training import evaluate, labels, run_dir

FORMATS = ('saved_model', 'tflite')
QUANTIZATIONS = ('none', 'dynamic', 'float16', 'int8')
SIGNATURE = 'serving_default'
EXPORT_FOLDER = 'export'
# Calibration images for int8: enough for stable activation ranges on the
# small models fmx distils, few enough to convert in seconds.
REPRESENTATIVE_IMAGES = 200

# Exports run on this machine's CPU whatever the run trained on: one device,
# float32 (a mixed-precision run keeps float32 variables; the teacher, the
# report's reference, as trained), all cores.
EXPORT_BINDINGS = ("Runtime.distribution_strategy = 'one_device'",
                   'Runtime.mixed_precision = None',
                   "distillation.teacher_precision = 'float32'",
                   'Runtime.intra_op_threads = None')


@dataclasses.dataclass
class Servable:
  """A trained Keras model plus the preprocessing of the run that trained it."""
  model: tf_keras.Model
  data: Data
  channels: int
  train_source: Source  # calibration images for int8
  seed: int
  class_names: List[str]  # label k's name at k

  @classmethod
  def from_run(cls, restored: evaluate.RestoredRun,
               teacher: bool = False) -> 'Servable':
    """The run's model (a distillation run's student), or its teacher."""
    task = restored.setup.task
    model = task.teacher if teacher else restored.trainer.model
    # labels.txt: the names the run announced (runs older than it: the data's).
    names = labels.read(task.logging_dir) or labels.of_task(task)
    return cls(model, task.data, task.input_shape[-1], task.sources['train'],
               task.training.seed, names)

  def preprocess(self, images):
    """uint8 [batch, h, w, c] -> the model's input, as Data's eval pipeline."""
    data = self.data
    images = tf.image.convert_image_dtype(images, tf.float32)
    zero_seed = tf.zeros([2], tf.int64)  # eval ops are deterministic
    for index, op in enumerate(data.eval_ops):
      images = op(images, data.op_seed(zero_seed, index), size=data.image_size)
    images = tf.image.resize(images, (data.image_size, data.image_size))
    low, high = data.value_range
    # A student trained at its own resolution gets its own resize, as in
    # training (fmx.tasks.base.fit_to_model).
    return fit_to_model(self.model, images * (high - low) + low)

  def serving_function(self, input_size: Optional[int] = None,
                       with_names: bool = False):
    """The signature's tf.function: any height and width unless input_size."""
    spec = tf.TensorSpec([None, input_size, input_size, self.channels],
                         tf.uint8, name='images')
    names = tf.constant(self.class_names)

    @tf.function(input_signature=[spec])
    def serve(images):
      logits = tf.cast(self.model(self.preprocess(images), training=False),
                       tf.float32)
      outputs = {'logits': logits, 'probabilities': tf.nn.softmax(logits)}
      if with_names:
        outputs['class_names'] = tf.tile(names[tf.newaxis],
                                         [tf.shape(logits)[0], 1])
      return outputs

    try:
      serve.get_concrete_function()
    except (ValueError, TypeError, tf.errors.OpError) as e:
      names = [getattr(op, '__name__', op) for op in self.data.eval_ops]
      raise UserError(
          f'the serving signature could not be built ({e}). It applies the '
          f'run\'s Data.eval_augmentations {names} to whole batches, which '
          'crops and resizes support; export a run whose eval augmentations '
          'do.') from None
    return serve

  def module(self, input_size: Optional[int] = None,
             with_names: bool = False) -> tf.Module:
    """A tf.Module holding the serving function and the model's weights.

    Only the variables are tracked, not the Keras model: the export then holds
    the serving graph and weights alone, and loads without Keras or fmx.
    """
    module = tf.Module()
    module.model_weights = list(self.model.weights)
    module.serve = self.serving_function(input_size, with_names)
    return module

  def representative_images(self, input_size: int,
                            count: int = REPRESENTATIVE_IMAGES) -> Iterator[list]:
    """The first `count` images of the run's training stream, as served.

    The run's own shuffle and augmentations, but not MixUp: a served model
    never sees mixed images. Each is turned back into uint8 pixels at the
    serving input's size, since calibration runs the whole signature.
    """
    data, seed = self.data, self.seed

    def as_served(position, example):
      image = data.augment_example(seed, position, example)['image']
      image = tf.clip_by_value(data.to_unit_range(image), 0.0, 1.0)
      image = tf.image.resize(image, (input_size, input_size))
      return tf.cast(tf.round(image * 255.0), tf.uint8)

    stream = data.train_examples(seed, source=self.train_source).take(count)
    for image in stream.map(as_served).batch(1):
      yield [image.numpy()]


class ModelWithPreprocessing(tf_keras.Model):
  """uint8 images in, float32 logits out: a run's eval preprocessing, then its model.

  What fmx.api's Run.student and Run.teacher are: the serving signature's
  computation as a Keras model, for use in Python without exporting.
  """

  def __init__(self, servable: Servable):
    super().__init__(name=f'{servable.model.name}_with_preprocessing')
    self.inner = servable.model
    # Traced now, under the run's own gin config: the ops read gin only
    # while traced, so a config parsed later cannot change them.
    self._preprocess = tf.function(servable.preprocess, input_signature=[
        tf.TensorSpec([None, None, None, servable.channels], tf.uint8)])
    self._preprocess.get_concrete_function()

  def call(self, images, training=False):  # pylint: disable=arguments-differ
    return tf.cast(self.inner(self._preprocess(images), training=training),
                   tf.float32)


def save_saved_model(servable: Servable, path: str) -> None:
  """Writes the servable as a SavedModel with one signature, serving_default,
  and the class names as the asset labels.txt."""
  module = servable.module(with_names=True)
  # An asset keeps its file's name: written as labels.txt in a folder of its own.
  with tempfile.TemporaryDirectory() as folder:
    names_file = os.path.join(folder, labels.LABELS_FILE)
    _write_bytes(names_file, ''.join(f'{n}\n' for n in servable.class_names).encode())
    module.labels = tf.saved_model.Asset(names_file)
    tf.saved_model.save(module, path, signatures={
        SIGNATURE: module.serve.get_concrete_function()})


def tflite_model(servable: Servable, quantize: str = 'none',
                 input_size: Optional[int] = None) -> bytes:
  """The TFLite flatbuffer, input height and width fixed at input_size."""
  input_size = input_size or servable.data.image_size
  module = servable.module(input_size)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [module.serve.get_concrete_function()], module)
  if quantize != 'none':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == 'float16':
    converter.target_spec.supported_types = [tf.float16]
  elif quantize == 'int8':
    converter.representative_dataset = lambda: servable.representative_images(
        input_size)
    # Int8 kernels only: conversion fails rather than silently leaving an op
    # in float. The uint8 input is cast and quantised inside.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  with native_stderr_kept_on_failure():
    return converter.convert()


@contextlib.contextmanager
def native_stderr_kept_on_failure():
  """Holds back what C++ code writes to stderr; shown only if the block fails.

  The TFLite converter logs through absl's C++ logging ('W0000 ... Ignored
  output_format', 'fully_quantize: 0, ...'), which TF_CPP_MIN_LOG_LEVEL does
  not reach and which means nothing to a user. A failed conversion raises
  with its own message; its log lines then follow on stderr as before.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      held.seek(0)
      sys.stderr.write(held.read().decode(errors='replace'))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def default_path(model_dir: str, export_format: str, quantize: str = 'none',
                 step: Optional[int] = None) -> str:
  """MODEL_DIR/export/saved_model or MODEL_DIR/export/model_<weights>.tflite;
  an export of an earlier checkpoint than the last ends in _step<N>."""
  suffix = f'_step{step}' if step is not None else ''
  if export_format == 'saved_model':
    name = f'saved_model{suffix}'
  else:
    name = f'model_{"float32" if quantize == "none" else quantize}{suffix}.tflite'
  return os.path.join(model_dir, EXPORT_FOLDER, name)


def check_finished(model_dir: str) -> None:
  """UserError unless model_dir is an fmx run that finished training.

  (An unfinished run's checkpoints are exported with --checkpoint.)
  """
  if not tf.io.gfile.exists(os.path.join(model_dir, run_dir.OPERATIVE_CONFIG)):
    raise UserError(f'{model_dir!r} is not an fmx run folder (no '
                    f'{run_dir.OPERATIVE_CONFIG}); pass the --model_dir of a run.')
  if not tf.io.gfile.exists(os.path.join(model_dir, teacher_run.RESULTS_FILE)):
    raise UserError(
        f'run {model_dir!r} has no finished checkpoint: it has no '
        f'{teacher_run.RESULTS_FILE}, which `fmx run` writes after its last '
        'checkpoint. Finish the run first (rerunning its `fmx run` command '
        'resumes from the latest checkpoint), or export one of its '
        'checkpoints with --checkpoint STEP. Nothing was written.')


def export_run(model_dir: str, export_format: str, quantize: str = 'none',
               out: Optional[str] = None, overwrite: bool = False,
               input_size: Optional[int] = None,
               checkpoint: Optional[str] = None) -> str:
  """Exports model_dir's model; returns the path written.

  `checkpoint` (a path or a step) exports that checkpoint, of a finished run
  or not; by default the run must be finished and its latest is exported.
  """
  if export_format not in FORMATS:
    raise UserError(f'--format {export_format!r}; use one of {list(FORMATS)}.')
  if quantize not in QUANTIZATIONS:
    raise UserError(f'--quantize {quantize!r}; use one of {list(QUANTIZATIONS)}.')
  if export_format == 'saved_model' and (quantize != 'none' or input_size):
    raise UserError('--quantize and --input_size apply to --format tflite; a '
                    'SavedModel keeps float32 weights and takes any image size.')
  if input_size is not None and input_size <= 0:
    raise UserError(f'--input_size {input_size} must be a positive number of pixels.')
  step = None
  if checkpoint is None:
    check_finished(model_dir)
  else:
    checkpoint = evaluate.find_checkpoint(model_dir, checkpoint)
    step = run_dir.checkpoint_step(checkpoint)
  out = (out.rstrip('/') if out else None) or default_path(
      model_dir, export_format, quantize, step)
  # Before the (slow) rebuild, so a mistake costs nothing.
  check_destination(out, overwrite)
  servable = Servable.from_run(evaluate.restore_run(model_dir, EXPORT_BINDINGS,
                                                    checkpoint))
  if export_format == 'saved_model':
    write_atomically(out, lambda tmp: save_saved_model(servable, tmp))
  else:
    flatbuffer = tflite_model(servable, quantize, input_size)
    write_atomically(out, lambda tmp: _write_bytes(tmp, flatbuffer))
  return out


def check_destination(out: str, overwrite: bool) -> None:
  """UserError if `out` exists and may not be replaced."""
  if tf.io.gfile.exists(out) and not overwrite:
    raise UserError(f'{out!r} already exists; pass --overwrite to replace it, '
                    'or --out another path. Nothing was written.')


def write_atomically(out: str, write: Callable[[str], None]) -> None:
  """Runs write(tmp) beside `out`, then renames tmp to out (replacing it).

  On any failure nothing new remains: not tmp, not the folders made for it,
  and a replaced `out` is put back.
  """
  parent = os.path.dirname(os.path.abspath(out))
  created: List[str] = []  # innermost first
  while not tf.io.gfile.exists(parent):
    created.append(parent)
    parent = os.path.dirname(parent)
  tmp, old = f'{out}.tmp-{os.getpid()}', f'{out}.old-{os.getpid()}'
  written = False
  try:
    for folder in reversed(created):
      tf.io.gfile.mkdir(folder)
    write(tmp)
    if tf.io.gfile.exists(out):
      tf.io.gfile.rename(out, old)
    tf.io.gfile.rename(tmp, out)
    written = True
  finally:
    if not written and tf.io.gfile.exists(old) and not tf.io.gfile.exists(out):
      tf.io.gfile.rename(old, out)
    for leftover in (tmp, old):
      _remove(leftover)
    for folder in [] if written else created:
      if tf.io.gfile.exists(folder) and not tf.io.gfile.listdir(folder):
        tf.io.gfile.rmtree(folder)


def _remove(path: str) -> None:
  if tf.io.gfile.isdir(path):
    tf.io.gfile.rmtree(path)
  elif tf.io.gfile.exists(path):
    tf.io.gfile.remove(path)


def _write_bytes(path: str, content: bytes) -> None:
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(content)


def file_size(path: str) -> int:
  """Bytes on disk of a file, or of every file under a folder."""
  if not tf.io.gfile.isdir(path):
    return tf.io.gfile.stat(path).length
  return sum(tf.io.gfile.stat(os.path.join(root, name)).length
             for root, _, names in tf.io.gfile.walk(path) for name in names)
