"""Whole runs through `fmx run`: teacher, distillation, teacher-first, resume."""

import hashlib
import json
import logging
import os

import pytest
import tensorflow as tf

from conftest import tiny_student_gin, tiny_teacher_gin, write
from fmx import cli
from fmx.errors import UserError
from fmx.training import run
from fmx.training import run_dir


def _digest(folder):
  digest = {}
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), 'rb') as f:
        digest[os.path.relpath(os.path.join(root, name), folder)] = hashlib.md5(
            f.read()).hexdigest()
  return digest


def test_teacher_run_writes_results_config_and_checkpoint(trained_teacher):
  model_dir, _, results = trained_teacher
  on_disk = json.load(open(os.path.join(model_dir, 'results.json')))
  assert on_disk == results
  assert 0.0 <= results['top1'] <= 1.0 and results['params'] > 0
  assert results['global_step'] == results['train_steps'] == 8  # 0.5 x 256 / 16
  assert os.path.exists(os.path.join(model_dir, 'model.json'))
  config = open(os.path.join(model_dir, 'operative_config.gin')).read()
  assert "teacher.backbone = 'simple_cnn'" in config
  assert 'Training.epochs = 0.5' in config
  assert any(f.startswith('ckpt-8') for f in os.listdir(model_dir))
  # The first augmented batch is in TensorBoard's images.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(
      os.path.join(model_dir, 'train'), size_guidance={'tensors': 0})
  events.Reload()
  images = events.Tensors('inputs/student')
  assert images and len(images[0].tensor_proto.string_val) == 2 + 16  # w, h, PNGs


def test_distillation_run_leaves_teacher_run_untouched(trained_teacher, tmp_path, capsys):
  teacher_dir = trained_teacher[0]
  before = _digest(teacher_dir)
  model_dir = str(tmp_path / 'student')
  gin_file = write(tmp_path / 'student.gin', tiny_student_gin(model_dir, teacher_dir))
  assert cli.main(['run', '--gin', gin_file]) == 0
  assert _digest(teacher_dir) == before
  results = json.load(open(os.path.join(model_dir, 'results.json')))
  for key in ('student_top1', 'teacher_top1', 'agreement', 'student_params',
              'teacher_params', 'kl'):
    assert key in results
  assert results['teacher_top1'] == trained_teacher[2]['top1']
  assert results['student_params'] < results['teacher_params']
  table = capsys.readouterr().out
  assert 'agreement' in table and 'compression' in table
  # Only the student is checkpointed: its model variables are exactly the
  # student's (the teacher's convolutions have other shapes).
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from fmx.tasks import teacher_run  # pylint: disable=g-import-not-at-top
  stored = sorted(tuple(shape) for name, shape in
                  tf.train.list_variables(tf.train.latest_checkpoint(model_dir))
                  if name.startswith('model/') and 'OPTIMIZER' not in name)
  from fmx.registry import BACKBONES  # pylint: disable=g-import-not-at-top
  student = BACKBONES.get('simple_cnn')(num_classes=10, input_shape=(16, 16, 1),
                                        widths=(4, 8), convs_per_stage=1)
  teacher = teacher_run.load_teacher(teacher_dir)
  assert stored == sorted(tuple(v.shape) for v in student.variables)
  assert stored != sorted(tuple(v.shape) for v in teacher.variables)


def test_unfinished_teacher_is_trained_first_then_reused(tmp_path, capsys):
  teacher_dir = str(tmp_path / 'teacher')
  teacher_gin = write(tmp_path / 'teacher.gin', tiny_teacher_gin(teacher_dir, epochs=0.25))
  student_gin = write(tmp_path / 'student.gin', tiny_student_gin(
      str(tmp_path / 'student'), teacher_dir, teacher_gin=teacher_gin, epochs=0.25))
  # The teacher inherits the data and runtime bindings, not the student's
  # training ones (the teacher gin's learning rate is 3e-3).
  assert cli.main(['run', '--gin', student_gin,
                   '--bind', 'Data.shuffle_buffer = 32',  # how data is read: inherited
                   '--bind', 'Optimizer.learning_rate = 0.01']) == 0
  out = capsys.readouterr().out
  assert 'training it first' in out
  assert 'the teacher inherits: Data.shuffle_buffer = 32' in out
  assert "the student's alone: Optimizer.learning_rate = 0.01" in out
  assert os.path.exists(os.path.join(teacher_dir, 'results.json'))
  config = run_dir.parse_config(
      open(os.path.join(teacher_dir, 'operative_config.gin')).read())
  assert config['Data.shuffle_buffer'] == '32'
  assert config['Optimizer.learning_rate'] == '0.003'
  before = _digest(teacher_dir)
  assert cli.main(['run', '--gin', student_gin, '--model_dir',
                   str(tmp_path / 'student2')]) == 0
  assert 'training it first' not in capsys.readouterr().out
  assert _digest(teacher_dir) == before


