"""`fmx eval` re-evaluates a run's checkpoint from the run folder alone."""

import json
import os

import numpy as np

from conftest import tiny_student_gin, write
from fmx import cli
from fmx.training import run


def test_eval_reproduces_results_json_and_evaluates_other_splits(
    trained_teacher, tmp_path, capsys):
  model_dir = str(tmp_path / 'student')
  gin_file = write(tmp_path / 'student.gin',
                   tiny_student_gin(model_dir, trained_teacher[0]))
  final = run.run([gin_file])
  capsys.readouterr()

  assert cli.main(['eval', '--model_dir', model_dir]) == 0
  out = capsys.readouterr().out
  assert 'agreement' in out
  again = json.load(open(os.path.join(model_dir, 'eval-test_100.json')))
  for key in ('student_top1', 'teacher_top1', 'agreement', 'kl', 'global_step'):
    assert again[key] == final[key], key

  # Another split: 50 images, so every accuracy is a multiple of 1/50.
  assert cli.main(['eval', '--model_dir', model_dir, '--split', 'test[:50]']) == 0
  half = json.load(open(os.path.join(model_dir, 'eval-test_50.json')))
  assert half['test_split'] == 'mnist_embedded:test[:50]'
  for key in ('student_top1', 'teacher_top1', 'agreement'):
    assert np.isclose(half[key] * 50, round(half[key] * 50), atol=1e-4)


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
  assert cli.main(['eval', '--model_dir', str(tmp_path)]) == cli.EXIT_USER_ERROR
  assert 'is not an fmx run folder' in capsys.readouterr().err
