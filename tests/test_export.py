"""`fmx export` and `fmx report`: a run's student served from raw uint8 pixels.

One tiny distillation run (16 x 16 MNIST, 1 channel) is exported in every
format; each export is checked against the Keras student fed by the run's own
eval pipeline, on the test split's raw 28 x 28 images, so the resize and the
value range must happen inside the export.
"""

import json
import os
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_student_gin, write
from fmx import cli, export, report
from fmx.errors import UserError
from fmx.training import evaluate, run

TEST_IMAGES = 100  # the tiny runs' test split, test[:100]
TFLITE_SIZE = 20  # a fixed TFLite input size other than trained (16) and raw (28)


@pytest.fixture(scope='module')
def student(trained_teacher, tmp_path_factory):
  """A finished tiny distillation run: (model_dir, results)."""
  root = tmp_path_factory.mktemp('student')
  model_dir = str(root / 'run')
  # 2 epochs: logits far enough apart that quantisation can be judged by
  # agreement rather than by coin flips between near-equal classes. A 3x3x8x32
  # kernel: TFLite's dynamic range quantisation skips weights under 1,024.
  # A float32 teacher: the int8 agreement check below holds for this tiny
  # student's weights; the student of a bfloat16 teacher (other weights)
  # gave an int8 export that agreed with none of the teacher's predictions.
  gin_file = write(root / 'student.gin',
                   tiny_student_gin(model_dir, trained_teacher[0], epochs=2) +
                   'student/backbones.simple_cnn.widths = (8, 32)\n'
                   "distillation.teacher_precision = 'float32'\n")
  results = run.run([gin_file])
  gin.clear_config()
  return model_dir, results


@pytest.fixture(scope='module')
def exports(student, tmp_path_factory):
  """Every TFLite variant, and the Keras student's logits to compare with.

  One restore for all: the student's weights, raw test images and the
  expected logits are taken while the run's gin config is parsed.
  """
  model_dir, _ = student
  out = tmp_path_factory.mktemp('exports')
  restored = evaluate.restore_run(model_dir, export.EXPORT_BINDINGS)
  task = restored.setup.task
  servable = export.Servable.from_run(restored)
  raw = np.stack([e['image'] for e in task.sources['test'].dataset.as_numpy_iterator()])
  pipeline = task.data.eval_dataset_fn(TEST_IMAGES, source=task.sources['test'])
  expected = restored.trainer.model(next(iter(pipeline))['image'], training=False)
  # At the fixed TFLite size: the caller resizes, the model resizes again.
  at_tflite_size = _resize_uint8(raw, TFLITE_SIZE)
  expected_at_tflite_size = restored.trainer.model(
      tf.image.resize(at_tflite_size / 255.0, (16, 16)), training=False)
  paths = {}
  for quantize in export.QUANTIZATIONS:
    paths[quantize] = str(out / f'{quantize}.tflite')
    flatbuffer = export.tflite_model(servable, quantize, TFLITE_SIZE)
    with open(paths[quantize], 'wb') as f:
      f.write(flatbuffer)
  return {'paths': paths, 'raw': raw, 'expected': expected.numpy(),
          'at_tflite_size': at_tflite_size,
          'expected_at_tflite_size': expected_at_tflite_size.numpy(),
          'labels': np.array([e['label'] for e in
                              task.sources['test'].dataset.as_numpy_iterator()])}


def _resize_uint8(images, size):
  resized = tf.image.resize(tf.cast(images, tf.float32), (size, size))
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


def _tflite_logits(path, images):
  serve = report.tflite_interpreter(path).get_signature_runner('serving_default')
  return serve(images=images)['logits']


def test_saved_model_serves_raw_uint8_of_any_size(student, exports, capsys):
  model_dir, _ = student
  assert cli.main(['export', '--model_dir', model_dir, '--format', 'saved_model']) == 0
  path = os.path.join(model_dir, 'export', 'saved_model')
  assert path in capsys.readouterr().out
  serve = tf.saved_model.load(path).signatures['serving_default']
  spec = serve.structured_input_signature[1]['images']
  assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 1]

  # Raw 28 x 28 test images; the student was trained and is fed at 16 x 16.
  outputs = serve(images=tf.constant(exports['raw']))
  logits, expected = outputs['logits'].numpy(), exports['expected']
  assert logits.shape == (TEST_IMAGES, 10) and logits.dtype == np.float32
  assert expected.std() > 0.1  # a trained model, not constant outputs
  np.testing.assert_allclose(logits, expected, atol=1e-4)
  np.testing.assert_allclose(outputs['probabilities'].numpy(),
                             tf.nn.softmax(expected).numpy(), atol=1e-5)
  # Another size again: the resize inside follows the input.
  np.testing.assert_allclose(
      serve(images=tf.constant(exports['at_tflite_size']))['logits'].numpy(),
      exports['expected_at_tflite_size'], atol=1e-4)

  # Again with --overwrite: replaced in place, nothing else left beside it.
  assert cli.main(['export', '--model_dir', model_dir, '--format', 'saved_model',
                   '--overwrite']) == 0
  assert os.listdir(os.path.dirname(path)) == ['saved_model']


