"""What can be set, and mistakes in setting it: types, misspellings, describe."""

import inspect
import os

import gin
import pytest

from conftest import REPO, tiny_teacher_gin, write
from fmx import cli, configurables, entries, registry

entries.load_all()
CONFIGURABLES = sorted(configurables.all_configurables())


def run_cli(capsys, *argv):
  code = cli.main(list(argv))
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.mark.parametrize('binding, expected', [
    ('Training.epochs = "ten"', "Training.epochs = 'ten' (set in --bind "),
    ("Optimizer.learning_rate = 'fast'", 'must be a number'),
    ("Data.image_size = '28'", 'Write it without quotes: Data.image_size = 28'),
    ('Training.global_batch_size = 12.5', 'must be an integer.'),
    ('Runtime.xla = 1', 'must be True or False or None'),
    ("Data.train_augmentations = 'resize'", 'must be a list of strings'),
    ('teacher/backbones.simple_cnn.widths = (8, 1.5)',
     'must be a list of integers'),
    ("augmentations.inception_crop.area_range = (0.1, 0.5, 1.0)",
     'must be a list of 2 numbers'),
])
def test_wrong_type_exits_2_before_anything_is_built(tmp_path, capsys, binding,
                                                     expected):
  model_dir = tmp_path / 'run'
  gin_file = write(tmp_path / 'teacher.gin', tiny_teacher_gin(str(model_dir)))
  code, _, err = run_cli(capsys, 'run', '--gin', gin_file, '--bind', binding)
  assert code == cli.EXIT_USER_ERROR
  assert expected in err and 'Traceback' not in err
  assert f'--bind {binding!r}' in err  # where it was set
  assert not model_dir.exists()


def test_wrong_type_in_a_file_names_file_and_line(tmp_path, capsys):
  text = tiny_teacher_gin(str(tmp_path / 'run')).replace(
      'Training.eval_batch_size = 32', 'Training.eval_batch_size = 3.5')
  gin_file = write(tmp_path / 'teacher.gin', text)
  line = text.splitlines().index('Training.eval_batch_size = 3.5') + 1
  code, _, err = run_cli(capsys, 'run', '--gin', gin_file)
  assert code == cli.EXIT_USER_ERROR
  assert f'(set in {gin_file}, line {line}) must be an integer' in err


@pytest.mark.parametrize('annotation, good, bad', [
    (int, [0, -3], [1.5, True, '2', None]),
    (float, [1, 2.5], ['1', False, None]),
    (bool, [True, False], [0, 'True']),
    (str, ['a'], [1, None, ['a']]),
    (configurables.typing.Optional[int], [None, 4], [4.0]),
    (configurables.typing.Sequence[str], [['a'], ('a', 'b'), []], ['ab', [1]]),
    (configurables.typing.Tuple[float, float], [(0, 1.0)], [(1,), [1, 2, 3]]),
])
def test_matches_accepts_exactly_the_annotated_values(annotation, good, bad):
  assert all(configurables.matches(v, annotation) for v in good)
  assert not any(configurables.matches(v, annotation) for v in bad)


def test_every_shipped_experiment_passes_the_type_check():
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  for path in ('experiments/demo.gin', 'experiments/flowers_fast.gin',
               'experiments/pets_1000ep.gin',
               'experiments/ablations/teaching_modes.gin'):
    gin_config.parse([os.path.join(REPO, path)])  # no UserError


@pytest.mark.parametrize('binding, suggestion, listed', [
    ('Training.epoch = 3', "did you mean 'epochs'?", 'global_batch_size'),
    ('Trainng.epochs = 3', "did you mean 'Training'?", 'Optimizer'),
    ("image_folder.data_dir = '/x'", 'has no parameter', 'root, channels'),
    ('teacher/backbones.simple_cnn.widthz = (8,)', "did you mean 'widths'?",
     'convs_per_stage'),
])
def test_misspelt_key_gets_suggestion_and_valid_names(tmp_path, capsys, binding,
                                                      suggestion, listed):
  gin_file = write(tmp_path / 'teacher.gin', tiny_teacher_gin(str(tmp_path / 'r')))
  code, _, err = run_cli(capsys, 'run', '--gin', gin_file, '--bind', binding)
  assert code == cli.EXIT_USER_ERROR
  assert suggestion in err and listed in err
  assert f'--bind {binding!r}' in err
  assert 'configurable' not in err.lower()  # no gin jargon


