"""Every shipped experiment follows its reference's recipe, builds and steps.

Recipe values (lr, schedule, weight decay, clipping, batch, epochs, T, MixUp
partner and coefficient, crop floor, resolution, teacher) are checked against
a table written from ../shared/REFERENCE.md, so a changed value in a gin
fragment fails here. `fmx run --dry_run` then builds and steps each one,
offline and at a tiny shape (mock TFDS data, a local stand-in for TF-Hub
modules), so no experiment in experiments/ can rot unnoticed.
"""

import glob
import math
import os
import re

import gin
import pytest

from conftest import REPO
from fmx import gin_config
from fmx.training import run

EXPERIMENTS = sorted(os.path.relpath(p, REPO) for p in
                     glob.glob(os.path.join(REPO, 'experiments', '**', '*.gin'),
                               recursive=True))


@pytest.fixture(scope='module')
def dry_run_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('dry_runs'))


def test_experiments_are_found():
  assert 'experiments/demo.gin' in EXPERIMENTS
  assert len(EXPERIMENTS) >= 10


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_lint_experiment_header_gives_command_and_reference(experiment):
  header = open(os.path.join(REPO, experiment)).read().split('include')[0]
  assert header.startswith('#'), 'an experiment opens with a comment'
  assert re.search(r'fmx (run|grid|tune) --gin ' + re.escape(experiment), header), (
      'the header gives the command that runs it')
  reference = RECIPES[experiment]['reference']
  words = ' '.join(header.replace('#', ' ').split())
  assert REFERENCE_WORDS[reference] in words, (
      f'the header says which reference the recipe follows ({reference})')


# ------------------------------------------------------------------ recipes
#
# Each experiment's recipe, written from ../shared/REFERENCE.md (the original
# TF2 implementation's recipe and results; big_vision's sweep table, 'fast'
# column) and, for the embedded demo, from its own header. Model Garden's
# AdamW decays lr x rate per step, so a reference weight decay wd is the
# rate wd / lr. The crop floor is max(area_range[0], min_object_covered).

REFERENCE_WORDS = {'original': 'original implementation',
                   'big_vision': 'big_vision', 'demo': 'embedded demo',
                   'study': 'docs/results.md'}

_ORIGINAL_TEACHER = {
    'reference': 'original', 'task': 'teacher', 'optimizer': 'sgd',
    'learning_rate': 8e-5, 'momentum': 0.9, 'decay': 'piecewise',
    'warmup_steps': 0, 'weight_decay': 0.0, 'clipnorm': None, 'epochs': 45,
    'batch': 512, 'resolution': 128, 'mixup': None, 'crop_floor': None,
    'teacher': 'https://tfhub.dev/google/bit/m-r101x3/1'}
_ORIGINAL_STUDENT = {
    'reference': 'original', 'task': 'distillation', 'optimizer': 'adamw',
    'learning_rate': 0.01, 'decay': 'cosine', 'warmup_steps': 1500,
    'weight_decay': 1e-5 / 0.01, 'clipnorm': 1.0, 'clip_mode': 'per_variable',
    'epsilon': None, 'batch': 512, 'resolution': 128, 'loss': 'kl',
    'temperature': 2.0, 'temperature_squared': False,
    'mixup': 'mixup_reverse', 'coefficient': 'uniform', 'crop_floor': 0.10,
    'student': 'bit_r50x1'}
_BIG_VISION_FAST = {
    'reference': 'big_vision', 'task': 'distillation', 'optimizer': 'adamw',
    'decay': 'cosine', 'warmup_steps': 1500, 'clipnorm': 1.0,
    'clip_mode': 'global_norm', 'epsilon': 1e-8, 'weight_decay_on': ['kernel'],
    'batch': 512, 'resolution': 128, 'loss': 'kl', 'temperature_squared': True,
    'mixup': 'mixup_roll', 'coefficient': 'beta', 'p': 1.0, 'crop_floor': 0.05,
    'student': 'bit_r50x1'}
_DEMO_STUDENT = {
    'reference': 'demo', 'task': 'distillation', 'optimizer': 'adamw',
    'learning_rate': 3e-3, 'decay': 'cosine', 'warmup_steps': 100,
    'weight_decay': 1e-4, 'clipnorm': None, 'epochs': 22, 'batch': 128,
    'resolution': 28, 'loss': 'kl', 'temperature': 2.0,
    'mixup': 'mixup_roll', 'coefficient': 'uniform', 'crop_floor': None,
    'student': 'simple_cnn', 'teacher_run': 'runs/demo/teacher'}