@pytest.mark.parametrize('quantize', export.QUANTIZATIONS)
def test_tflite_matches_the_keras_student(exports, quantize):
  path = exports['paths'][quantize]
  interpreter = report.tflite_interpreter(path)
  inputs = interpreter.get_input_details()
  assert len(inputs) == 1 and inputs[0]['dtype'] == np.uint8
  # Static height and width, dynamic batch.
  assert list(inputs[0]['shape_signature']) == [-1, TFLITE_SIZE, TFLITE_SIZE, 1]
  # The file computes in what was asked, read from its tensors.
  assert report.tflite_weights(interpreter) == (
      'float32' if quantize == 'none' else quantize)

  logits = _tflite_logits(path, exports['at_tflite_size'])
  expected = exports['expected_at_tflite_size']
  agreement = np.mean(logits.argmax(-1) == expected.argmax(-1))
  scale = np.abs(expected).max()
  if quantize == 'none':
    np.testing.assert_allclose(logits, expected, atol=1e-4)
  elif quantize == 'float16':
    # float16 weights, ~3 significant digits each; measured: 0.05% of scale.
    np.testing.assert_allclose(logits, expected, atol=0.01 * scale)
    assert agreement >= 0.98, agreement
  else:
    # int8 steps are 1/255 of each tensor's range; measured: ~1% of scale.
    # Near-ties between classes may flip, hardly any may.
    np.testing.assert_allclose(logits, expected, atol=0.1 * scale)
    assert agreement >= 0.95, agreement


