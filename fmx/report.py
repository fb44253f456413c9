"""`fmx report`: size, parameters, accuracy and CPU latency of a run's models.

One table (stdout) and MODEL_DIR/report.json compare, all measured in the
same process on the run's test split:

- teacher: a distillation run's teacher, or a teacher run's own model;
- student: a distillation run's own model, float32;
- each export of the run (default: everything in MODEL_DIR/export/, where
  `fmx export` writes).

Every model is run through the same serving signature, fed the test split's
raw uint8 images: teacher and student through a float32 SavedModel exported
to a temporary folder, exports as they are on disk. So the measures compare
like with like:

- size: bytes on disk of that SavedModel folder (graph + float32 weights) or
  of the export. The teacher's run checkpoint is larger (it also holds the
  optimiser's slots); report.json lists it as `checkpoint_bytes`.
- top-1 on the run's test split; agreement: how often a model's argmax
  equals the teacher's (in float32, the first row).
- latency per image, p50 and p90 over `latency_runs` calls, at batch 1 and
  at batch 32 (a call's time / 32), after warm-up calls, the models taking
  turns call by call; TensorFlow with its default thread pools and TFLite
  with one thread per core. At batch 1 a SavedModel's time is mostly
  TensorFlow's per-call overhead, which the TFLite interpreter does not have.
"""

import dataclasses
import json
import os
import tempfile
import time
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from fmx import export
from fmx.errors import UserError
from fmx.training import evaluate, run_dir

REPORT_FILE = 'report.json'
LATENCY_BATCHES = (1, 32)
WARMUP_CALLS = 3
EVAL_BATCH = 64


def tflite_interpreter(path: str, threads: Optional[int] = None):
  """A TFLite interpreter: LiteRT's, or TensorFlow's where LiteRT is absent."""
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError:
    Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
  return Interpreter(model_path=path, num_threads=threads or os.cpu_count())


def tflite_weights(interpreter) -> str:
  """What a .tflite file computes in, read from its tensors, not its name.

  'float16' (float16 weights), 'int8' (most tensors, activations included,
  are int8), 'dynamic' (int8 weights, float activations) or 'float32'.
  """
  types = [d['dtype'] for d in interpreter.get_tensor_details()]
  int8, float32 = types.count(np.int8), types.count(np.float32)
  if np.float16 in types:
    return 'float16'
  if int8 == 0:
    return 'float32'
  return 'int8' if int8 > float32 else 'dynamic'


class SavedModelRunner:
  """Calls a SavedModel's serving signature; any image size."""
  input_size = None

  def __init__(self, path: str):
    self._serve = tf.saved_model.load(path).signatures[export.SIGNATURE]
    self.kind = 'float32 SavedModel'

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return self._serve(images=tf.constant(images))['logits'].numpy()


class TFLiteRunner:
  """Calls a TFLite file's serving signature at its fixed input size."""

  def __init__(self, path: str):
    interpreter = tflite_interpreter(path)
    self._serve = interpreter.get_signature_runner(export.SIGNATURE)
    self.input_size = tuple(interpreter.get_input_details()[0]['shape_signature'][1:3])
    self.kind = f'{tflite_weights(interpreter)} TFLite'

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return self._serve(images=images)['logits']


def open_model(path: str):
  if tf.io.gfile.isdir(path):
    if not tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')):
      raise UserError(f'{path!r} is a folder but not a SavedModel; pass '
                      '`fmx export` outputs (a SavedModel folder or a .tflite file).')
    return SavedModelRunner(path)
  if not tf.io.gfile.exists(path):
    raise UserError(f'export {path!r} does not exist; create it with `fmx export` '
                    'or pass another path.')
  return TFLiteRunner(path)


@dataclasses.dataclass
class SplitImages:
  """The run's test split as served: raw uint8 images and their labels."""
  images: List[np.ndarray]
  labels: np.ndarray
  image_size: int  # the run's Data.image_size, for variable-size splits

  def at_size(self, size) -> List[np.ndarray]:
    """The images resized to (height, width) size; unchanged if None."""
    if size is None:
      return self.images
    return [image if image.shape[:2] == tuple(size) else _resize_uint8(image, size)
            for image in self.images]

  def batches(self, size) -> List[np.ndarray]:
    """Consecutive images of one shape, up to EVAL_BATCH per batch."""
    batches, current = [], []
    for image in self.at_size(size):
      if current and (len(current) == EVAL_BATCH or image.shape != current[0].shape):
        batches.append(np.stack(current))
        current = []
      current.append(image)
    return batches + ([np.stack(current)] if current else [])

  def latency_batch(self, size, batch_size: int) -> np.ndarray:
    """batch_size test images of one shape (repeated if the split is small)."""
    if size is None and len({i.shape for i in self.images[:batch_size]}) > 1:
      size = (self.image_size, self.image_size)
    images = self.at_size(size)
    return np.stack([images[i % len(images)] for i in range(batch_size)])


