"""`fmx grid`: the cartesian product of gin values, one run folder per point.

A grid is a base gin file plus axes, each a gin key and a list of values:

    fmx grid --gin experiments/demo.gin --root runs/grid \\
        --axis "Data.mixup = ['mixup_reverse', 'mixup_roll']" \\
        --axis "Training.seed = [0, 1, 2]"

or a gin file that includes its base and declares `Grid.axes` (see
experiments/ablations/). An axis may name several keys, separated by commas,
that vary together (one value tuple per point): e.g. a distillation set and
the epochs that give every set size the same number of steps,

    --axis "Data.train_split, Training.epochs = [('train[:100]', 600), ('train[:1000]', 60)]"
 Every point runs as its own `fmx run` process in
ROOT/<point name>, with its output in ROOT/<point name>/log.txt, so a point
that fails does not stop the others, and rerunning the grid skips finished
points (those with results.json) and resumes unfinished ones from their
checkpoints. The root holds TensorBoard's HParams experiment config, each
point its hparams, so the HParams dashboard compares the points.
"""

import ast
import dataclasses
import itertools
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import gin

from fmx.errors import UserError

RESULTS_FILE = 'results.json'  # fmx.tasks.teacher_run.RESULTS_FILE, without TF
LOG_FILE = 'log.txt'
# Metrics the HParams dashboard shows per task, read from each point's test/
# and validation/ summaries (tags as the tasks write them: a distillation
# run logs no plain 'top1').
TASK_METRICS = {'distillation': ('student_top1', 'teacher_top1', 'agreement', 'kl'),
                'teacher': ('top1', 'validation_loss')}
METRIC_GROUPS = ('test', 'validation')


def logged_metrics(task: str):
  """(group, tag) of every metric a run of `task` logs, for HParams."""
  return [(group, tag) for group in METRIC_GROUPS
          for tag in TASK_METRICS.get(task, ())]


@gin.configurable
class Grid:
  """Axes declared in a gin file: {'Data.mixup': ['mixup_roll', ...], ...}.

  A key 'A, B' is a linked axis: its values are (value of A, value of B).

  Args:
    axes: gin key -> the values the grid runs, one run per combination.
  """

  def __init__(self, axes: Optional[Dict[str, Sequence]] = None):
    # Linked keys spelled as `--axis` spells them, so that one overrides.
    self.axes = {', '.join(linked_keys(key)): values
                 for key, values in (axes or {}).items()}


@dataclasses.dataclass(frozen=True)
class Point:
  values: Dict[str, object]  # gin key -> value, in axis order

  @property
  def name(self) -> str:
    """A folder name from the values, e.g. 'mixup=mixup_roll,seed=0'."""
    short = [key.split('.')[-1] for key in self.values]
    keys = short if len(set(short)) == len(short) else list(self.values)
    parts = [f'{k}={_slug(v)}' for k, v in zip(keys, self.values.values())]
    return ','.join(parts)

  @property
  def bindings(self) -> List[str]:
    return [f'{key} = {value!r}' for key, value in self.values.items()]


def parse_axis(text: str) -> Dict[str, list]:
  """"KEY = [v1, v2]" -> {KEY: [v1, v2]} (values as Python/gin literals)."""
  key, sep, values = text.partition('=')
  key = ', '.join(k.strip() for k in key.split(','))
  try:
    parsed = ast.literal_eval(values.strip()) if sep else None
  except (ValueError, SyntaxError):
    parsed = None
  if not all(re.fullmatch(r'[\w./]+', k) for k in linked_keys(key)) \
      or not isinstance(parsed, (list, tuple)) or not parsed:
    raise UserError(f"--axis {text!r} is not of the form \"KEY = [v1, v2, ...]\" "
                    "(or \"KEY1, KEY2 = [(v1, w1), (v2, w2)]\") with Python "
                    "literals (quote strings: ['mixup_roll']).")
  axes = {key: list(parsed)}
  check_axes(axes)
  return axes


def linked_keys(axis: str) -> List[str]:
  """The gin keys an axis sets: ['A', 'B'] for the linked axis 'A, B'."""
  return [key.strip() for key in axis.split(',')]


