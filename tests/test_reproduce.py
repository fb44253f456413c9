"""The reproduction study: its grid files, and the results page on fake runs.

The page's numbers are checked against the fake runs' results.json read
here, with the statistics computed independently (Python's `statistics`,
scipy's Welch test), so a cell that picks the wrong runs or a test that
compares the wrong cells fails.
"""

import collections
import json
import math
import os
import statistics

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats as scipy_stats

from fmx import grid
from fmx.reproduce import results_page
from fmx.reproduce import studies as studies_lib
from fmx.reproduce.__main__ import grid_axes

GRID_FILES = sorted(f'experiments/reproduce/{f}' for f in
                    os.listdir(os.path.join(os.path.dirname(__file__), '..',
                                            'experiments', 'reproduce')))


@pytest.mark.parametrize('gin_file', GRID_FILES)
def test_distillation_grids_declare_the_shared_keys(gin_file):
  """Points two studies share only share a folder if their names match."""
  axes = grid.axes_from_files([gin_file])
  if 'labels_only' in gin_file:
    assert tuple(axes) == studies_lib.LABELS_KEYS
  elif 'ensemble' not in gin_file:
    assert tuple(axes) == studies_lib.DISTILL_KEYS
  assert axes['Training.seed'] == list(studies_lib.SEEDS)


@pytest.mark.parametrize('plan', [studies_lib.FULL, studies_lib.QUICK],
                         ids=['full', 'quick'])
def test_every_cell_is_a_point_of_its_grids_with_every_seed(plan):
  study_list = studies_lib.by_number(plan, plan.numbers)
  axes = grid_axes(plan, [s for s in study_list if not s.missing()])
  for study in study_list:
    if study.missing():
      continue
    assert study.cells and study.claims
    labels = [c.label for c in study.cells]
    assert all(a in labels and b in labels for a, b in study.comparisons)
    for cell in study.cells:
      matching = {p.name: p for (_, root), a in axes.items() if root == cell.root
                  for p in grid.points(a)
                  if all(p.values.get(k) == v for k, v in cell.where.items())}
      seeds_by_tune = collections.defaultdict(list)
      for point in matching.values():
        seeds_by_tune[point.values.get(cell.tune)].append(point.values['Training.seed'])
      assert seeds_by_tune, (study.number, cell.label)
      for seeds in seeds_by_tune.values():
        assert sorted(seeds) == list(studies_lib.SEEDS), (study.number, cell.label)


def _fake_run(folder, results, validation_top1=None):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump(results, f)
  if validation_top1 is not None:
    writer = tf.summary.create_file_writer(os.path.join(folder, 'validation'))
    with writer.as_default():
      tf.summary.scalar('top1', validation_top1, step=10)
    writer.flush()


