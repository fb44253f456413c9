"""`fmx grid` / `fmx compare`: a tiny 2x2 grid, a failing point, resume, HParams."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import tiny_student_gin, write
from fmx import cli, compare, grid
from fmx.errors import UserError


def test_axis_parsing_and_point_names():
  axes = {}
  axes.update(grid.parse_axis("Data.mixup = ['mixup_reverse', 'mixup_roll']"))
  axes.update(grid.parse_axis('Training.seed=[0, 1]'))
  names = [p.name for p in grid.points(axes)]
  assert names == ['mixup=mixup_reverse,seed=0', 'mixup=mixup_reverse,seed=1',
                   'mixup=mixup_roll,seed=0', 'mixup=mixup_roll,seed=1']
  assert grid.points(axes)[1].bindings == ["Data.mixup = 'mixup_reverse'",
                                           'Training.seed = 1']
  with pytest.raises(UserError, match='is not of the form'):
    grid.parse_axis('Data.mixup = mixup_roll')


def test_linked_axes_vary_their_keys_together():
  axes = grid.parse_axis(
      "Data.train_split,Training.epochs = [('train[:100]', 600), ('train[:1000]', 60)]")
  axes.update(grid.parse_axis('Training.seed = [0, 1]'))
  points = grid.points(axes)
  assert [p.values for p in points] == [
      {'Data.train_split': s, 'Training.epochs': e, 'Training.seed': seed}
      for s, e in [('train[:100]', 600), ('train[:1000]', 60)] for seed in (0, 1)]
  assert points[2].name == 'train_split=train_1000,epochs=60,seed=0'
  assert points[2].bindings == ["Data.train_split = 'train[:1000]'",
                                'Training.epochs = 60', 'Training.seed = 0']
  assert grid.key_values(axes) == {'Data.train_split': ['train[:100]', 'train[:1000]'],
                                   'Training.epochs': [600, 60],
                                   'Training.seed': [0, 1]}
  with pytest.raises(UserError, match="sets 2 keys together.*'train\\[:100\\]' is not"):
    grid.parse_axis("Data.train_split, Training.epochs = ['train[:100]']")


def _hparams_of(folder):
  """The hparams a run folder's events record, read with TensorBoard's reader."""
  accumulator = event_accumulator.EventAccumulator(folder)
  accumulator.Reload()
  content = accumulator.PluginTagToContent('hparams')
  for blob in content.values():
    data = plugin_data_pb2.HParamsPluginData.FromString(blob)
    if data.HasField('session_start_info'):
      return {k: v.string_value or v.number_value
              for k, v in data.session_start_info.hparams.items()}
    if data.HasField('experiment'):
      return {h.name for h in data.experiment.hparam_infos}
  return None


def test_grid_runs_resumes_skips_and_reports_failures(trained_teacher, tmp_path, capsys):
  root = str(tmp_path / 'grid')
  base = write(tmp_path / 'base.gin', tiny_student_gin(
      str(tmp_path / 'unused'), trained_teacher[0], epochs=0.25))
  argv = ['grid', '--gin', base, '--root', root,
          '--axis', "Data.mixup = ['mixup_roll', 'mixup_bogus']",
          '--axis', 'Training.seed = [0, 1]']
  assert cli.main(argv) == 1  # the bogus points fail ...
  out = capsys.readouterr().out
  assert 'FAILED: 2' in out and 'ran now: 2' in out
  bogus_log = os.path.join(root, 'mixup=mixup_bogus,seed=0', 'log.txt')
  assert bogus_log in out
  assert "did you mean 'mixup_roll'" in open(bogus_log).read()
  good = [os.path.join(root, f'mixup=mixup_roll,seed={s}') for s in (0, 1)]
  for folder in good:  # ... but not the others
    assert os.path.exists(os.path.join(folder, 'results.json'))

  # HParams: the experiment at the root, each point's values in its folder.
  assert _hparams_of(root) == {'Data.mixup', 'Training.seed'}
  assert _hparams_of(good[1]) == {'Data.mixup': 'mixup_roll', 'Training.seed': 1.0}

  # An interrupted point (no results.json) resumes; finished ones are skipped.
  os.remove(os.path.join(good[1], 'results.json'))
  finished_before = os.path.getmtime(os.path.join(good[0], 'results.json'))
  assert cli.main(argv) == 1
  out = capsys.readouterr().out
  assert 'already finished (skipped): 1' in out and 'ran now: 1' in out
  assert os.path.getmtime(os.path.join(good[0], 'results.json')) == finished_before
  resumed_log = open(os.path.join(good[1], 'log.txt')).read()
  assert 'resuming from the checkpoint at step 4' in resumed_log

  # compare: groups over seeds, numbers from the runs' results.json.
  assert cli.main(['compare', root, '--plot', str(tmp_path / 'curves.png')]) == 0
  table = capsys.readouterr().out
  finals = [json.load(open(os.path.join(f, 'results.json'))) for f in good]
  expected = np.array([r['student_top1'] for r in finals])
  row = next(l for l in table.splitlines() if l.startswith('mixup=mixup_roll '))
  assert f'{100 * expected.mean():.2f} +/- {100 * expected.std():.2f}' in row
  assert row.split()[1] == '2'
  assert os.path.getsize(tmp_path / 'curves.png') > 1000


def test_compare_reads_curves_written_by_tf_summary(tmp_path):
  run_dir = tmp_path / 'run,seed=3'
  writer = tf.summary.create_file_writer(str(run_dir / 'validation'))
  with writer.as_default():
    for step, value in [(10, 0.5), (20, 0.75), (30, 0.7)]:
      tf.summary.scalar('student_top1', value, step=step)
  writer.flush()
  write(run_dir / 'results.json', json.dumps({'student_top1': 0.7}))
  groups = compare.summarize([str(tmp_path)])
  assert list(groups) == ['run']
  assert groups['run']['best']['student_top1'] == [0.75]
  steps, values = compare.read_curve(str(run_dir), 'student_top1')
  np.testing.assert_array_equal(steps, [10, 20, 30])
  np.testing.assert_allclose(values, [0.5, 0.75, 0.7])


def test_grid_files_declare_axes():
  axes = grid.axes_from_files(['experiments/ablations/mixup_variants.gin'])
  assert axes == {'Data.mixup': ['mixup_reverse', 'mixup_roll'],
                  'Training.seed': [0, 1, 2]}
  from fmx.tasks import teaching  # pylint: disable=g-import-not-at-top
  axes = grid.axes_from_files(['experiments/ablations/teaching_modes.gin'])
  assert sorted(axes['distillation.teaching']) == sorted(teaching.MODES)
