"""`fmx compare`: final and best metrics per group of runs, and their curves.

Runs are the folders holding results.json under the given folders (a grid
root or single runs). Runs that differ only in their seed form a group
(grid points named '...,seed=N'); each group shows mean +/- std over its
seeds. Curves come from the runs' own TensorBoard summaries, read with
TensorBoard's event reader.
"""

import collections
import json
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

from fmx.errors import UserError
from fmx.grid import RESULTS_FILE

_SEED = re.compile(r'(^|,)[\w.]*seed=[^,]*')
CURVES = ('student_top1', 'agreement', 'top1')  # validation tags, as logged
FINAL = ('student_top1', 'agreement', 'teacher_top1', 'top1')


def find_runs(folders: Sequence[str]) -> List[str]:
  runs = []
  for folder in folders:
    if not os.path.isdir(folder):
      raise UserError(f'{folder!r} is not a folder; pass run folders or grid roots.')
    for root, dirs, files in os.walk(folder):
      if RESULTS_FILE in files:
        runs.append(root)
        dirs[:] = []  # a run's subfolders are its summaries, not runs
  if not runs:
    raise UserError(f'no finished runs (results.json) under {list(folders)}.')
  return sorted(runs)


def group_name(run_dir: str) -> str:
  return _SEED.sub('', os.path.basename(os.path.normpath(run_dir))).strip(',') or 'all'


def read_curve(run_dir: str, tag: str, subdir: str = 'validation') -> Tuple[np.ndarray, np.ndarray]:
  """(steps, values) of a scalar written with tf.summary in run_dir/subdir."""
  return read_scalars(run_dir, subdir).get(tag, (np.array([]), np.array([])))


def read_scalars(run_dir: str, subdir: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """tag -> (steps, values) of every scalar written with tf.summary in run_dir/subdir."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = os.path.join(run_dir, subdir)
  if not os.path.isdir(path):
    return {}
  accumulator = event_accumulator.EventAccumulator(
      path, size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  curves = {}
  for tag in accumulator.Tags().get('tensors', []):
    # Images (the first batch) share the folder; only scalars are curves.
    if accumulator.SummaryMetadata(tag).plugin_data.plugin_name != 'scalars':
      continue
    events = accumulator.Tensors(tag)
    steps = np.array([e.step for e in events])
    values = np.array([float(tf.make_ndarray(e.tensor_proto)) for e in events])
    order = np.argsort(steps, kind='stable')
    curves[tag] = (steps[order], values[order])
  return curves


def read_results(run_dir: str) -> dict:
  """A finished run's results.json."""
  with open(os.path.join(run_dir, RESULTS_FILE)) as f:
    return json.load(f)


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
  """Mean and sample standard deviation (n - 1; 0 for a single value)."""
  values = np.asarray(values, np.float64)
  return (float(values.mean()),
          float(values.std(ddof=1)) if values.size > 1 else 0.0)


def welch_test(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float]:
  """(t, two-sided p) of Welch's t-test of mean(a) = mean(b) (unequal variances).

  NaN when either side has fewer than 2 values, or both have none spread.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
    return float('nan'), float('nan')
  result = stats.ttest_ind(a, b, equal_var=False)
  return float(result.statistic), float(result.pvalue)


def summarize(folders: Sequence[str]) -> Dict[str, dict]:
  """group -> {'runs': [...], 'final': {metric: [values]}, 'best': {...}}."""
  runs_by_group: Dict[str, List[str]] = collections.OrderedDict()
  for run_dir in find_runs(folders):
    runs_by_group.setdefault(group_name(run_dir), []).append(run_dir)
  return collections.OrderedDict(
      (name, summarize_runs(runs)) for name, runs in runs_by_group.items())


def summarize_runs(run_dirs: Sequence[str]) -> dict:
  """One group's {'runs', 'final': {metric: [values]}, 'best': {tag: [values]}}."""
  group = {'runs': list(run_dirs), 'final': collections.defaultdict(list),
           'best': collections.defaultdict(list)}
  for run_dir in run_dirs:
    results = read_results(run_dir)
    for metric in FINAL:
      if metric in results:
        group['final'][metric].append(results[metric])
    for metric in CURVES:
      _, values = read_curve(run_dir, metric)
      if values.size:
        group['best'][metric].append(float(values.max()))
  return group


def _mean_std(values: List[float]) -> str:
  if not values:
    return '-'
  return f'{100 * np.mean(values):.2f} +/- {100 * np.std(values):.2f}'


def format_table(groups: Dict[str, dict]) -> str:
  metrics = [m for m in FINAL if any(g['final'].get(m) for g in groups.values())]
  best = [m for m in CURVES if any(g['best'].get(m) for g in groups.values())]
  header = (['group', 'runs'] + [f'test {m} %' for m in metrics] +
            [f'best val {m} %' for m in best])
  rows = [header]
  for name, group in groups.items():
    rows.append([name, str(len(group['runs']))] +
                [_mean_std(group['final'].get(m, [])) for m in metrics] +
                [_mean_std(group['best'].get(m, [])) for m in best])
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                   for r in rows)


def plot_curves(groups: Dict[str, dict], path: str) -> str:
  """One PNG: each curve tag vs step, one line per group (mean over seeds)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tags = [t for t in CURVES if any(g['best'].get(t) for g in groups.values())]
  figure, axes = plt.subplots(1, max(1, len(tags)), figsize=(6 * max(1, len(tags)), 4),
                              squeeze=False)
  for axis, tag in zip(axes[0], tags):
    for name, group in groups.items():
      curves = [read_curve(r, tag) for r in group['runs']]
      curves = [c for c in curves if c[0].size]
      if not curves:
        continue
      steps = curves[0][0]
      same = [c[1] for c in curves if np.array_equal(c[0], steps)]
      mean = np.mean(same, axis=0)
      axis.plot(steps, mean, marker='o', label=f'{name} (n={len(same)})')
      if len(same) > 1:
        std = np.std(same, axis=0)
        axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
    axis.set_title(f'validation {tag}')
    axis.set_xlabel('step')
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path