def test_results_page_on_fake_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # where the teacher run is looked for
  _fake_run(studies_lib.TEACHER_RUN, {'top1': 0.9876})
  plan = studies_lib.Plan(root=str(tmp_path / 'runs'), sizes=(200, 1000),
                          numbers=(1, 2), page=str(tmp_path / 'docs' / 'results.md'))
  study_list = studies_lib.by_number(plan, plan.numbers)
  axes = grid_axes(plan, study_list)
  rng = np.random.RandomState(0)
  written = {}  # folder -> results.json content
  for (_, root), grid_axes_ in axes.items():
    for point in grid.points(grid_axes_):
      folder = os.path.join(root, point.name)
      if folder in written or (point.values.get('distillation.teaching') == 'consistent'
                               and point.values['Training.seed'] == 2):
        continue  # one cell with 2 seeds only: n must say so
      if 'labels' in root:
        # The larger learning rate validates better but tests worse: the page
        # must pick it by validation, never by test.
        big = point.values['Optimizer.learning_rate'] > 5e-3
        results = {'top1': 0.90 + 0.01 * rng.rand() - 0.05 * big}
        _fake_run(folder, results, validation_top1=0.9 + 0.05 * big)
      else:
        results = {'student_top1': 0.95 + 0.02 * rng.rand(),
                   'agreement': 0.96 + 0.02 * rng.rand(),
                   'kl': 0.05 * rng.rand(), 'teacher_top1': 0.988}
        _fake_run(folder, results)
      written[folder] = results
  # Not a run of any cell: must not be counted.
  _fake_run(os.path.join(plan.root, 'distill', 'stray'), {'student_top1': 0.0})

  record = results_page.write_page(plan, study_list, axes)
  page = open(plan.page).read()
  on_disk = json.load(open(os.path.join(tmp_path, 'docs', 'results.json')))
  assert on_disk['studies'][0]['cells'].keys() == record['studies'][0]['cells'].keys()

  def values(cell_where, metric, extra=()):
    runs = [f for f in written if all(
        f'{k.split(".")[-1]}={grid._slug(v)}' in os.path.basename(f).split(',')
        for k, v in list(cell_where.items()) + list(extra))]
    key = {'top1': 'student_top1'}.get(metric, metric)
    return [written[r].get(key, written[r].get('top1')) for r in runs]

  cells = {c.label: c for s in study_list for c in s.cells}
  for study, study_record in zip(study_list, on_disk['studies']):
    for label, cell_record in study_record['cells'].items():
      cell = cells[label]
      extra = [(cell.tune, 1e-2)] if cell.tune else []
      for metric in ('top1', 'agreement', 'kl'):
        expected = values(cell.where, metric, extra) if metric == 'top1' or not cell.tune else []
        expected = [v for v in expected if v is not None]
        got = cell_record[metric]
        assert sorted(got['values']) == pytest.approx(sorted(expected)), (label, metric)
        if expected:
          assert got['mean'] == pytest.approx(statistics.mean(expected))
          assert got['std'] == pytest.approx(statistics.stdev(expected))
          scale, digits = (1, 4) if metric == 'kl' else (100, 2)
          assert (f'{scale * statistics.mean(expected):.{digits}f} ± '
                  f'{scale * statistics.stdev(expected):.{digits}f}') in page
      assert cell_record['n'] == (2 if label == 'consistent teaching' else 3)
      if cell.tune:
        assert cell_record['tuned'] == 1e-2
    for test in study_record['tests']:
      a = study_record['cells'][test['a']][test['metric']]['values']
      b = study_record['cells'][test['b']][test['metric']]['values']
      if len(a) > 1 and len(b) > 1:
        reference = scipy_stats.ttest_ind(a, b, equal_var=False)
        assert test['t'] == pytest.approx(reference.statistic)
        assert test['p'] == pytest.approx(reference.pvalue)
      else:
        assert test['p'] is None  # labels-only runs have no KL: no test
  # Claims: a row each, judged from the tests; the labels-only student is
  # worse on test in every size here, so distillation helps ('yes').
  claims = on_disk['studies'][0]['claims']
  assert claims[0]['agrees'] == 'yes'
  assert "| claim in the paper | paper's result | fmx's measured result | agrees? |" in page
  assert page.count('fmx grid --gin experiments/reproduce/') >= 3
  for number in (1, 2):
    assert os.path.getsize(tmp_path / 'docs' / 'figures' / f'study{number}.png') > 1000
  assert 'stray' not in json.dumps(on_disk['runs'])
  assert f'| teacher ({studies_lib.TEACHER_RUN}) | 1 | 98.76 ± 0.00 | - | - |' in page
  assert math.isclose(on_disk['runs'][next(iter(written))]['top1'] or 0,
                      written[next(iter(written))].get('student_top1',
                                                       written[next(iter(written))].get('top1')))


def test_every_point_of_the_runnable_grids_is_a_valid_config():
  """An axis value with a typo fails here, not 40 minutes into the study."""
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  from fmx.data.pipeline import Data  # pylint: disable=g-import-not-at-top
  from fmx.registry import DATASETS  # pylint: disable=g-import-not-at-top
  from fmx.tasks import teaching  # pylint: disable=g-import-not-at-top
  from fmx.training import settings  # pylint: disable=g-import-not-at-top
  plan = studies_lib.FULL
  runnable = [s for s in studies_lib.by_number(plan, plan.numbers) if not s.missing()]
  checked = 0
  for (gin_file, _), axes in grid_axes(plan, runnable).items():
    # Points differing only in seed or learning rate parse alike: one each.
    points = {repr([v for k, v in p.values.items()
                    if k not in ('Training.seed', 'Optimizer.learning_rate')]): p
              for p in grid.points(axes)}
    for point in points.values():
      gin_config.parse([gin_file], point.bindings)
      data = Data()
      DATASETS.get(data.train_dataset)
      settings.Optimizer()
      assert settings.Training().train_steps(
          int(data.train_split.split(':')[1].rstrip(']'))) >= 1
      if 'distillation.teaching' in point.values:
        teaching.check_mode(point.values['distillation.teaching'])
      checked += 1
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  assert checked >= 15


