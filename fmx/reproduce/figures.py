"""The results page's figures: set sizes, patience, or validation curves.

Means over seeds with one standard deviation (n - 1) as error bars; the
validation curves come from `fmx compare`'s plot of the runs' summaries.
"""

from typing import Optional

import numpy as np

from fmx import compare
from fmx.reproduce import studies as studies_lib
from fmx.reproduce.studies import Plan, Study


def _errorbar(axis, xs, cells, stats, metric, label, scale=100):
  points = [(x, stats['cells'][c][metric]) for x, c in zip(xs, cells)
            if stats['cells'][c][metric]]
  if not points:
    return
  means = [scale * np.mean(v) for _, v in points]
  stds = [scale * compare.mean_std(v)[1] for _, v in points]
  axis.errorbar([x for x, _ in points], means, yerr=stds, marker='o', capsize=3,
                label=label)


def plot_study(study: Study, stats: dict, plan: Plan, path: str) -> Optional[str]:
  """The study's figure (set sizes, patience) or its validation curves."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if study.figure == 'sizes':
    figure, axis = plt.subplots(figsize=(6, 4))
    for prefix in ('function matching', 'labels only'):
      _errorbar(axis, plan.sizes, [f'{prefix}, {n} images' for n in plan.sizes],
                stats, 'top1', prefix)
    axis.set(xscale='log', xlabel='distillation set size (images)',
             ylabel='student test top-1 %', title='Study 1: does distillation help?')
    axis.set_xticks(plan.sizes, [str(n) for n in plan.sizes])
  elif study.figure == 'patience':
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode in studies_lib.PATIENCE_MODES:
      cells = [f'{studies_lib.MODE_NAMES[mode]}, {e} epochs'
               for e in studies_lib.PATIENCE_EPOCHS]
      _errorbar(axes[0], studies_lib.PATIENCE_EPOCHS, cells, stats, 'top1',
                studies_lib.MODE_NAMES[mode])
      _errorbar(axes[1], studies_lib.PATIENCE_EPOCHS, cells, stats, 'train_loss',
                studies_lib.MODE_NAMES[mode], scale=1)
    axes[0].set(xscale='log', xlabel='epochs', ylabel='student test top-1 %',
                title='Study 3: patience')
    axes[1].set(xscale='log', yscale='log', xlabel='epochs',
                ylabel='final training loss', title='training loss')
    for axis in axes:
      axis.set_xticks(studies_lib.PATIENCE_EPOCHS,
                      [str(e) for e in studies_lib.PATIENCE_EPOCHS])
  else:  # the cells' validation curves, mean over seeds, by fmx compare
    groups = {label: compare.summarize_runs(s['runs'])
              for label, s in stats['cells'].items() if s['runs']}
    if not groups:
      return None
    return compare.plot_curves(groups, path)
  for axis in figure.axes:
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path