def _with(base, **values):
  return dict(base, **values)


_DEMO_TEACHER = _with(
    _DEMO_STUDENT, task='teacher', epochs=20, mixup=None, coefficient=None,
    loss=None, temperature=None, student=None, teacher_run=None,
    teacher='simple_cnn')
# The reproduction study (fmx/reproduce/studies.py): the demo's models and
# optimiser; every run sees 300 epochs of its distillation set's 200 images
# (the grids vary the set, the epochs and the way to teach).
_STUDY_STUDENT = _with(_DEMO_STUDENT, reference='study', epochs=300,
                       teacher_run='runs/reproduce/teacher')


RECIPES = {
    'experiments/demo.gin': _DEMO_STUDENT,
    'experiments/ablations/mixup_variants.gin': _DEMO_STUDENT,
    'experiments/ablations/teaching_modes.gin': _DEMO_STUDENT,
    'experiments/demo_teacher.gin': _DEMO_TEACHER,
    'experiments/demo_shampoo.gin': _with(_DEMO_STUDENT, optimizer='shampoo'),
    'experiments/demo_ensemble.gin': _with(
        _DEMO_STUDENT, teacher_run=None, ensemble='mean_probabilities',
        teacher_runs=['runs/demo/teacher', 'runs/demo/teacher_seed1']),
    'experiments/demo_teacher_seed1.gin': _with(_DEMO_TEACHER, seed=1),
    # The demo's searches: shorter runs (their header's plan), warmup 20.
    'experiments/tune_demo_teacher.gin': _with(_DEMO_TEACHER, batch=32,
                                               warmup_steps=20),
    'experiments/tune_demo_student.gin': _with(_DEMO_STUDENT, epochs=4,
                                               warmup_steps=20),
    # The original's search: 45 "epochs" of 10 steps at batch 512 = 450
    # steps, 70 epochs of Pet37's 3,312 training images.
    'experiments/tune_teacher_pets.gin': _with(_ORIGINAL_TEACHER, epochs=70),
    'experiments/reproduce/01_distillation_helps.gin': _STUDY_STUDENT,
    'experiments/reproduce/01_labels_only.gin': _with(
        _STUDY_STUDENT, task='teacher', mixup=None, coefficient=None, loss=None,
        temperature=None, student=None, teacher_run=None, teacher='simple_cnn'),
    'experiments/reproduce/02_teaching_modes.gin': _STUDY_STUDENT,
    'experiments/reproduce/03_patience.gin': _STUDY_STUDENT,
    'experiments/reproduce/04_mixup.gin': _STUDY_STUDENT,
    'experiments/reproduce/05_out_of_domain.gin': _STUDY_STUDENT,
    'experiments/reproduce/06_shampoo.gin': _STUDY_STUDENT,
    # The base point: one teacher, listed as an ensemble (the grid adds one).
    'experiments/reproduce/07_ensemble.gin': _with(
        _STUDY_STUDENT, teacher_run=None, teacher_runs=['runs/reproduce/teacher'],
        ensemble='mean_probabilities'),
    'experiments/flowers_teacher.gin': _ORIGINAL_TEACHER,
    'experiments/pets_teacher.gin': _ORIGINAL_TEACHER,
    'experiments/food101_teacher.gin': _ORIGINAL_TEACHER,
    'experiments/flowers_1000ep.gin': _with(
        _ORIGINAL_STUDENT, epochs=1000, teacher_run='runs/flowers/teacher'),
    'experiments/pets_300ep.gin': _with(
        _ORIGINAL_STUDENT, epochs=300, teacher_run='runs/pets/teacher'),
    'experiments/pets_1000ep.gin': _with(
        _ORIGINAL_STUDENT, epochs=1000, teacher_run='runs/pets/teacher'),
    'experiments/food101_100ep.gin': _with(
        _ORIGINAL_STUDENT, epochs=100, teacher_run='runs/food101/teacher'),
    # big_vision sweep, 'fast' column: epochs, t, lr, wd.
    'experiments/flowers_fast.gin': _with(
        _BIG_VISION_FAST, epochs=10_000, temperature=10, learning_rate=3e-3,
        weight_decay=3e-4 / 3e-3, teacher_run='runs/flowers/teacher'),
    'experiments/pets_fast.gin': _with(
        _BIG_VISION_FAST, epochs=1000, temperature=5, learning_rate=1e-2,
        weight_decay=1e-3 / 1e-2, teacher_run='runs/pets/teacher'),
    'experiments/pets_fast_shampoo.gin': _with(
        _BIG_VISION_FAST, epochs=1000, temperature=5, learning_rate=1e-2,
        weight_decay=1e-3 / 1e-2, teacher_run='runs/pets/teacher',
        optimizer='shampoo'),
    'experiments/food101_fast.gin': _with(
        _BIG_VISION_FAST, epochs=100, temperature=10, learning_rate=1e-2,
        weight_decay=1e-3 / 1e-2, teacher_run='runs/food101/teacher'),
}