def _stats(**cells):
  return {'cells': {label: {'top1': values} for label, values in cells.items()},
          'tests': {}}


def test_claims_are_judged_by_welch_tests():
  clear = _stats(a=[0.95, 0.96, 0.97], b=[0.90, 0.91, 0.90])
  p = scipy_stats.ttest_ind([0.95, 0.96, 0.97], [0.90, 0.91, 0.90],
                            equal_var=False).pvalue
  measured, verdict = studies_lib.better('a', 'b')(clear)
  assert verdict == 'yes' and f'+5.67 pt top1 (p = {p:.3g})' in measured
  assert studies_lib.better('b', 'a')(clear)[1] == 'no'
  assert studies_lib.same('a', 'b')(clear)[1] == 'no'
  noisy = _stats(a=[0.95, 0.90, 0.99], b=[0.94, 0.97, 0.91])
  assert studies_lib.better('a', 'b')(noisy)[1].startswith('not resolved')
  assert studies_lib.same('a', 'b')(noisy)[1] == 'yes'
  both = _stats(a=[0.95, 0.96, 0.97], b=[0.90, 0.91, 0.90],
                c=[0.95, 0.90, 0.99], d=[0.94, 0.97, 0.91])
  assert studies_lib.every(studies_lib.better('a', 'b'),
                           studies_lib.better('c', 'd'))(both)[1] == 'partly'
  assert studies_lib.every(studies_lib.better('a', 'b'),
                           studies_lib.better('b', 'a'))(both)[1] == 'no'
  assert studies_lib.better('a', 'z')(_stats(a=[1.0], z=[]))[1] == 'not run'
  # Shampoo's claim: Adam's 300-epoch result in 4x fewer epochs.
  def reaching(**cells):
    return studies_lib.first_epochs_reaching(
        [(75, '75'), (150, '150'), (300, '300')], 'adam', 300, 4, 'top1')(
            _stats(adam=[0.95, 0.95], **cells))
  assert reaching(**{'75': [0.95, 0.96], '150': [0.97], '300': [0.98]}) == (
      'reached 95.00% top1 (adam) at 75 epochs (75): 4.0x fewer epochs', 'yes')
  assert reaching(**{'75': [0.90, 0.91], '150': [0.96, 0.97], '300': [0.98]}) == (
      'reached 95.00% top1 (adam) at 150 epochs (150): 2.0x fewer epochs', 'partly')
  assert reaching(**{'75': [0.90], '150': [0.94], '300': [0.96]})[1] == 'no'
  assert reaching(**{'75': [0.90], '150': [0.94], '300': [0.94]})[1] == 'no'


def test_reproduce_command_writes_the_page_from_what_exists(tmp_path, monkeypatch, capsys):
  from fmx.reproduce.__main__ import main  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)  # the plan's paths are relative to where it runs
  assert main(['--quick', '--page_only']) == 0
  page = open(tmp_path / 'runs' / 'reproduce-quick' / 'results.md').read()
  assert '| labels only, 200 images | 0 | - | - | - |' in page
  assert main(['--studies', '9', '--page_only']) == 2
  assert 'no study [9]' in capsys.readouterr().err


def test_page_keeps_the_time_of_every_invocation(tmp_path):
  from fmx.reproduce.__main__ import _timing  # pylint: disable=g-import-not-at-top
  plan = studies_lib.Plan(root=str(tmp_path / 'runs'))
  _timing(plan, 3313.0, 90, 21, page_only=False)
  _timing(plan, 10.0, 0, 111, page_only=False)  # a rerun that trained nothing
  history = _timing(plan, 480.0, 6, 0, page_only=False, numbers=[7])
  assert [h['seconds'] for h in history] == [3313.0, 480.0]
  assert _timing(plan, 0, 0, 0, page_only=True) == history
  header = '\n'.join(results_page._page_header(plan, None, history))  # pylint: disable=protected-access
  assert '55.2 min (every study: 90 runs ran' in header
  assert '8.0 min (study 7: 6 runs ran' in header
  assert 'Total 63.2 min of wall time.' in header