def check_axes(axes: Dict[str, Sequence]) -> None:
  """Every value of a linked axis holds one value per key."""
  for axis, values in axes.items():
    keys = linked_keys(axis)
    if len(keys) == 1:
      continue
    wrong = [v for v in values
             if not isinstance(v, (list, tuple)) or len(v) != len(keys)]
    if wrong:
      raise UserError(f'grid axis {axis!r} sets {len(keys)} keys together, so '
                      f'each of its values is a tuple of {len(keys)} values; '
                      f'{wrong[0]!r} is not.')


def points(axes: Dict[str, Sequence]) -> List[Point]:
  check_axes(axes)
  result = []
  for combo in itertools.product(*axes.values()):
    values = {}
    for axis, value in zip(axes, combo):
      keys = linked_keys(axis)
      values.update(zip(keys, value) if len(keys) > 1 else [(axis, value)])
    result.append(Point(values))
  return result


def key_values(axes: Dict[str, Sequence]) -> Dict[str, list]:
  """Each gin key -> its distinct values, linked axes split into their keys."""
  values: Dict[str, list] = {}
  for point in points(axes):
    for key, value in point.values.items():
      known = values.setdefault(key, [])
      if value not in known:
        known.append(value)
  return values


def axes_from_files(gin_files: Sequence[str]) -> Dict[str, list]:
  """The `Grid.axes` a set of gin files declares, if any."""
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  gin_config.parse(gin_files)
  axes = Grid().axes
  gin.clear_config()
  return axes