def test_exports_load_without_fmx_or_keras(student, exports, tmp_path):
  saved_model = str(tmp_path / 'saved_model')
  assert cli.main(['export', '--model_dir', student[0], '--format', 'saved_model',
                   '--out', saved_model]) == 0
  np.save(tmp_path / 'raw.npy', exports['raw'][:8])
  np.save(tmp_path / 'small.npy', exports['at_tflite_size'][:8])
  script = r'''
import importlib.abc, json, sys

class NoFmx(importlib.abc.MetaPathFinder):
  """Fails every import of fmx or tf_keras: plain TensorFlow must do."""
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('fmx', 'tf_keras'):
      raise ImportError(name + ' is not installed here')

sys.meta_path.insert(0, NoFmx())
import numpy as np
import tensorflow as tf
saved_model, tflite, raw, small = sys.argv[1:]
serve = tf.saved_model.load(saved_model).signatures['serving_default']
from_saved_model = serve(images=tf.constant(np.load(raw)))['logits'].numpy()
try:
  from ai_edge_litert.interpreter import Interpreter
except ImportError:
  Interpreter = tf.lite.Interpreter
runner = Interpreter(model_path=tflite).get_signature_runner('serving_default')
from_tflite = runner(images=np.load(small))['logits']
print(json.dumps({'saved_model': from_saved_model.tolist(),
                  'tflite': from_tflite.tolist(),
                  'modules': sorted(m for m in sys.modules
                                    if m.split('.')[0] in ('fmx', 'tf_keras'))}))
'''
  # A serving machine's environment: no PYTHONPATH, and not the
  # TF_USE_LEGACY_KERAS that `fmx` sets for itself (and its children).
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'TF_USE_LEGACY_KERAS')}
  # -I: isolated mode, neither the current folder nor PYTHONPATH on sys.path.
  done = subprocess.run(
      [sys.executable, '-I', '-c', script, saved_model, exports['paths']['none'],
       str(tmp_path / 'raw.npy'), str(tmp_path / 'small.npy')],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  outputs = json.loads(done.stdout.strip().splitlines()[-1])
  assert outputs['modules'] == []
  np.testing.assert_allclose(outputs['saved_model'], exports['expected'][:8], atol=1e-4)
  np.testing.assert_allclose(outputs['tflite'],
                             exports['expected_at_tflite_size'][:8], atol=1e-4)


def test_report_measures_teacher_student_and_exports(trained_teacher, student,
                                                     exports, tmp_path, capsys):
  model_dir, results = student
  saved_model = str(tmp_path / 'saved_model')
  assert cli.main(['export', '--model_dir', model_dir, '--format', 'saved_model',
                   '--out', saved_model]) == 0
  out = str(tmp_path / 'report.json')
  assert cli.main(['report', '--model_dir', model_dir, '--exports', saved_model,
                   exports['paths']['int8'], '--latency_runs', '3',
                   '--out', out]) == 0
  table = capsys.readouterr().out
  rows = {row['name']: row for row in json.load(open(out))['models']}
  teacher, student_row = rows['teacher'], rows['student']
  exported, int8 = rows[saved_model], rows[exports['paths']['int8']]
  assert list(rows) == ['teacher', 'student', saved_model, exports['paths']['int8']]
  for name in rows:
    assert name in table

  # Served from raw pixels, the float models score what training measured.
  assert np.isclose(teacher['top1'], results['teacher_top1'])
  assert np.isclose(student_row['top1'], results['student_top1'])
  assert np.isclose(student_row['agreement'], results['agreement'])
  assert np.isclose(exported['top1'], results['student_top1'])
  assert teacher['agreement'] is None
  assert int8['format'] == 'int8 TFLite' and int8['agreement'] >= 0.8
  # 100 test images: every accuracy is a multiple of 1/100.
  assert np.isclose(int8['top1'] * 100, round(int8['top1'] * 100))

  assert teacher['params'] == results['teacher_params']
  assert student_row['params'] == exported['params'] == results['student_params']
  # (This tiny student is no smaller than its teacher: see the fixture.)
  assert student_row['bytes'] > int8['bytes'] > 0 and teacher['bytes'] > 0
  assert np.isclose(student_row['size_ratio'], teacher['bytes'] / student_row['bytes'])
  checkpoint = tf.train.latest_checkpoint(trained_teacher[0])
  assert teacher['checkpoint_bytes'] == sum(
      os.path.getsize(p) for p in tf.io.gfile.glob(checkpoint + '.*'))
  for row in rows.values():
    for batch in ('batch1', 'batch32'):
      latency = row['latency_ms'][batch]
      assert 0 < latency['p50'] <= latency['p90'], (row['name'], batch)


def test_unfinished_run_is_refused_and_nothing_is_written(student, tmp_path, capsys):
  unfinished = str(tmp_path / 'unfinished')
  shutil.copytree(student[0], unfinished, ignore=shutil.ignore_patterns('export'))
  os.remove(os.path.join(unfinished, 'results.json'))
  before = sorted(os.listdir(unfinished))
  assert cli.main(['export', '--model_dir', unfinished, '--format',
                   'tflite']) == cli.EXIT_USER_ERROR
  error = capsys.readouterr().err
  assert unfinished in error and 'results.json' in error and 'fmx run' in error
  assert len(error.strip().splitlines()) == 1
  assert sorted(os.listdir(unfinished)) == before


def test_existing_destination_needs_overwrite(student, tmp_path, capsys):
  out = tmp_path / 'model.tflite'
  out.write_bytes(b'an earlier export')
  assert cli.main(['export', '--model_dir', student[0], '--format', 'tflite',
                   '--out', str(out)]) == cli.EXIT_USER_ERROR
  error = capsys.readouterr().err
  assert str(out) in error and '--overwrite' in error
  assert out.read_bytes() == b'an earlier export'
  assert os.listdir(tmp_path) == ['model.tflite']


def test_a_failed_write_leaves_nothing_and_keeps_the_old_export(tmp_path):
  def fail(tmp):
    os.makedirs(tmp)
    open(os.path.join(tmp, 'half'), 'w').close()
    raise RuntimeError('conversion failed')

  new = tmp_path / 'new' / 'deeper' / 'saved_model'
  with pytest.raises(RuntimeError):
    export.write_atomically(str(new), fail)
  assert os.listdir(tmp_path) == []  # not even the folders made for it

  old = tmp_path / 'model.tflite'
  old.write_bytes(b'old')
  with pytest.raises(RuntimeError):
    export.write_atomically(str(old), fail)
  assert old.read_bytes() == b'old' and os.listdir(tmp_path) == ['model.tflite']
  export.write_atomically(str(old), lambda tmp: open(tmp, 'wb').write(b'new'))
  assert old.read_bytes() == b'new' and os.listdir(tmp_path) == ['model.tflite']


def test_argument_mistakes_are_user_errors(student):
  with pytest.raises(UserError, match='apply to --format tflite'):
    export.export_run(student[0], 'saved_model', quantize='int8')
  with pytest.raises(UserError, match='not an fmx run folder'):
    export.export_run(os.path.dirname(student[0]), 'tflite')


def test_report_finds_the_exports_fmx_export_writes(tmp_path):
  folder = tmp_path / 'export'
  (folder / 'saved_model').mkdir(parents=True)
  (folder / 'saved_model' / 'saved_model.pb').write_bytes(b'')
  (folder / 'not_a_model').mkdir()
  (folder / 'model_int8.tflite').write_bytes(b'')
  (folder / 'notes.txt').write_text('')
  assert report.find_exports(str(tmp_path)) == [
      str(folder / 'model_int8.tflite'), str(folder / 'saved_model')]
  assert report.find_exports(str(tmp_path / 'elsewhere')) == []


def test_a_teacher_run_exports_and_reports_its_own_model(trained_teacher, tmp_path):
  model_dir, _, results = trained_teacher
  out = str(tmp_path / 'teacher.tflite')
  assert cli.main(['export', '--model_dir', model_dir, '--format', 'tflite',
                   '--out', out]) == 0
  report_json = str(tmp_path / 'report.json')
  assert cli.main(['report', '--model_dir', model_dir, '--exports', out,
                   '--latency_runs', '1', '--out', report_json]) == 0
  teacher, exported = json.load(open(report_json))['models']
  assert (teacher['name'], exported['name']) == ('teacher', out)
  assert teacher['params'] == exported['params'] == results['params']
  assert np.isclose(teacher['top1'], results['top1'])
  assert np.isclose(exported['top1'], results['top1'])
  assert exported['agreement'] >= 0.99 and exported['format'] == 'float32 TFLite'
