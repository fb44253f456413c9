"""`fmx tune`: a tiny random search, resume, HParams, Hyperband continuation,
a killed search, bad input; and early stopping, which runs use outside tune."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import REPO, tiny_teacher_gin, write
from fmx import cli
from fmx.training import early_stopping, run
from fmx.tuning import search as search_lib
from fmx.tuning import space as space_lib

# Hyperband's first bracket: 2 trials of 1 epoch (4 steps), the better one
# promoted to 2 epochs.
HYPERBAND = """
Data.train_split = 'train[:64]'
Tune.oracle = 'hyperband'
Tune.oracle_options = {'max_epochs': 2, 'factor': 2}
"""
SPACE = """
Tune.space = {'Optimizer.learning_rate': ('float', 1e-3, 3e-2, 'log'),
              'Optimizer.weight_decay': [0.0, 1e-4]}
"""


def _scalars(folder, tag):
  """{step: value} of a scalar summary, read with TF's own event iterator."""
  found = {}
  for path in sorted(glob.glob(os.path.join(folder, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          found[event.step] = float(tf.make_ndarray(value.tensor))
  return found


def _hparams_of(folder):
  accumulator = event_accumulator.EventAccumulator(folder)
  accumulator.Reload()
  for blob in accumulator.PluginTagToContent('hparams').values():
    data = plugin_data_pb2.HParamsPluginData.FromString(blob)
    if data.HasField('session_start_info'):
      return {k: v.string_value or v.number_value
              for k, v in data.session_start_info.hparams.items()}
    if data.HasField('experiment'):
      return {h.name for h in data.experiment.hparam_infos}
  return None


@pytest.fixture(scope='module')
def random_search(tmp_path_factory):
  """2 trials x 1 execution of a tiny teacher, then the same command again."""
  tmp = tmp_path_factory.mktemp('tune')
  base = write(tmp / 'tune.gin', tiny_teacher_gin(str(tmp / 'unused')) + SPACE
               + 'Tune.max_trials = 2\nTraining.evals = 2\n')
  root = str(tmp / 'root')
  gin.clear_config()
  first = search_lib.tune([base], root)
  stamps = {d: os.path.getmtime(os.path.join(d, 'results.json'))
            for t in first.trials for d in t.model_dirs}
  second = search_lib.tune([base], root)
  gin.clear_config()
  return root, first, second, stamps


def test_best_trial_has_the_highest_objective_read_from_its_runs(random_search):
  _, first, _, _ = random_search
  assert [t.status for t in first.trials] == ['COMPLETED'] * 2
  for trial in first.trials:
    curve = _scalars(os.path.join(trial.model_dirs[0], 'validation'), 'top1')
    assert len(curve) == 2  # Training.evals
    assert trial.objective == pytest.approx(max(curve.values()))
    assert 1e-3 <= trial.values['Optimizer.learning_rate'] <= 3e-2
    assert trial.values['Optimizer.weight_decay'] in (0.0, 1e-4)
  objectives = [t.objective for t in first.trials]
  assert first.best.objective == max(objectives)
  # The pasteable bindings are gin that sets exactly the best trial's values.
  gin.parse_config(first.best_bindings)
  for key, value in first.best.values.items():
    assert gin.query_parameter(key) == value


def test_second_invocation_runs_no_trial(random_search):
  _, first, second, stamps = random_search
  assert [(t.trial_id, t.objective) for t in second.trials] == [
      (t.trial_id, t.objective) for t in first.trials]
  for folder, stamp in stamps.items():
    assert os.path.getmtime(os.path.join(folder, 'results.json')) == stamp


def test_hparams_experiment_lists_every_trial_with_its_values(random_search):
  root, first, _, _ = random_search
  assert _hparams_of(root) == {'Optimizer.learning_rate', 'Optimizer.weight_decay'}
  runs = sorted(d for d in os.listdir(root) if d.startswith('trial_'))
  assert runs == sorted(os.path.basename(d) for t in first.trials for d in t.model_dirs)
  for trial in first.trials:
    recorded = _hparams_of(trial.model_dirs[0])
    assert recorded == pytest.approx(trial.values)


def test_compare_and_result_table(random_search, capsys):
  root, first, _, _ = random_search
  assert cli.main(['compare', root]) == 0
  table = capsys.readouterr().out
  for trial in first.trials:
    assert any(line.startswith(f'trial_{trial.trial_id} ') for line in table.splitlines())
  text = search_lib.format_result(first)
  lines = text.splitlines()
  assert lines[1].split()[0] == first.best.trial_id  # sorted, best first
  assert text.endswith('\n'.join(first.best_bindings))


def test_hyperband_promotion_continues_the_parent_checkpoint(tmp_path):
  base = write(tmp_path / 'hb.gin', tiny_teacher_gin(str(tmp_path / 'unused'))
               + SPACE + HYPERBAND)
  root = str(tmp_path / 'root')
  result = search_lib.tune([base], root, max_trials=3)
  child = next(t for t in result.trials if t.parent)
  parent = next(t for t in result.trials if t.trial_id == child.parent)
  assert child.values['Training.epochs'] == 2 and parent.values['Training.epochs'] == 1
  assert {k: v for k, v in child.values.items() if k != 'Training.epochs'} == {
      k: v for k, v in parent.values.items() if k != 'Training.epochs'}
  parent_steps = json.load(open(os.path.join(parent.model_dirs[0], 'results.json')))
  child_steps = json.load(open(os.path.join(child.model_dirs[0], 'results.json')))
  assert parent_steps['global_step'] == 4  # 1 epoch of 64 images at 16
  assert child_steps['global_step'] == 8
  # The child trained steps 5..8 only: its loss curve starts after step 4.
  child_losses = _scalars(os.path.join(child.model_dirs[0], 'train'), 'training_loss')
  assert child_losses and min(child_losses) > 4
  parent_weights = tf.train.load_checkpoint(
      os.path.join(parent.model_dirs[0], 'ckpt-4'))
  copied = tf.train.load_checkpoint(os.path.join(child.model_dirs[0], 'ckpt-4'))
  name = next(n for n in parent_weights.get_variable_to_shape_map() if 'kernel' in n)
  np.testing.assert_array_equal(parent_weights.get_tensor(name), copied.get_tensor(name))


def test_killed_search_resumes_its_interrupted_trial(tmp_path, capsys):
  base = write(tmp_path / 'long.gin', tiny_teacher_gin(str(tmp_path / 'unused'), epochs=8)
               + SPACE + 'Tune.max_trials = 1\nTraining.checkpoint_every_steps = 4\n')
  root = str(tmp_path / 'root')
  command = [sys.executable, '-m', 'fmx', 'tune', '--gin', base, '--root', root]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  run_dir = os.path.join(root, 'trial_0,seed=0')
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    latest = tf.train.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if latest and int(latest.rsplit('-', 1)[1]) >= 8:
      break
    time.sleep(0.1)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not os.path.exists(os.path.join(run_dir, 'results.json')), 'killed too late'
  killed_at = int(tf.train.latest_checkpoint(run_dir).rsplit('-', 1)[1])

  capsys.readouterr()
  assert cli.main(['tune', '--gin', base, '--root', root]) == 0
  out = capsys.readouterr().out
  assert f'resuming from the checkpoint at step {killed_at}' in out
  assert 'trial 0 seed 0' in out and 'trial 1' not in out  # the same trial
  results = json.load(open(os.path.join(run_dir, 'results.json')))
  assert results['global_step'] == 128  # 8 epochs of 256 images at 16


@pytest.mark.parametrize('space, objective, expected', [
    ("{'Optimizer.learnin_rate': [1e-3]}", None, "'Optimizer.learnin_rate'"),
    ("{'Optimizer.learning_rate': [1e-3]}", 'validation/student_top1',
     "'validation/student_top1' is no metric that teacher runs log"),
    ("{'Optimizer.learning_rate': ('float', 0.0, 0.1, 'log')}", None,
     "a 'log' range needs bounds above 0, and 0.0 is not"),
])
def test_bad_input_is_one_paragraph_before_any_trial(tmp_path, capsys, space,
                                                    objective, expected):
  base = write(tmp_path / 'bad.gin', tiny_teacher_gin(str(tmp_path / 'unused'))
               + f'Tune.space = {space}\n')
  root = str(tmp_path / 'root')
  argv = ['tune', '--gin', base, '--root', root] + (
      ['--objective', objective] if objective else [])
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith('fmx: error: ') and expected in err
  assert err.count('\n') == 1  # one paragraph
  assert not os.path.exists(root)


@pytest.mark.parametrize('oracle', space_lib.ORACLES)
def test_every_oracle_proposes_values_in_the_space(oracle, tmp_path):
  from fmx.tuning import oracles  # pylint: disable=g-import-not-at-top
  dimensions = space_lib.parse_space({
      'Optimizer.learning_rate': ('float', 1e-4, 1e-2, 'log', 10)
      if oracle == 'grid' else ('float', 1e-4, 1e-2, 'log'),
      'Data.mixup': [None, 'mixup_roll'],
      'Training.evals': ('int', 1, 3)})
  options = {'max_epochs': 3} if oracle == 'hyperband' else {}
  the_oracle = oracles.build(oracle, 'validation/top1', 'max', dimensions, 2,
                             options, 1, str(tmp_path))
  trial = the_oracle.create_trial('tuner0')
  assert trial.status == 'RUNNING'
  values = {d.key: d.value(trial.hyperparameters.values[d.key]) for d in dimensions}
  assert 1e-4 <= values['Optimizer.learning_rate'] <= 1e-2
  assert values['Data.mixup'] in (None, 'mixup_roll')
  assert values['Training.evals'] in (1, 2, 3)
  bindings = [d.binding(trial.hyperparameters.values[d.key]) for d in dimensions]
  assert f"Data.mixup = {values['Data.mixup']!r}" in bindings


def test_early_stopping_counts_like_keras_early_stopping():
  """Against tf_keras' EarlyStopping callback on random metric sequences."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for _ in range(50):
    values = rng.choice([0.5, 0.6, 0.7, 0.8], size=12)
    patience, min_delta = int(rng.integers(1, 4)), float(rng.choice([0.0, 0.05]))
    reference = tf_keras.callbacks.EarlyStopping(
        monitor='val_accuracy', patience=patience, min_delta=min_delta, mode='max')
    reference.set_model(tf_keras.Sequential())
    reference.on_train_begin()
    ours = early_stopping.EarlyStopping('top1', patience, min_delta, None)
    for epoch, value in enumerate(values):
      reference.on_epoch_end(epoch, {'val_accuracy': value})
      ours.record(epoch, value)
      assert ours.stopped == reference.model.stop_training, (values, patience)
      if ours.stopped:
        break


def test_early_stopping_run_stops_and_stays_stopped_on_resume(tmp_path, capsys):
  model_dir = str(tmp_path / 'run')
  gin_file = write(tmp_path / 'es.gin', tiny_teacher_gin(model_dir, epochs=1) + (
      'Training.evals = 4\nTraining.early_stopping_patience = 1\n'
      # No top-1 improves by more than 1: the second eval stops the run.
      'Training.early_stopping_min_delta = 1.0\n'))
  results = run.run([gin_file])
  assert results['train_steps'] == 16 and results['global_step'] == 8
  assert results['early_stopped']['step'] == 8
  assert results['early_stopped']['best_step'] == 4
  assert sorted(_scalars(os.path.join(model_dir, 'validation'), 'top1')) == [4, 8]
  assert 'early stopping at step 8' in capsys.readouterr().out
  # Killed before results.json: the rerun remembers it had stopped.
  os.remove(os.path.join(model_dir, 'results.json'))
  assert run.run([gin_file])['global_step'] == 8


TUNE_EXPERIMENTS = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'experiments', '*.gin'))
    if 'Tune.space' in open(p).read())


@pytest.mark.parametrize('experiment', TUNE_EXPERIMENTS)
def test_tune_experiment_plans_and_proposes_a_trial(experiment, tmp_path):
  """Space, keys, objective and oracle options of every shipped search."""
  from fmx.tuning import oracles  # pylint: disable=g-import-not-at-top
  plan = search_lib.plan([os.path.join(REPO, experiment)], str(tmp_path))
  oracle = oracles.build(plan.oracle, plan.objective, plan.direction,
                         plan.dimensions, plan.max_trials, plan.oracle_options,
                         plan.seed, str(tmp_path))
  trial = oracle.create_trial('tuner0')
  assert trial.status == 'RUNNING'
  assert set(search_lib.trial_values(plan, trial)) >= {d.key for d in plan.dimensions}


def test_tune_experiments_are_found():
  assert {'experiments/tune_teacher_pets.gin', 'experiments/tune_demo_teacher.gin',
          'experiments/tune_demo_student.gin'} <= set(TUNE_EXPERIMENTS)