def test_bind_syntax_error_names_the_bind(tmp_path, capsys):
  gin_file = write(tmp_path / 'teacher.gin', tiny_teacher_gin(str(tmp_path / 'r')))
  code, _, err = run_cli(capsys, 'run', '--gin', gin_file, '--bind',
                         'Training.seed = 1', '--bind', 'Training.evals = = 2')
  assert code == cli.EXIT_USER_ERROR
  assert "in --bind 'Training.evals = = 2'" in err and 'None' not in err


@pytest.mark.parametrize('name', CONFIGURABLES)
def test_describe_lists_every_parameter_with_a_doc(name, capsys):
  record = gin.config._REGISTRY._selector_map  # pylint: disable=protected-access
  function = next(r.wrapped for r in record.values() if r.name == name and
                  r.wrapped.__module__.startswith('fmx.'))
  denied = set(next(r.denylist or () for r in record.values() if r.name == name))
  expected = [p for p in inspect.signature(function).parameters
              if p not in denied]
  code, out, _ = run_cli(capsys, 'describe', name)
  assert code == 0
  lines = out.splitlines()[1:]
  assert [line.split()[0].split('.', 1)[1] for line in lines
          if line.strip() != '(no parameters)'] == expected
  for line in lines:
    if line.strip() != '(no parameters)':
      assert '): ' in line and line.split('): ', 1)[1].strip(), line  # a doc


def test_describe_shows_type_default_and_doc(capsys):
  _, out, _ = run_cli(capsys, 'list', 'datasets', 'image_folder')
  assert ('image_folder.root (a string, required): folder of class subfolders; '
          'may contain {split}') in out
  _, out, _ = run_cli(capsys, 'describe', 'Training')
  assert 'Training.evals (an integer, default 5): ' in out


def test_describe_joins_an_entry_that_goes_on_over_several_lines(capsys):
  _, out, _ = run_cli(capsys, 'describe', 'distillation')
  assert ("distillation.teacher_precision (a string or a list of strings, default "
          "'auto'): 'auto' (bfloat16 where the device computes it natively, else "
          "float32), 'float32', 'bfloat16' or 'float16'; a list: one per teacher "
          "(teacher_runs, then teacher_saved_models).") in out


def test_list_shows_settings_and_unknown_names_get_suggestions(capsys):
  code, out, _ = run_cli(capsys, 'list')
  assert code == 0 and 'settings:' in out and 'Optimizer' in out
  code, _, err = run_cli(capsys, 'describe', 'Trainin')
  assert code == cli.EXIT_USER_ERROR and "did you mean 'Training'?" in err
  code, _, err = run_cli(capsys, 'list', 'datasets', 'imag_folder')
  assert code == cli.EXIT_USER_ERROR and "did you mean 'image_folder'?" in err


def test_version(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['--version'])
  assert exit_info.value.code == 0
  from fmx import __version__  # pylint: disable=g-import-not-at-top
  assert capsys.readouterr().out.strip() == f'fmx {__version__}'


def test_missing_gin_file_lists_each_folder_once(capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  code, _, err = run_cli(capsys, 'run', '--gin', 'experiments/nope.gin')
  assert code == cli.EXIT_USER_ERROR
  assert err.count(os.path.realpath(REPO)) == 1, err


def test_failed_start_removes_only_an_empty_folder_it_made(tmp_path):
  from fmx.training import run_dir  # pylint: disable=g-import-not-at-top
  made, kept = tmp_path / 'new', tmp_path / 'written'
  for folder, content in ((made, None), (kept, 'ckpt')):
    with pytest.raises(RuntimeError):
      with run_dir.removed_if_left_empty(str(folder)):
        os.makedirs(folder / 'train')
        if content:
          write(folder / 'checkpoint', content)
        raise RuntimeError('model did not build')
  assert not made.exists() and (kept / 'checkpoint').exists()
