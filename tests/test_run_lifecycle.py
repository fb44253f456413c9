"""A run's life around its training: what a teacher trained first inherits,
reruns of finished runs, dry-run leftovers, short runs' evaluation, and
`fmx tensorboard` stopping its server.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import tf_keras

from conftest import REPO, tiny_teacher_gin, write
from fmx.registry import DATASETS
from fmx.training import batch_norm
from fmx.training import evaluate
from fmx.training import run
from fmx.training import run_dir
from fmx.training import teacher_bindings


# --- What a teacher run trained first inherits ------------------------------

@pytest.mark.parametrize('dataset', DATASETS.names())
def test_teacher_inherits_every_dataset_entrys_bindings(dataset):
  for key in (f'{dataset}.some_parameter', f'datasets.{dataset}.some_parameter',
              f'train/{dataset}.some_parameter', f'eval/datasets.{dataset}.p'):
    assert teacher_bindings.inherited([f"{key} = '/data'"]) == [f"{key} = '/data'"]


def test_teacher_inherits_data_reading_and_runtime_not_the_students_recipe():
  inherited = ["Data.cache = 'none'", ' Data.shuffle_buffer = 64',
               "Runtime.distribution_strategy = 'multi_worker_mirrored'",
               'fmx.data.pipeline.Data.skip_corrupt = True',
               'Runtime.intra_op_threads=1']
  # The student's data recipe: its distillation set, resolution, MixUp.
  students = ["Data.train_split = 'train[:200]'", 'Data.image_size = 64',
              "Data.train_dataset = 'sklearn_digits'", "Data.mixup = 'mixup_roll'",
              'Training.epochs = 1', 'Optimizer.learning_rate = 0.1',
              "Experiment.model_dir = '/runs/x'", "distillation.teaching = 'consistent'",
              'student/backbones.simple_cnn.widths = (4, 8)',
              'teacher/backbones.simple_cnn.widths = (4, 8)',
              'losses.kl.temperature = 2.0', 'augmentations.inception_crop.area_min = 0.1',
              'LR = 0.1', "include 'gin/data/pets37_tfds.gin'"]
  assert teacher_bindings.inherited(students + inherited) == inherited


# --- Finished runs, --model_dir, dry runs -----------------------------------

def test_rerunning_a_finished_run_changes_nothing_and_records_its_folder(
    trained_teacher, tmp_path, capsys):
  source_dir, gin_file, results = trained_teacher
  model_dir = str(tmp_path / 'copy')  # the gin file names source_dir
  shutil.copytree(source_dir, model_dir)
  before = open(os.path.join(model_dir, 'results.json'), 'rb').read()
  again = run.run([gin_file], model_dir=model_dir)
  assert again == results
  assert open(os.path.join(model_dir, 'results.json'), 'rb').read() == before
  assert not glob.glob(os.path.join(model_dir, 'results.before-*'))
  assert 'has finished (step 8 of 8)' in capsys.readouterr().out
  # The operative config names the folder used, not the gin file's.
  config = run_dir.parse_config(
      open(os.path.join(model_dir, 'operative_config.gin')).read())
  assert config['Experiment.model_dir'] == repr(model_dir)


@pytest.mark.parametrize('keep', [False, True])
def test_dry_run_removes_its_temporary_folder(tmp_path, monkeypatch, keep):
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  roots = []

  def dry_run(gin_files, bindings, model_dir, root, allow_config_change):
    roots.append(root)  # what a dry run leaves: teachers, checkpoints, ...
    write(os.path.join(root, 'ckpt-1.index'), 'x' * 1000)
    return {'global_step': 1}

  monkeypatch.setattr(run, '_run', dry_run)
  results = run.run(['any.gin'], dry_run=True, keep_dry_run=keep)
  assert roots[0].startswith(str(tmp_path / 'fmx-dry-run-'))
  assert results['dry_run'] and results['dry_run_dir'] == (roots[0] if keep else None)
  assert os.path.exists(roots[0]) == keep


def test_dry_run_table_has_no_compression_of_a_stand_in_teacher():
  results = {'task': 'distillation', 'teacher_top1': 0.1, 'student_top1': 0.1,
             'teacher_top5': 0.5, 'student_top5': 0.5, 'teacher_params': 100,
             'student_params': 10_000, 'agreement': 0.2, 'kl': 1.0,
             'test_split': 'x:test', 'global_step': 1}
  assert 'compression' in run.format_results(results)
  assert 'compression' not in run.format_results(dict(results, dry_run=True))


# --- Short runs: BatchNorm statistics ---------------------------------------

@pytest.mark.parametrize('momentum, first_long_run', [(0.9, 100), (0.99, 1000)])
def test_a_run_is_short_below_ten_windows_of_its_batch_norm(momentum,
                                                           first_long_run):
  model = tf_keras.Sequential([tf_keras.Input((4,)),
                               tf_keras.layers.BatchNormalization(momentum=momentum)])
  layers = batch_norm.batch_norm_layers(model)
  assert len(layers) == 1
  assert batch_norm.is_short(layers, first_long_run - 1)
  assert not batch_norm.is_short(layers, first_long_run)
  assert not batch_norm.is_short([], 1)  # nothing to recompute


def test_recomputed_statistics_are_the_average_over_the_batches():
  rng = np.random.default_rng(0)
  batches = [{'image': rng.normal(3.0 * i, 1.0 + i, (64, 5)).astype(np.float32)}
             for i in range(3)]
  model = tf_keras.Sequential([tf_keras.Input((5,)),
                               tf_keras.layers.BatchNormalization(momentum=0.9)])
  layer = model.layers[0]
  batch_norm.recompute(model, [layer], batches)
  np.testing.assert_allclose(
      layer.moving_mean.numpy(),
      np.mean([b['image'].mean(0) for b in batches], 0), rtol=1e-5)
  # Each batch's own variance (a non-fused layer's is the biased one).
  np.testing.assert_allclose(
      layer.moving_variance.numpy(),
      np.mean([b['image'].var(0) for b in batches], 0), rtol=1e-4)
  assert layer.momentum == 0.9  # restored


def test_one_epoch_demo_teacher_evaluates_far_above_chance(tmp_path):
  """29 steps: BatchNorm's moving averages alone gave 9% (10 classes)."""
  model_dir = str(tmp_path / 'demo_teacher')
  results = run.run([os.path.join(REPO, 'experiments', 'demo_teacher.gin')],
                    ['Training.epochs = 1', 'Training.evals = 1'],
                    model_dir=model_dir)
  print(f"1-epoch demo teacher: test top-1 {results['top1']:.4f}")
  assert results['train_steps'] == 29
  assert results['top1'] >= 0.8
  # The checkpoint holds the statistics evaluated: `fmx eval` agrees.
  assert evaluate.evaluate_run(model_dir)['top1'] == results['top1']


# --- fmx tensorboard --------------------------------------------------------

def _port_free(port):
  with socket.socket() as s:
    try:
      s.bind(('localhost', port))
      return True
    except OSError:
      return False


def test_tensorboard_stops_its_server_on_sigterm(tmp_path):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  process = subprocess.Popen(
      [sys.executable, '-m', 'fmx.cli', 'tensorboard', str(tmp_path),
       '--port', str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, start_new_session=True)
  try:
    deadline = time.monotonic() + 60
    while _port_free(port):
      assert time.monotonic() < deadline, 'TensorBoard did not start'
      assert process.poll() is None, process.communicate()
      time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert 'resume' not in err
    deadline = time.monotonic() + 10
    while not _port_free(port):  # the server went with it
      assert time.monotonic() < deadline, 'TensorBoard still holds the port'
      time.sleep(0.2)
  finally:
    try:
      os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
    except ProcessLookupError:
      pass
