"""A user's gin mistake exits 2 with file, line and advice; no stack trace."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_teacher_gin, write
from fmx import cli


def run_cli(capsys, *argv):
  code = cli.main(['run', *argv])
  return code, capsys.readouterr().err


def test_syntax_error_names_file_and_line(tmp_path, capsys):
  gin_file = write(tmp_path / 'bad.gin', "Training.epochs = 1\nTraining.seed = = 3\n")
  code, err = run_cli(capsys, '--gin', gin_file)
  assert code == cli.EXIT_USER_ERROR
  assert f'gin syntax error in {gin_file}, line 2' in err


def test_unknown_configurable_names_file_and_line(tmp_path, capsys):
  gin_file = write(tmp_path / 'bad.gin', "Training.epochs = 1\nTrainingg.seed = 3\n")
  code, err = run_cli(capsys, '--gin', gin_file)
  assert code == cli.EXIT_USER_ERROR
  assert f'{gin_file}, line 2' in err and "'Trainingg'" in err


def test_unknown_parameter_names_file_and_line(tmp_path, capsys):
  gin_file = write(tmp_path / 'bad.gin', "\n\nTraining.epoch = 1\n")
  code, err = run_cli(capsys, '--gin', gin_file)
  assert code == cli.EXIT_USER_ERROR
  assert f'{gin_file}, line 3' in err and "'epoch'" in err


def test_missing_include_is_named(tmp_path, capsys):
  gin_file = write(tmp_path / 'bad.gin', "include 'gin/data/nope.gin'\n")
  code, err = run_cli(capsys, '--gin', gin_file)
  assert code == cli.EXIT_USER_ERROR
  assert 'nope.gin' in err


def test_missing_required_value_is_named(tmp_path, capsys):
  text = tiny_teacher_gin(str(tmp_path / 'run')).replace(
      "teacher.backbone = 'simple_cnn'", '')
  gin_file = write(tmp_path / 'incomplete.gin', text)
  code, err = run_cli(capsys, '--gin', gin_file)
  assert code == cli.EXIT_USER_ERROR
  assert 'missing required gin value(s)' in err and 'backbone' in err
  assert not os.path.exists(tmp_path / 'run' / 'results.json')


def test_unknown_registry_name_names_file_line_and_suggestion(tmp_path, capsys):
  text = tiny_teacher_gin(str(tmp_path / 'run')).replace(
      "teacher.backbone = 'simple_cnn'", "teacher.backbone = 'simple_cn'")
  gin_file = write(tmp_path / 'typo.gin', text)
  code, err = run_cli(capsys, '--gin', gin_file)
  assert code == cli.EXIT_USER_ERROR
  line = text.splitlines().index("teacher.backbone = 'simple_cn'") + 1
  assert f'{gin_file}, line {line}' in err
  assert "did you mean 'simple_cnn'?" in err


def test_missing_gin_file(capsys):
  code, err = run_cli(capsys, '--gin', 'experiments/does_not_exist.gin')
  assert code == cli.EXIT_USER_ERROR
  assert "'experiments/does_not_exist.gin' does not exist" in err
  assert 'Check the path' in err


def test_console_script_prints_one_paragraph_and_no_traceback(tmp_path):
  text = tiny_teacher_gin(str(tmp_path / 'run')).replace(
      "Data.mixup = None", "Data.mixup = 'mixup_rol'")
  gin_file = write(tmp_path / 'bad.gin', text)
  line = text.splitlines().index("Data.mixup = 'mixup_rol'") + 1
  proc = subprocess.run(
      [sys.executable, '-m', 'fmx', 'run', '--gin', gin_file],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == cli.EXIT_USER_ERROR
  assert 'Traceback' not in proc.stderr
  error_lines = [l for l in proc.stderr.splitlines() if l.startswith('fmx: error:')]
  assert len(error_lines) == 1, proc.stderr
  assert f'{gin_file}, line {line}' in error_lines[0]
  assert "did you mean 'mixup_roll'?" in error_lines[0]