def _resize_uint8(image: np.ndarray, size) -> np.ndarray:
  resized = tf.image.resize(tf.cast(image, tf.float32), size)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


def read_test_images(restored: evaluate.RestoredRun) -> SplitImages:
  task = restored.setup.task
  images, labels = [], []
  for example in task.sources['test'].dataset.as_numpy_iterator():
    images.append(example['image'])
    labels.append(example['label'])
  if not images:
    raise UserError(f'the test split {task.data.test_split!r} is empty; set '
                    'Data.test_split to a split with images.')
  return SplitImages(images, np.array(labels), task.data.image_size)


def predict(runner, images: SplitImages) -> np.ndarray:
  """The argmax class of every test image."""
  return np.concatenate([np.argmax(runner(batch), -1)
                         for batch in images.batches(runner.input_size)])


def latencies_ms(runners: Sequence, images: SplitImages, batch_size: int,
                 runs: int) -> List[dict]:
  """p50 and p90 of milliseconds per image of each runner, at batch_size.

  The runners take turns, one call each per round, so a burst of load from
  elsewhere on the machine slows every model alike instead of one of them.
  """
  batches = [images.latency_batch(r.input_size, batch_size) for r in runners]
  for runner, batch in zip(runners, batches):
    for _ in range(WARMUP_CALLS):
      runner(batch)
  seconds = np.zeros([len(runners), runs])
  for call in range(runs):
    for index, (runner, batch) in enumerate(zip(runners, batches)):
      start = time.perf_counter()
      runner(batch)
      seconds[index, call] = time.perf_counter() - start
  per_image = seconds * 1000.0 / batch_size
  return [{'p50': float(np.percentile(row, 50)), 'p90': float(np.percentile(row, 90))}
          for row in per_image]


def accuracy(predictions: np.ndarray, images: SplitImages,
             reference: Optional[np.ndarray]) -> dict:
  """top-1 on the labeled test images, and agreement with the reference."""
  labeled = images.labels >= 0
  return {'top1': (float(np.mean(predictions[labeled] == images.labels[labeled]))
                   if labeled.any() else None),
          'agreement': (float(np.mean(predictions == reference))
                        if reference is not None else None)}


def find_exports(model_dir: str) -> List[str]:
  folder = os.path.join(model_dir, export.EXPORT_FOLDER)
  if not tf.io.gfile.isdir(folder):
    return []
  paths = [os.path.join(folder, name.rstrip('/'))
           for name in sorted(tf.io.gfile.listdir(folder))]
  return [p for p in paths if p.endswith('.tflite') or
          tf.io.gfile.exists(os.path.join(p, 'saved_model.pb'))]


def checkpoint_bytes(checkpoint: Optional[str]) -> Optional[int]:
  """Bytes of one checkpoint's index and data shards."""
  if not checkpoint:
    return None
  return sum(export.file_size(p) for p in tf.io.gfile.glob(checkpoint + '.*'))


def report_run(model_dir: str, exports: Optional[Sequence[str]] = None,
               latency_runs: int = 50, out: Optional[str] = None) -> dict:
  """Measures the run's teacher, model and exports; writes and returns the report."""
  if latency_runs < 1:
    raise UserError(f'--latency_runs {latency_runs} must be at least 1.')
  export.check_finished(model_dir)
  exports = list(exports) if exports is not None else find_exports(model_dir)
  exported = [(path, open_model(path)) for path in exports]  # fail early
  restored = evaluate.restore_run(model_dir, export.EXPORT_BINDINGS)
  images = read_test_images(restored)
  params = restored.trainer.model.count_params()
  checkpoint_time = _mtime(restored.checkpoint + '.index')
  with tempfile.TemporaryDirectory(prefix='fmx-report-') as tmp:
    rows, runners = _float_models(restored, tmp)
    for path, runner in exported:
      relative = os.path.relpath(path, model_dir)
      rows.append({'name': path if relative.startswith('..') else relative,
                   'path': path, 'bytes': export.file_size(path), 'params': params,
                   'older_than_checkpoint': _mtime(path) < checkpoint_time})
      runners.append(runner)
    _measure(rows, runners, images, latency_runs)
  task = restored.setup.task
  report = {'run': model_dir, 'checkpoint': restored.checkpoint,
            'test_split': f'{task.data.eval_dataset}:{task.data.test_split}',
            'test_images': len(images.images), 'latency_runs': latency_runs,
            'tflite_threads': os.cpu_count(), 'models': rows}
  out = out or os.path.join(model_dir, REPORT_FILE)
  run_dir.write_text(out, json.dumps(report, indent=2) + '\n')
  report['written_to'] = out
  return report


