"""`python -m fmx.reproduce [--quick] [--studies N ...] [--page_only]`.

Runs the studies' grids (resumable: finished points are skipped, interrupted
ones resume from their checkpoints), then writes the results page, its
figures and results.json from every finished run. Run it from the repository
root (the experiments' paths are relative to it): `make reproduce`.
"""

import argparse
import json
import os
import sys
import time

from fmx import grid
from fmx.errors import UserError
from fmx.reproduce import results_page
from fmx.reproduce import studies as studies_lib


def grid_axes(plan, study_list):
  """(gin, root) -> the plan's axes, once per grid however many studies share it."""
  axes = {}
  for study in study_list:
    for run in study.grids:
      if (run.gin, run.root) not in axes:
        axes[(run.gin, run.root)] = plan.axes(grid.axes_from_files([run.gin]))
  return axes


def reproduce(plan, numbers, parallel: int = 1, page_only: bool = False) -> int:
  """Runs and reports; returns the number of grid points that failed."""
  study_list = studies_lib.by_number(plan, numbers)
  runnable = []
  for study in study_list:
    missing = study.missing()
    if missing:
      print(f'study {study.number} ({study.title}) not run: {missing}.', flush=True)
    else:
      runnable.append(study)
  # Every plan study is on the page; only those asked for are run.
  page_studies = studies_lib.by_number(plan, plan.numbers)
  axes = grid_axes(plan, [s for s in page_studies if not s.missing()])
  start, ran, skipped, failed = time.time(), 0, 0, 0
  if not page_only:
    for key in grid_axes(plan, runnable):
      gin_file, root = key
      print(f'grid {gin_file} -> {root}', flush=True)
      outcomes = grid.run_grid([gin_file], axes[key], root, parallel)
      print(grid.format_summary(outcomes), flush=True)
      ran += sum(o.status == 'done' for o in outcomes)
      skipped += sum(o.status == 'finished' for o in outcomes)
      failed += sum(o.status == 'failed' for o in outcomes)
  timing = _timing(plan, time.time() - start, ran, skipped, page_only, numbers)
  results_page.write_page(plan, page_studies, axes, timing)
  print(f'wrote {plan.page}', flush=True)
  return failed


def _timing(plan, seconds, ran, skipped, page_only, numbers=None):
  """Every invocation's time (kept in the plan's root), this one's last.

  A study added later (`--studies 7`) is a second invocation: the page shows
  each, so the time of the whole study is never replaced by a part's.
  """
  path = os.path.join(plan.root, 'reproduce_time.json')
  try:
    with open(path) as f:
      history = json.load(f)
  except (OSError, ValueError):
    history = []
  if isinstance(history, dict):  # one invocation, as written before
    history = [history]
  if page_only or (history and not ran):  # nothing trained: nothing to time
    return history or None
  studies = (None if not numbers or list(numbers) == list(plan.numbers)
             else [f'study {n}' for n in numbers])
  history.append({'seconds': seconds, 'ran_now': ran, 'skipped': skipped,
                  'finished': results_page.now(), 'studies': studies})
  os.makedirs(plan.root, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(history, f)
  return history


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m fmx.reproduce',
                                   description=__doc__.split('\n')[2])
  parser.add_argument('--quick', action='store_true',
                      help='studies 1 and 2, fewer sizes and a quarter of the '
                      'steps, into runs/reproduce-quick (< 20 min on 2 cores)')
  parser.add_argument('--studies', type=int, nargs='+',
                      help='run only these studies (the page shows them all)')
  parser.add_argument('--parallel', type=int, default=1,
                      help='grid points run at once (fmx grid --parallel)')
  parser.add_argument('--page_only', action='store_true',
                      help='run nothing, rewrite the page from finished runs')
  args = parser.parse_args(argv)
  plan = studies_lib.QUICK if args.quick else studies_lib.FULL
  try:
    failed = reproduce(plan, args.studies or plan.numbers, args.parallel,
                       args.page_only)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if failed:
    print(f'{failed} run(s) failed: see their log.txt; rerun to resume them.',
          file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
