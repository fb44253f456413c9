"""A run folder survives corrupt checkpoints, a full disk and config changes.

- a truncated or overwritten latest checkpoint is moved aside with a
  warning and the run resumes from the previous one;
- Training.checkpoints_to_keep sets how many checkpoints stay;
- a full or unwritable model_dir is one paragraph, exit 2, and leaves the
  checkpoints that were there readable;
- a different config in the same folder is refused, naming the keys.
"""

import glob
import json
import os
import shutil

import pytest
import tensorflow as tf

from conftest import tiny_teacher_gin, write
from fmx import cli
from fmx.training import run, run_dir


def _gin(tmp_path, extra=''):
  model_dir = str(tmp_path / 'run')
  text = tiny_teacher_gin(model_dir) + 'Training.checkpoint_every_steps = 4\n' + extra
  return write(tmp_path / 'teacher.gin', text), model_dir


def _steps(model_dir):
  return sorted(int(p.rsplit('-', 1)[1][:-len('.index')])
                for p in glob.glob(os.path.join(model_dir, 'ckpt-*.index')))


def _readable(prefix):
  reader = tf.train.load_checkpoint(prefix)
  for name in reader.get_variable_to_shape_map():
    reader.get_tensor(name)
  return True


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished teacher run (checkpoints at 0, 4 and 8, two kept), to copy."""
  import gin  # pylint: disable=g-import-not-at-top
  tmp_path = tmp_path_factory.mktemp('finished')
  gin_file, model_dir = _gin(tmp_path, 'Training.checkpoints_to_keep = 2\n')
  run.run([gin_file])
  gin.clear_config()
  return gin_file, model_dir


def _copy(finished_run, tmp_path):
  gin_file, model_dir = finished_run
  shutil.copytree(model_dir, tmp_path / 'run')
  text = open(gin_file).read().replace(model_dir, str(tmp_path / 'run'))
  return write(tmp_path / 'teacher.gin', text), str(tmp_path / 'run')


def test_checkpoints_to_keep_is_honoured(finished_run):
  assert _steps(finished_run[1]) == [4, 8]


@pytest.mark.parametrize('damage', ['truncate', 'overwrite'])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(
    finished_run, tmp_path, capsys, damage):
  gin_file, model_dir = _copy(finished_run, tmp_path)
  data = glob.glob(os.path.join(model_dir, 'ckpt-8.data-*'))[0]
  size = os.path.getsize(data)
  with open(data, 'r+b') as f:
    if damage == 'truncate':
      f.truncate(size // 2)
    else:
      f.seek(size // 2)
      f.write(b'\xff' * 64)
  results = run.run([gin_file], allow_config_change=True)
  out = capsys.readouterr().out
  assert 'ckpt-8 cannot be read' in out and 'falling back to' in out and 'ckpt-4' in out
  assert os.path.exists(os.path.join(model_dir, run_dir.CORRUPT_FOLDER, os.path.basename(data)))
  assert 'resuming from the checkpoint at step 4' in out
  assert results['global_step'] == 8
  assert _readable(tf.train.latest_checkpoint(model_dir))


def test_a_relative_model_dir_resumes_its_own_checkpoints(
    finished_run, monkeypatch, capsys):
  # `fmx run --model_dir runs/x` rerun (as `make demo` twice): the paths of
  # TF's checkpoint state are then relative to the current folder, not to
  # model_dir, and none may be taken for a corrupt one.
  model_dir = finished_run[1]
  monkeypatch.chdir(os.path.dirname(model_dir))
  assert run_dir.restorable_step(os.path.basename(model_dir)) == 8
  assert 'cannot be read' not in capsys.readouterr().out
  assert not os.path.exists(os.path.join(model_dir, run_dir.CORRUPT_FOLDER))


def test_no_readable_checkpoint_is_a_clear_error(finished_run, tmp_path, capsys):
  gin_file, model_dir = _copy(finished_run, tmp_path)
  for data in glob.glob(os.path.join(model_dir, 'ckpt-*.data-*')):
    open(data, 'wb').close()
  assert cli.main(['run', '--gin', gin_file]) == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert 'no checkpoint of model_dir' in err and 'remove the file' in err
  assert len(glob.glob(os.path.join(model_dir, run_dir.CORRUPT_FOLDER, '*'))) == 4


def test_a_full_disk_mid_run_is_one_paragraph_and_keeps_the_checkpoints(
    tmp_path, monkeypatch, capsys):
  gin_file, model_dir = _gin(tmp_path)
  save = tf.train.CheckpointManager.save

  def save_until_full(self, checkpoint_number=None, **kwargs):
    if checkpoint_number is not None and int(checkpoint_number) >= 4:
      raise tf.errors.ResourceExhaustedError(None, None, 'No space left on device')
    return save(self, checkpoint_number=checkpoint_number, **kwargs)

  monkeypatch.setattr(tf.train.CheckpointManager, 'save', save_until_full)
  assert cli.main(['run', '--gin', gin_file]) == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert 'Traceback' not in err
  errors = [l for l in err.splitlines() if l.startswith('fmx: error:')]
  assert len(errors) == 1 and 'No space left on device' in errors[0]
  assert 'ckpt-0' in errors[0] and 'rerun the same command' in errors[0]
  assert _readable(tf.train.latest_checkpoint(model_dir))
  assert not os.path.exists(os.path.join(model_dir, 'results.json'))


def test_too_little_free_space_fails_before_training(tmp_path, monkeypatch, capsys):
  gin_file, model_dir = _gin(tmp_path)
  usage = shutil.disk_usage(str(tmp_path))
  monkeypatch.setattr(run_dir.shutil, 'disk_usage',
                      lambda path: usage._replace(free=1000))
  assert cli.main(['run', '--gin', gin_file]) == cli.EXIT_USER_ERROR
  assert 'MiB free but a checkpoint of this run takes' in capsys.readouterr().err
  assert not glob.glob(os.path.join(model_dir, 'ckpt-*'))


def test_unwritable_model_dir_is_a_clear_error(tmp_path, capsys):
  (tmp_path / 'a_file').write_text('')
  gin_file, _ = _gin(tmp_path)
  code = cli.main(['run', '--gin', gin_file, '--model_dir', str(tmp_path / 'a_file' / 'run')])
  assert code == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert 'is not writable' in err and 'a_file' in err


def test_another_config_is_refused_unless_allowed(finished_run, tmp_path, capsys):
  gin_file, model_dir = _copy(finished_run, tmp_path)
  before = sorted(os.listdir(model_dir))
  code = cli.main(['run', '--gin', gin_file, '--bind', 'Optimizer.learning_rate = 0.1',
                   '--bind', "teacher/backbones.simple_cnn.widths = (4, 8)"])
  assert code == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert 'Optimizer.learning_rate: 0.003 -> 0.1' in err
  assert 'teacher/simple_cnn.widths: (8, 16) -> (4, 8)' in err
  assert '--allow_config_change' in err
  assert sorted(os.listdir(model_dir)) == before


def test_config_differences_reads_multi_line_values():
  old = "# Parameters for Data:\nData.size = 3\nData.ops = \\\n    ['a', 'b']\nA.x = 1\n"
  new = "Data.size = 3\nData.ops = ['a', 'c']\nB.y = 2\nExperiment.model_dir = 'x'\n"
  assert run_dir.config_differences(old, new) == [
      'A.x: 1 -> (unset)', 'B.y: (unset) -> 2', "Data.ops: ['a', 'b'] -> ['a', 'c']"]


def test_a_setting_added_since_the_run_began_counts_only_off_its_default():
  # A run folder written before `distillation.teacher_jit_compile` existed
  # resumes under a newer fmx; setting the new key does not.
  import fmx.tasks.distillation  # noqa: F401  registers `distillation`
  old = 'Training.steps = 10\n'
  at_default = old + 'distillation.teacher_jit_compile = False\n'
  changed = old + 'distillation.teacher_jit_compile = True\n'
  assert run_dir.config_differences(old, at_default,
                                    ignore_added_defaults=True) == []
  assert run_dir.config_differences(old, changed, ignore_added_defaults=True) == [
      'distillation.teacher_jit_compile: (unset) -> True']
  # A removed key, or one gin does not know, is still a difference.
  assert run_dir.config_differences(at_default, old, ignore_added_defaults=True)
  assert run_dir.config_differences(old, old + 'nowhere.x = 1\n',
                                    ignore_added_defaults=True)


def test_an_auto_value_that_resolves_to_the_old_runs_value_is_no_change():
  # Runs from before Runtime.mixed_precision = 'auto' recorded None; on a CPU
  # 'auto' resolves to None (same numerics), on a TPU to 'bfloat16' (not).
  old = 'Runtime.mixed_precision = None\n'
  new = "Runtime.mixed_precision = 'auto'\n"
  assert run_dir.config_differences(
      old, new, resolved={'Runtime.mixed_precision': None}) == []
  assert run_dir.config_differences(
      old, new, resolved={'Runtime.mixed_precision': 'bfloat16'}) == [
          "Runtime.mixed_precision: None -> 'auto' (bfloat16 here)"]


def test_a_run_folder_from_before_the_per_device_defaults_resumes(
    finished_run, tmp_path, capsys):
  # What an fmx before Runtime.xla and mixed_precision = 'auto' wrote.
  gin_file, model_dir = _copy(finished_run, tmp_path)
  path = os.path.join(model_dir, run_dir.OPERATIVE_CONFIG)
  config = open(path).read()
  assert "Runtime.mixed_precision = 'auto'" in config and 'Runtime.xla' in config
  old = '\n'.join(line for line in config.replace(
      "Runtime.mixed_precision = 'auto'", 'Runtime.mixed_precision = None'
  ).splitlines() if not line.startswith('Runtime.xla'))
  with open(path, 'w') as f:
    f.write(old)
  assert cli.main(['run', '--gin', gin_file]) == 0, capsys.readouterr().err