def test_missing_teacher_without_gin_is_a_clear_error(tmp_path, capsys):
  student_gin = write(tmp_path / 'student.gin', tiny_student_gin(
      str(tmp_path / 'student'), str(tmp_path / 'no_teacher')))
  assert cli.main(['run', '--gin', student_gin]) == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert 'has no finished checkpoint' in err and 'no_teacher' in err


def test_second_run_resumes_from_checkpoint(trained_teacher, tmp_path, caplog, capsys):
  model_dir = str(tmp_path / 'student')
  gin_file = write(tmp_path / 'student.gin',
                   tiny_student_gin(model_dir, trained_teacher[0], epochs=0.5))
  first = run.run([gin_file])
  assert first['global_step'] == 8
  first_seconds = _saved_train_seconds(model_dir, 8)
  # A longer run is another config: refused unless asked for, and the folder
  # is left as it was.
  before = _digest(model_dir)
  with pytest.raises(UserError, match=r'Training\.epochs: 0\.5 -> 1\.0.*--allow_config_change'):
    run.run([gin_file], bindings=['Training.epochs = 1.0'])
  assert _digest(model_dir) == before
  with caplog.at_level(logging.INFO, logger='absl'):  # Orbit logs via absl
    second = run.run([gin_file], bindings=['Training.epochs = 1.0'],
                     allow_config_change=True)
  assert any('restored from checkpoint' in r.getMessage() and 'ckpt-8' in r.getMessage()
             for r in caplog.records)
  assert 'resuming from the checkpoint at step 8' in capsys.readouterr().out
  assert second['global_step'] == 16
  # results.json's train_seconds is what the final checkpoint holds (not
  # the final evaluations after it); the second invocation restores the
  # first's and adds its own.
  assert 0 < first_seconds and first['train_seconds'] == round(first_seconds, 1)
  second_seconds = _saved_train_seconds(model_dir, 16)
  assert second_seconds > first_seconds
  assert second['train_seconds'] == round(second_seconds, 1)
  steps = sorted(int(f.split('-')[1].split('.')[0]) for f in os.listdir(model_dir)
                 if f.startswith('ckpt-') and f.endswith('.index'))
  assert steps[-1] == 16 and 8 in steps
  assert any(f.startswith('operative_config.before-') for f in os.listdir(model_dir))


def _saved_train_seconds(model_dir: str, step: int) -> float:
  """The training time (fmx's TrainClock) saved in the checkpoint at `step`."""
  reader = tf.train.load_checkpoint(os.path.join(model_dir, f'ckpt-{step}'))
  [key] = [k for k in reader.get_variable_to_shape_map()
           if k.startswith('fmx_train_seconds/')]
  return float(reader.get_tensor(key))


def _corrupt_tfrecord_teacher_gin(tmp_path, skip: bool) -> str:
  from test_data_sources import write_original_tfrecords  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'records')
  write_original_tfrecords(root, sizes={'train': 24, 'test': 8}, corrupt=('train', 5))
  pattern = os.path.join(root, '{split}', '*.tfrec')
  text = tiny_teacher_gin(str(tmp_path / 'run'), epochs=1.0).replace(
      "'mnist_embedded'", "'tfrecords'")
  text = text.replace("Data.train_split = 'train[:256]'", "Data.train_split = 'train'")
  text = text.replace("Data.eval_split = 'train[256:320]'", "Data.eval_split = 'test'")
  text = text.replace("Data.test_split = 'test[:100]'", "Data.test_split = 'test'")
  text += (f"\ntfrecords.file_pattern = '{pattern}'\ntfrecords.num_classes = 37\n"
           "Training.global_batch_size = 8\nData.shuffle_buffer = 1\n"
           f"Data.skip_corrupt = {skip}\n")
  return write(tmp_path / 'teacher.gin', text)


def test_corrupt_image_met_in_training_is_one_paragraph_error(tmp_path, capsys):
  gin_file = _corrupt_tfrecord_teacher_gin(tmp_path, skip=False)
  assert cli.main(['run', '--gin', gin_file]) == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  errors = [l for l in err.splitlines() if l.startswith('fmx: error:')]
  assert len(errors) == 1 and 'Traceback' not in err
  assert 'train_pets37-0-24.tfrec' in err and 'Data.skip_corrupt = True' in err
  assert not os.path.exists(tmp_path / 'run' / 'results.json')


def test_corrupt_image_skipped_and_counted_in_results(tmp_path):
  results = run.run([_corrupt_tfrecord_teacher_gin(tmp_path, skip=True)])
  assert results['skipped_corrupt'] == 1
  assert json.load(open(tmp_path / 'run' / 'results.json'))['skipped_corrupt'] == 1