_MISSING = object()


def _value(key, default=_MISSING):
  """The experiment's gin value of `key` (scoped keys as written)."""
  try:
    return gin.query_parameter(key)
  except ValueError:
    if default is _MISSING:
      raise
    return default


def _recipe_of_parsed_config():
  """The recipe fields of the parsed experiment, as the run would use them."""
  task = _value('Experiment.task')
  mixup = _value('Data.mixup', 'mixup_roll')
  crops = _value('Data.train_augmentations', ['inception_crop', 'random_flip'])
  recipe = {
      'task': task, 'optimizer': _value('Optimizer.name', 'adamw'),
      'learning_rate': _value('Optimizer.learning_rate'),
      'momentum': _value('Optimizer.momentum', 0.9),
      'decay': _value('Optimizer.decay', 'cosine'),
      'warmup_steps': _value('Optimizer.warmup_steps', 0),
      'weight_decay': _value('Optimizer.weight_decay', 0.0),
      'weight_decay_on': _value('Optimizer.weight_decay_on', None),
      'clipnorm': _value('Optimizer.clipnorm', None),
      'clip_mode': _value('Optimizer.clip_mode', 'global_norm'),
      'epsilon': _value('Optimizer.epsilon', None),
      'epochs': _value('Training.epochs'),
      'seed': _value('Training.seed', 0),
      'batch': _value('Training.global_batch_size'),
      'resolution': _value('Data.image_size'),
      'mixup': mixup,
      'crop_floor': (max(_value('augmentations.inception_crop.area_range')[0],
                         _value('augmentations.inception_crop.min_object_covered'))
                     if 'inception_crop' in crops else None),
  }
  if mixup:
    recipe['coefficient'] = _value(f'augmentations.{mixup}.coefficient', 'uniform')
    recipe['p'] = _value(f'augmentations.{mixup}.p', 1.0)
  if task == 'distillation':
    loss = _value('distillation.loss', 'kl')
    recipe.update(
        loss=loss, student=_value('distillation.student'),
        teacher_run=_value('distillation.teacher_run', None),
        teacher_runs=_value('distillation.teacher_runs', None),
        ensemble=_value('distillation.ensemble', 'mean_probabilities'),
        temperature=_value(f'losses.{loss}.temperature', 1.0),
        temperature_squared=_value(f'losses.{loss}.scale_by_temperature_squared',
                                   False))
  else:
    backbone = _value('teacher.backbone')
    recipe['teacher'] = (_value('teacher/backbones.hub.handle')
                         if backbone == 'hub' else backbone)
  return recipe


def test_every_experiment_has_a_recipe_row():
  assert sorted(RECIPES) == EXPERIMENTS


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_experiment_recipe_matches_its_reference(experiment):
  gin_config.parse([os.path.join(REPO, experiment)])
  actual = _recipe_of_parsed_config()
  expected = RECIPES[experiment]
  wrong = {key: (actual.get(key), value) for key, value in expected.items()
           if key != 'reference' and not _same(actual.get(key), value)}
  assert not wrong, f'{experiment}: (gin value, reference value) {wrong}'


def _same(actual, expected):
  if isinstance(expected, float) and isinstance(actual, (int, float)):
    return math.isclose(actual, expected, rel_tol=1e-9)
  if isinstance(expected, (list, tuple)):
    return list(actual or []) == list(expected)
  return actual == expected


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_dry_run(experiment, dry_run_root, monkeypatch):
  monkeypatch.chdir(dry_run_root)  # nothing may be written where a user runs
  results = run.run([os.path.join(REPO, experiment)], dry_run=True,
                    dry_run_root=dry_run_root)
  assert results['dry_run_dir'] == dry_run_root
  assert results['global_step'] == 1
  metrics = [v for k, v in results.items() if k.endswith('top1') or k == 'agreement']
  assert metrics and all(0.0 <= v <= 1.0 for v in metrics)
  assert all(math.isfinite(v) for v in results.values() if isinstance(v, float))
  assert not os.path.exists(os.path.join(dry_run_root, 'runs', 'demo', 'teacher'))
  assert not os.path.exists(os.path.join(REPO, 'runs', 'dry'))
