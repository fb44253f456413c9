"""Class names from the data to the run folder, the export and `fmx predict`;
eval and export of a chosen checkpoint; the metrics a grid declares.

The session's tiny teacher and student runs (tests/conftest.py) serve every
test; exports go to tmp_path, so test_export's MODEL_DIR/export is untouched.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from fmx import cli, grid, inspect_data
from fmx.registry import DATASETS
from fmx.training import labels, run

DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope='module')
def student(trained_student):
  return trained_student[0]


@pytest.fixture(scope='module')
def digit_images(tmp_path_factory):
  """Four test images of the embedded MNIST as PNG files, and their labels."""
  folder = tmp_path_factory.mktemp('digits')
  source = DATASETS.get('mnist_embedded')(split='test[:4]')
  found = []
  for index, example in enumerate(source.dataset.as_numpy_iterator()):
    path = str(folder / f'{index}.png')
    tf.io.write_file(path, tf.io.encode_png(example['image']))
    found.append((path, example['image'], int(example['label'])))
  return str(folder), found


def _png(path, colour):
  tf.io.write_file(str(path), tf.io.encode_png(np.full((8, 8, 3), colour, np.uint8)))


def test_runs_store_their_class_names(trained_teacher, student):
  for model_dir in (trained_teacher[0], student):
    assert labels.read(model_dir) == DIGITS
  with open(os.path.join(student, 'labels.txt')) as f:
    assert f.read() == ''.join(f'{d}\n' for d in DIGITS)


def test_start_summary_names_dataset_classes_and_split_sizes(tmp_path, capsys):
  for name in ('triangle', 'circle', 'square'):
    (tmp_path / name).mkdir()
    for k in range(2):
      _png(tmp_path / name / f'{k}.png', k * 100)
  source = DATASETS.get('image_folder')(split='train', root=str(tmp_path))
  assert source.label_names() == ['circle', 'square', 'triangle']

  class Task:  # the sources a task resolved, as labels.summary reads them
    sources = {'train': source, 'eval': source, 'test': source}
  assert labels.summary(Task, labels.of_task(Task)) == (
      'data: image_folder:train, 3 classes: circle, square, triangle; '
      '6 train / 6 test images')


def test_tfrecords_without_names_are_numbered_and_a_wrong_list_is_refused():
  from fmx.data.source import Source, checked_class_names  # pylint: disable=g-import-not-at-top
  unnamed = Source('x', tf.data.Dataset.range(1), 1, 3, 3)
  assert unnamed.label_names() == ['class 0', 'class 1', 'class 2']
  from fmx.errors import UserError  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match='lists 2 class names but the data has 3'):
    checked_class_names(['a', 'b'], 3, 'tfrecords.class_names')


def test_inspect_data_titles_images_with_class_names():
  stats = {'class_names': ['circle', 'square'], 'labels': np.array([1, 0]),
           'partners': np.array([1, 0])}
  assert inspect_data.image_title(stats, 0) == '#0 square +#1'
  assert inspect_data.image_title(dict(stats, class_names=None), 1) == '#1 unlabeled +#0'


def _first_checkpoint(model_dir) -> int:
  return min(int(name[len('ckpt-'):-len('.index')]) for name in os.listdir(model_dir)
             if name.startswith('ckpt-') and name.endswith('.index'))


def test_export_and_eval_of_a_chosen_checkpoint(student, tmp_path, capsys):
  first = _first_checkpoint(student)
  assert cli.main(['eval', '--model_dir', student, '--checkpoint', str(first)]) == 0
  with open(os.path.join(student, f'eval-test_100-step{first}.json')) as f:
    assert json.load(f)['global_step'] == first
  out = str(tmp_path / 'saved_model')
  assert cli.main(['export', '--model_dir', student, '--format', 'saved_model',
                   '--checkpoint', str(first), '--out', out]) == 0
  # Reference: the logits kernel (the one 2-D kernel) as that checkpoint stores it.
  reader = tf.train.load_checkpoint(os.path.join(student, f'ckpt-{first}'))
  shapes = reader.get_variable_to_shape_map()
  name, = [n for n in shapes if n.startswith('model/') and n.endswith(
      'kernel/.ATTRIBUTES/VARIABLE_VALUE') and len(shapes[n]) == 2]
  exported, = [v.numpy() for v in tf.saved_model.load(out).model_weights
               if v.name.startswith('logits/kernel')]
  np.testing.assert_array_equal(exported, reader.get_tensor(name))
  capsys.readouterr()
  assert cli.main(['eval', '--model_dir', student, '--checkpoint', '99999']) == 2
  assert f'its checkpoints are at steps {first}' in capsys.readouterr().err


def test_predict_on_a_run_and_its_export_names_the_top_classes(
    trained_teacher, digit_images, capsys, tmp_path):
  model_dir = trained_teacher[0]
  folder, images = digit_images
  out = str(tmp_path / 'saved_model')
  assert cli.main(['export', '--model_dir', model_dir, '--format', 'saved_model',
                   '--out', out]) == 0
  # Reference: the SavedModel's own signature, called directly.
  serve = tf.saved_model.load(out).signatures['serving_default']
  with open(os.path.join(out, 'assets', 'labels.txt')) as f:
    assert f.read().split() == DIGITS
  expected = {}
  for path, image, _ in images:
    outputs = serve(images=tf.constant(image[np.newaxis]))
    assert [n.decode() for n in outputs['class_names'][0].numpy()] == DIGITS
    probabilities = outputs['probabilities'][0].numpy()
    order = np.argsort(-probabilities)[:3]
    expected[path] = [(DIGITS[k], probabilities[k]) for k in order]
  capsys.readouterr()
  for model in (model_dir, out):
    assert cli.main(['predict', '--model_dir', model, folder, '--top_k', '3']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(images)
    for line in lines:
      path, top = line.split(': ')
      shown = [entry.rsplit(' ', 1) for entry in top.split(', ')]
      assert [name for name, _ in shown] == [n for n, _ in expected[path]]
      for (_, percent), (_, p) in zip(shown, expected[path]):
        assert float(percent.rstrip('%')) == pytest.approx(100 * p, abs=0.051)


def test_grid_declares_the_metrics_its_runs_log(trained_teacher, student, tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top

  def logged(model_dir):
    tags = set()
    for group in ('test', 'validation'):
      for event_file in tf.io.gfile.glob(os.path.join(model_dir, group, 'events.*')):
        for event in tf.compat.v1.train.summary_iterator(event_file):
          tags |= {(group, value.tag) for value in event.summary.value}
    return tags

  def declared(task):
    root = str(tmp_path / task)
    grid.write_hparams_config(root, {'Training.seed': [0, 1]}, task)
    accumulator = event_accumulator.EventAccumulator(root)
    accumulator.Reload()
    for blob in accumulator.PluginTagToContent('hparams').values():
      data = plugin_data_pb2.HParamsPluginData.FromString(blob)
      if data.HasField('experiment'):
        return {(m.name.group, m.name.tag) for m in data.experiment.metric_infos}
    return set()

  for model_dir, task in ((trained_teacher[0], 'teacher'), (student, 'distillation')):
    metrics = declared(task)
    assert ('test', 'student_top1' if task == 'distillation' else 'top1') in metrics
    assert metrics <= logged(model_dir), (task, metrics - logged(model_dir))


def test_progress_bar_label_and_top5_of_few_classes():
  from fmx.training import progress  # pylint: disable=g-import-not-at-top
  assert progress.bar_label('teacher', 'runs/demo/teacher/') == 'teacher'
  assert progress.bar_label('distillation', 'runs/demo/student') == 'distillation student'
  results = {'task': 'distillation', 'teacher_top1': 0.9, 'student_top1': 0.8,
             'teacher_top5': 1.0, 'student_top5': 1.0, 'teacher_params': 10,
             'student_params': 5, 'agreement': 0.9, 'kl': 0.1,
             'test_split': 'x:test', 'global_step': 3}
  assert 'top-5' not in run.format_results(dict(results, num_classes=3))
  assert 'top-5' in run.format_results(dict(results, num_classes=10))


def test_skipped_corrupt_image_is_reported_on_its_own_line(tmp_path, capfd):
  (tmp_path / 'a').mkdir()
  _png(tmp_path / 'a' / '0.png', 10)
  (tmp_path / 'a' / '1.png').write_bytes(b'not an image')
  _png(tmp_path / 'a' / '2.png', 20)
  source = DATASETS.get('image_folder')(split='train', root=str(tmp_path),
                                        skip_corrupt=True)
  list(source.dataset)
  assert '\nfmx: skipping 1 corrupt image(s)' in capfd.readouterr().err


def test_native_stderr_is_held_back_unless_the_block_fails(capfd):
  from fmx import export  # pylint: disable=g-import-not-at-top
  with export.native_stderr_kept_on_failure():
    os.write(2, b'W0000 converter noise\n')
  assert 'converter noise' not in capfd.readouterr().err
  with pytest.raises(ValueError):
    with export.native_stderr_kept_on_failure():
      os.write(2, b'E0000 why it failed\n')
      raise ValueError('conversion failed')
  assert 'why it failed' in capfd.readouterr().err


@pytest.mark.parametrize('train_steps, steps_per_loop, evals', [
    (32, 28, 3),    # the demo at Training.epochs = 1
    (101, 100, 5), (563, 28, 3), (8, 4, 1), (1000, 100, 5)])
def test_no_evaluation_a_few_steps_after_another(train_steps, steps_per_loop, evals):
  from fmx.training.settings import Training  # pylint: disable=g-import-not-at-top
  training = Training(epochs=1, global_batch_size=1, steps_per_loop=steps_per_loop,
                      evals=evals)
  config = training.trainer_config(train_steps, optimizer=None)
  interval = config.validation_interval
  # Orbit's train_and_evaluate: an evaluation every `interval` steps and at the end.
  steps = sorted(set(range(interval, train_steps, interval)) | {train_steps})
  gaps = np.diff([0] + steps)
  assert gaps.min() >= gaps.max() / 2, steps
  assert config.steps_per_loop <= steps_per_loop and interval % config.steps_per_loop == 0