def _float_models(restored: evaluate.RestoredRun, folder: str):
  """Rows and runners of the teacher and student as float32 SavedModels."""
  task, checkpoint = restored.setup.task, restored.checkpoint
  params = restored.trainer.model.count_params()
  teacher = getattr(task, 'teacher', None)
  # (name, is the distillation teacher, parameters, checkpoint)
  models = [('teacher', False, params, checkpoint)]  # a teacher run's model
  if teacher is not None:
    models = [('teacher', True, teacher.count_params(), _teacher_checkpoint(task)),
              ('student', False, params, checkpoint)]
  rows, runners = [], []
  for name, is_teacher, count, model_checkpoint in models:
    path = os.path.join(folder, name)
    export.save_saved_model(export.Servable.from_run(restored, is_teacher), path)
    rows.append({'name': name, 'path': None, 'bytes': export.file_size(path),
                 'params': count, 'checkpoint_bytes': checkpoint_bytes(model_checkpoint)})
    runners.append(SavedModelRunner(path))
  return rows, runners


def _measure(rows: List[dict], runners: Sequence, images: SplitImages,
             latency_runs: int) -> None:
  """Adds accuracy, latency and the ratios to the first row to every row."""
  reference = None  # the first row's predictions: the teacher's
  for row, runner in zip(rows, runners):
    predictions = predict(runner, images)
    row.update(format=runner.kind, **accuracy(predictions, images, reference))
    if reference is None:
      reference = predictions
  for batch_size in LATENCY_BATCHES:
    key = f'batch{batch_size}'
    for row, latency in zip(rows, latencies_ms(runners, images, batch_size,
                                               latency_runs)):
      row.setdefault('latency_ms', {})[key] = latency
  base = rows[0]
  for row in rows:
    row['size_ratio'] = base['bytes'] / row['bytes']
    row['speedup'] = {key: base['latency_ms'][key]['p50'] / latency['p50']
                      for key, latency in row['latency_ms'].items()}


def _teacher_checkpoint(task) -> Optional[str]:
  teacher_dir = getattr(task, 'teacher_run', None)
  return tf.train.latest_checkpoint(teacher_dir) if teacher_dir else None


def _mtime(path: str) -> float:
  return tf.io.gfile.stat(path).mtime_nsec / 1e9


def _megabytes(count: int) -> str:
  return f'{count / 1e6:.2f} MB' if count >= 1e5 else f'{count / 1e3:.1f} kB'


def format_table(report: dict) -> str:
  """The report as a table; ratios are to the first row, the teacher."""
  header = ('', 'format', 'size', 'smaller', 'params', 'top-1', 'agreement',
            'ms/img b1 p50/p90', 'ms/img b32 p50/p90', 'faster b1/b32')
  rows = [header]
  for row in report['models']:
    latency = row['latency_ms']
    rows.append((
        row['name'] + (' (stale)' if row.get('older_than_checkpoint') else ''),
        row['format'], _megabytes(row['bytes']), f'{row["size_ratio"]:.1f}x',
        f'{row["params"]:,}',
        f'{row["top1"]:.2%}' if row['top1'] is not None else '-',
        f'{row["agreement"]:.2%}' if row['agreement'] is not None else '-',
        f'{latency["batch1"]["p50"]:.3f} / {latency["batch1"]["p90"]:.3f}',
        f'{latency["batch32"]["p50"]:.3f} / {latency["batch32"]["p90"]:.3f}',
        f'{row["speedup"]["batch1"]:.1f}x / {row["speedup"]["batch32"]:.1f}x'))
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  lines = ['  '.join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()
           for r in rows]
  first = report['models'][0]
  checkpoint = (f' (the {first["name"]}\'s run checkpoint, with optimiser '
                f'slots: {_megabytes(first["checkpoint_bytes"])})'
                if first['checkpoint_bytes'] else '')
  lines.append(
      f'({report["test_split"]}, {report["test_images"]:,} images; ratios to '
      f'the {first["name"]}; size: SavedModel folder or export file on disk'
      f'{checkpoint}; latency: CPU, {report["latency_runs"]} calls, TFLite '
      f'with {report["tflite_threads"]} threads)')
  if any(row.get('older_than_checkpoint') for row in report['models']):
    lines.append('(stale: exported before the run\'s latest checkpoint; '
                 'export again with --overwrite)')
  return '\n'.join(lines)