def task_of(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> str:
  """The `Experiment.task` the grid's points run."""
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  gin_config.parse(gin_files, bindings)
  try:
    return gin.query_parameter('Experiment.task')
  except ValueError:
    return ''  # not set: every point fails with gin's message
  finally:
    gin.clear_config()


@dataclasses.dataclass
class Outcome:
  point: Point
  status: str  # 'finished' (earlier), 'done', 'failed'
  log: str
  seconds: float = 0.0


def run_grid(gin_files: Sequence[str], axes: Dict[str, Sequence], root: str,
             parallel: int = 1, extra_bindings: Sequence[str] = ()) -> List[Outcome]:
  """Runs every unfinished point; returns one Outcome per point."""
  if not axes:
    raise UserError('the grid has no axes: pass --axis "KEY = [v1, v2]" or set '
                    'Grid.axes in the gin file.')
  grid_points = points(axes)
  names = [p.name for p in grid_points]
  clashes = sorted({n for n in names if names.count(n) > 1})
  if clashes:
    raise UserError(f'grid points {clashes} would share a folder (values that '
                    'differ only in punctuation); make the axis values distinct.')
  task = task_of(gin_files, extra_bindings)
  os.makedirs(root, exist_ok=True)
  write_hparams_config(root, axes, task)
  outcomes, pending = [], []
  for point in grid_points:
    folder = os.path.join(root, point.name)
    if os.path.exists(os.path.join(folder, RESULTS_FILE)):
      outcomes.append(Outcome(point, 'finished', os.path.join(folder, LOG_FILE)))
    else:
      pending.append(point)
  # Points share the machine's cores: give each process its share of threads.
  threads = max(1, (os.cpu_count() or 1) // max(1, parallel))
  running = []
  try:
    while pending or running:
      # Points run alone until one has succeeded: it may train a shared
      # teacher first, which parallel points must not all start at once.
      first_alone = running and not any(o.status in ('done', 'finished')
                                        for o in outcomes)
      while pending and len(running) < max(1, parallel) and not first_alone:
        point = pending.pop(0)
        folder = os.path.join(root, point.name)
        os.makedirs(folder, exist_ok=True)
        write_hparams(folder, point.values, point.name)
        print(f'start  {point.name}', flush=True)
        running.append((point, RunProcess(
            folder, gin_files, list(extra_bindings) + point.bindings,
            threads if parallel > 1 else None)))
      time.sleep(0.2)
      for job in [j for j in running if j[1].finished()]:
        running.remove(job)
        point, process = job
        ok = process.returncode == 0
        outcomes.append(Outcome(point, 'done' if ok else 'failed', process.log,
                                process.seconds))
        print(f'{"done  " if ok else "FAILED"} {point.name} '
              f'({process.seconds:.0f} s){"" if ok else ": see " + process.log}',
              flush=True)
  finally:
    for _, process in running:  # interrupted: stop the children too
      process.stop()
  order = {p.name: i for i, p in enumerate(grid_points)}
  return sorted(outcomes, key=lambda o: order[o.point.name])


class RunProcess:
  """`fmx run` into `folder` as a child process, its output in folder/log.txt.

  `threads` (for runs sharing the machine) sets Runtime.intra_op_threads.
  """

  def __init__(self, folder: str, gin_files: Sequence[str],
               bindings: Sequence[str], threads: Optional[int] = None):
    command = [sys.executable, '-m', 'fmx', 'run', '--model_dir', folder]
    for gin_file in gin_files:
      command += ['--gin', gin_file]
    for binding in list(bindings) + (
        [f'Runtime.intra_op_threads = {threads}'] if threads else []):
      command += ['--bind', binding]
    self.log = os.path.join(folder, LOG_FILE)
    self._log_file = open(self.log, 'a')
    self._log_file.write(f'$ {" ".join(command)}\n')
    self._log_file.flush()
    self._start = time.time()
    self.seconds = 0.0
    self._process = subprocess.Popen(command, stdout=self._log_file,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

  @property
  def returncode(self) -> Optional[int]:
    return self._process.returncode

  def finished(self) -> bool:
    if self._process.poll() is None:
      return False
    self.seconds = time.time() - self._start
    self._log_file.close()
    return True

  def stop(self) -> None:
    """SIGTERM (the run saves a checkpoint and exits), then wait for it."""
    self._process.terminate()
    self._process.wait()
    self._log_file.close()


def _hparam_value(value):
  return value if isinstance(value, (bool, int, float, str)) else repr(value)


def write_hparams_config(root: str, axes: Dict[str, Sequence],
                         task: str = 'distillation') -> None:
  """The HParams experiment at the grid root: axes as hparams, the metrics
  that runs of `task` log.

  An axis is a list of values or a TensorBoard HParams domain (`fmx tune`'s
  ranges: hp.RealInterval, hp.IntInterval).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
  ranges = {key: values for key, values in axes.items()
            if isinstance(values, hp.Domain)}
  listed = {key: values for key, values in axes.items() if key not in ranges}
  hparams = [hp.HParam(key, domain) for key, domain in ranges.items()] + [
      hp.HParam(key, hp.Discrete([_hparam_value(v) for v in values]))
      for key, values in key_values(listed).items()]
  metrics = [hp.Metric(tag, group=group, display_name=f'{group}/{tag}')
             for group, tag in logged_metrics(task)]
  with tf.summary.create_file_writer(root).as_default():
    hp.hparams_config(hparams=hparams, metrics=metrics)


def write_hparams(folder: str, values: Dict[str, object], name: str) -> None:
  """A run's hparam values, once per folder (a resumed run keeps them)."""
  marker = os.path.join(folder, '.hparams_written')
  if os.path.exists(marker):
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
  with tf.summary.create_file_writer(folder).as_default():
    hp.hparams({k: _hparam_value(v) for k, v in values.items()}, trial_id=name)
  open(marker, 'w').close()


def format_summary(outcomes: Sequence[Outcome]) -> str:
  lines = []
  for status in ('finished', 'done', 'failed'):
    chosen = [o for o in outcomes if o.status == status]
    if not chosen:
      continue
    label = {'finished': 'already finished (skipped)', 'done': 'ran now',
             'failed': 'FAILED'}[status]
    lines.append(f'{label}: {len(chosen)}')
    if status == 'failed':
      lines += [f'  {o.point.name}: log {o.log}' for o in chosen]
  return '\n'.join(lines)


def _slug(value) -> str:
  return re.sub(r'[^A-Za-z0-9_.+-]+', '_', str(value)).strip('_') or '_'
