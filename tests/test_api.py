"""fmx's Python API (fmx/api.py): runs in one process, Run, errors, batches.

The reference for "no state leaks between runs" is a separate process:
`fmx run` of the same config, started first and running meanwhile.
"""

import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

import fmx
from fmx import api as api_lib
from conftest import REPO, tiny_teacher_gin, write
from fmx.errors import StopRun, UserError

# A run before the one compared: another precision, widths and seed. Were
# its gin values, precision policy or Keras session to leak, the next run
# would train another model.
OTHER_CONFIG = """
Runtime.mixed_precision = 'bfloat16'
teacher/backbones.simple_cnn.widths = (4, 4)
Training.seed = 7
"""


def _weights(model_dir):
  reader = tf.train.load_checkpoint(model_dir)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name.startswith('model/')}


def _same_results(a, b):
  return {k: v for k, v in a.items() if k != 'train_seconds'} == {
      k: v for k, v in b.items() if k != 'train_seconds'}


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
  """(other run, the run, the same config run alone by `fmx run`)."""
  root = tmp_path_factory.mktemp('api')
  config = write(root / 'teacher.gin', tiny_teacher_gin(str(root / 'run')))
  alone = str(root / 'alone')
  env = dict(os.environ, PYTHONPATH=REPO)
  process = subprocess.Popen(  # meanwhile, on the other core
      [sys.executable, '-m', 'fmx', 'run', '--gin', config, '--model_dir', alone],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
  other = fmx.run(write(root / 'other.gin', tiny_teacher_gin(str(root / 'other'))
                        + OTHER_CONFIG))
  run = fmx.run(config)
  output = process.communicate()[0].decode()
  assert process.returncode == 0, output
  return other, run, fmx.load_run(alone)


def test_two_runs_in_one_process_give_what_two_processes_give(two_runs):
  other, run, alone = two_runs
  assert other.config['Runtime.mixed_precision'] == "'bfloat16'"
  assert _same_results(run.results, alone.results)
  assert not _same_results(other.results, alone.results)
  weights, reference = _weights(run.model_dir), _weights(alone.model_dir)
  assert weights.keys() == reference.keys() and weights
  for name, value in reference.items():
    np.testing.assert_array_equal(weights[name], value, err_msg=name)
  # The caller's Keras policy is back after a bfloat16 run.
  import tf_keras  # pylint: disable=g-import-not-at-top
  assert tf_keras.mixed_precision.global_policy().name == 'float32'


def test_predict_on_raw_test_images_gives_the_runs_test_accuracy(two_runs):
  _, run, _ = two_runs
  images, labels = run.examples()
  assert images.dtype == np.uint8 and images.shape == (100, 28, 28, 1)
  logits = run.predict(images, batch_size=32)
  # results.json's top-1 came from the tf.data eval pipeline and a Keras
  # metric; here from raw pixels through the model's own preprocessing.
  assert np.mean(logits.argmax(-1) == labels) == pytest.approx(run.results['top1'])
  np.testing.assert_allclose(run.predict(list(images[:3])), logits[:3], atol=1e-5)
  assert run.student is None and run.teacher is run.model


def test_history_holds_the_tensorboard_curves(two_runs):
  _, run, _ = two_runs
  history = run.history()
  # 8 steps, a loop every 4: the training loss is written at steps 4 and 8.
  assert history['train/training_loss']['step'] == [4, 8]
  assert history['test/top1']['value'] == [pytest.approx(run.results['top1'])]
  assert all(len(c['step']) == len(c['value']) for c in history.values())


def test_mistakes_raise_one_paragraph_user_errors(tmp_path):
  bad = write(tmp_path / 'bad.gin', tiny_teacher_gin(str(tmp_path / 'run'))
              + "teacher.backbone = 'simple_cnnn'\n")
  with pytest.raises(UserError) as caught:
    fmx.run(bad)
  message = str(caught.value)
  assert message.startswith(f'{bad}, line ') and "'simple_cnn'?" in message
  assert '\n' not in message and 'In call to configurable' not in message
  assert not os.path.exists(tmp_path / 'run' / 'results.json')
  # gin's missing required value (a RuntimeError inside gin) too.
  no_task = write(tmp_path / 'no_task.gin', tiny_teacher_gin(str(tmp_path / 'x'))
                  .replace("Experiment.task = 'teacher'", ''))
  with pytest.raises(UserError, match='missing required gin value.*Experiment.task'):
    fmx.run(no_task)
  with pytest.raises(UserError, match='not an fmx run folder'):
    fmx.load_run(str(tmp_path))


def test_errors_show_as_their_paragraph_in_ipython():
  """The handler fmx.api gives IPython prints `fmx: error: ...`, no trace."""
  registered, shown = {}, []
  shell = types.SimpleNamespace(
      set_custom_exc=lambda types_, handler: registered.update(
          types=types_, handler=handler),
      _showtraceback=lambda *args: shown.append(args))
  ipython = types.ModuleType('IPython')
  ipython.get_ipython = lambda: shell
  original = sys.modules.get('IPython')
  sys.modules['IPython'] = ipython
  try:
    api_lib._show_errors_as_paragraphs()  # pylint: disable=protected-access
  finally:
    if original is None:
      del sys.modules['IPython']
    else:
      sys.modules['IPython'] = original
  assert registered['types'] == (StopRun,)
  error = UserError('Data.image_size = -1 must be positive.')
  registered['handler'](shell, UserError, error, None)
  assert shown == [(UserError, error, [
      'fmx: error: Data.image_size = -1 must be positive.'])]


def test_inspect_batch_returns_the_arrays_and_a_figure(tmp_path):
  config = write(tmp_path / 'student.gin', tiny_teacher_gin(str(tmp_path / 'run'))
                 + "Data.mixup = 'mixup_roll'\n")
  batch = fmx.inspect_batch(config, batch_size=8)
  assert batch.images.shape == (8, 16, 16, 1) and batch.labels.shape == (8,)
  # roll by one: image i is mixed with image i - 1.
  np.testing.assert_array_equal(batch.partners, (np.arange(8) - 1) % 8)
  assert batch.distinct_pairs == 8 and 0 <= batch.coefficient <= 1
  titles = [axis.get_title() for axis in batch.figure().axes]
  assert f'#1 {batch.labels[1]} +#0' in titles  # MNIST's class names are its digits
  assert 'mixup_roll' in str(batch)


def test_run_grid_skips_finished_points(tmp_path):
  config = write(tmp_path / 'teacher.gin', tiny_teacher_gin(str(tmp_path / 'run')))
  for seed in (0, 1):
    os.makedirs(tmp_path / 'grid' / f'seed={seed}')
    write(tmp_path / 'grid' / f'seed={seed}' / 'results.json', '{}')
  points = fmx.run_grid(config, str(tmp_path / 'grid'),
                        axes={'Training.seed': [0, 1]})
  assert [(p.values, p.status) for p in points] == [
      ({'Training.seed': 0}, 'finished'), ({'Training.seed': 1}, 'finished')]
  assert points[1].model_dir == str(tmp_path / 'grid' / 'seed=1')
  with pytest.raises(UserError, match='no axes'):
    fmx.run_grid(config, str(tmp_path / 'none'))


def test_tune_delegates_to_fmx_tuning(monkeypatch):
  calls = []
  tuning = types.ModuleType('fmx.tuning')
  tuning.tune = lambda *args, **kwargs: calls.append((args, kwargs)) or 'result'
  monkeypatch.setitem(sys.modules, 'fmx.tuning', tuning)
  monkeypatch.setattr(fmx, 'tuning', tuning, raising=False)
  assert fmx.tune('a.gin', 'root', max_trials=3, objective='top1') == 'result'
  assert calls == [((['a.gin'], 'root'), dict(
      bindings=(), oracle=None, max_trials=3, executions_per_trial=None,
      objective='top1', parallel=1))]
