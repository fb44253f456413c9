"""`fmx tune`: a Keras Tuner oracle proposes values, fmx runs train them.

    fmx tune --gin experiments/tune_demo_teacher.gin --root runs/tune

Every trial binds its values after the gin files and trains one ordinary
fmx run folder per execution (executions differ by Training.seed). ROOT
holds everything, so rerunning the command resumes the search:

    ROOT/tune.json                 what is searched; a rerun must search the same
    ROOT/oracle/                   the oracle's state (fmx.tuning.oracles)
    ROOT/trial_<id>,seed=<s>/      one fmx run per execution, with its log
    ROOT/events.out.tfevents.*     the HParams experiment (each run: its values)

Finished trials are never rerun; the trial interrupted by a kill is offered
again and its executions resume from their checkpoints (finished ones are
kept). A trial's objective is the best value its validation metric reached
(Keras Tuner's rule), averaged over executions. A Hyperband trial promoted
to more epochs starts from a copy of its parent's last checkpoint and
continues it (`tuner/initial_epoch` -> `tuner/epochs`).
"""

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence

import gin

from fmx import gin_config
from fmx import grid
from fmx.errors import Preempted, StopRun, UserError
from fmx.training import early_stopping
from fmx.training.run_dir import write_text
from fmx.tuning import oracles
from fmx.tuning import space as space_lib

SEARCH_FILE = 'tune.json'
EPOCHS_KEY = 'Training.epochs'  # what Hyperband's tuner/epochs sets


@dataclasses.dataclass
class Trial:
  """One trial of a search, as TuneResult.trials lists them."""
  trial_id: str
  values: Dict[str, object]  # gin key -> value (Training.epochs for hyperband)
  objective: Optional[float]  # None unless completed
  status: str  # 'COMPLETED', 'FAILED', 'RUNNING' (interrupted), ...
  model_dirs: List[str]
  parent: Optional[str] = None  # hyperband: the trial this one continues
  message: str = ''

  @property
  def bindings(self) -> List[str]:
    return [f'{key} = {value!r}' for key, value in self.values.items()]


@dataclasses.dataclass
class TuneResult:
  root: str
  objective: str  # e.g. 'validation/top1'
  trials: List[Trial]  # best first; trials without an objective last

  @property
  def best(self) -> Optional[Trial]:
    return self.trials[0] if self.trials and self.trials[0].objective is not None else None

  @property
  def best_bindings(self) -> List[str]:
    return self.best.bindings if self.best else []


@dataclasses.dataclass
class Search:
  """Everything a search needs, checked before its first trial."""
  gin_files: List[str]
  bindings: List[str]
  root: str
  dimensions: List[space_lib.Dimension]
  oracle: str
  objective: str  # 'validation/<metric>'
  direction: str  # 'max' or 'min'
  executions: int
  max_trials: Optional[int]
  oracle_options: dict
  seed: int
  base_seed: int

  @property
  def metric(self) -> str:
    return self.objective.split('/', 1)[1]

  def description(self) -> dict:
    """What must not change between invocations on one ROOT."""
    return {'space': space_lib.describe(self.dimensions), 'oracle': self.oracle,
            'oracle_options': repr(sorted(self.oracle_options.items())),
            'objective': self.objective,
            'executions_per_trial': self.executions}


def tune(gin_files: Sequence[str], root: str, bindings: Sequence[str] = (),
         oracle: Optional[str] = None, max_trials: Optional[int] = None,
         executions_per_trial: Optional[int] = None,
         objective: Optional[str] = None, parallel: int = 1) -> TuneResult:
  """Runs (or resumes) the search the gin files declare in `Tune`.

  The arguments win over the gin file's Tune settings. With parallel 1 the
  runs train in this process; with more, each is an `fmx run` process with
  its share of the cores and its output in its folder's log.txt.
  """
  search = plan(gin_files, root, bindings, oracle, max_trials,
                executions_per_trial, objective)
  os.makedirs(root, exist_ok=True)
  _check_same_search(search)
  the_oracle = oracles.build(search.oracle, search.objective, search.direction,
                             search.dimensions, search.max_trials,
                             search.oracle_options, search.seed, root)
  axes = {d.key: d.hparams_domain() for d in search.dimensions}
  if search.oracle == 'hyperband':
    from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
    axes[EPOCHS_KEY] = hp.IntInterval(1, int(the_oracle.max_epochs))
  grid.write_hparams_config(root, axes)
  _Driver(search, the_oracle, parallel).run()
  return collect(search, the_oracle)


def plan(gin_files, root, bindings=(), oracle=None, max_trials=None,
         executions_per_trial=None, objective=None) -> Search:
  """Reads and checks the search; every mistake is a UserError, before any trial."""
  from fmx.registry import TASKS  # pylint: disable=g-import-not-at-top
  from fmx.training.settings import Experiment  # pylint: disable=g-import-not-at-top
  gin_files, bindings = list(gin_files), list(bindings)
  gin_config.parse(gin_files, bindings)
  settings = space_lib.Tune()
  task_name = Experiment().task
  logged = TASKS.get(task_name).VALIDATION_METRICS
  base_seed = _bound('Training.seed', 0)
  base_epochs = _bound(EPOCHS_KEY, None)
  gin.clear_config()
  dimensions = space_lib.parse_space(settings.space)
  oracle = oracle or settings.oracle
  if oracle not in space_lib.ORACLES:
    raise UserError(f'unknown oracle {oracle!r}; use one of '
                    f'{", ".join(space_lib.ORACLES)}.')
  objective = objective or settings.objective
  if objective == 'auto':
    objective = f'validation/{logged[0]}'
  metric = objective.split('/', 1)[1] if objective.startswith('validation/') else None
  if metric not in logged:
    raise UserError(
        f'the objective {objective!r} is no metric that {task_name} runs log, '
        f'so no trial could be scored; use one of '
        f'{", ".join("validation/" + m for m in logged)} (--objective or '
        'Tune.objective).')
  executions = executions_per_trial or settings.executions_per_trial
  max_trials = max_trials if max_trials is not None else settings.max_trials
  for name, value in (('executions_per_trial', executions),
                      ('max_trials', max_trials)):
    if value is not None and value < 1:
      raise UserError(f'{name} = {value}; use 1 or more.')
  options = dict(settings.oracle_options)
  if oracle == 'hyperband':
    options.setdefault('max_epochs', math.ceil(base_epochs or 1))
  _check_keys(gin_files, bindings, dimensions)
  return Search(gin_files, bindings, root, dimensions, oracle, objective,
                early_stopping.direction(metric), executions, max_trials,
                options, settings.seed, base_seed)


def _bound(key: str, default):
  try:
    return gin.query_parameter(key)
  except ValueError:
    return default


def _check_keys(gin_files, bindings, dimensions) -> None:
  """Each key of the space must be a gin parameter fmx knows."""
  for dimension in dimensions:
    try:
      gin_config.parse(gin_files, bindings + [
          dimension.binding(dimension.example())])
    except UserError as e:
      raise UserError(f'Tune.space key {dimension.key!r} cannot be bound: '
                      f'{e}') from None
    finally:
      gin.clear_config()


def _check_same_search(search: Search) -> None:
  path = os.path.join(search.root, SEARCH_FILE)
  described = search.description()
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    changed = [k for k in described if before.get(k) != described[k]]
    if changed:
      raise UserError(
          f'{search.root!r} holds a search with another {", ".join(changed)} '
          f'({path}); its trials would not compare with the new ones. Use '
          'another --root, or restore the earlier settings to resume it.')
  else:
    write_text(path, json.dumps(described, indent=2) + '\n')


@dataclasses.dataclass
class _Execution:
  seed: int
  folder: str
  bindings: List[str]
  parent_folder: Optional[str]  # hyperband: the run this one continues


@dataclasses.dataclass
class _Slot:
  """A trial being run by one of the driver's `parallel` slots."""
  trial: object  # keras_tuner's Trial
  pending: List[_Execution]  # executions not started yet
  process: Optional[grid.RunProcess] = None  # the one running (parallel > 1)


class _Driver:
  """Asks the oracle for trials and runs their executions, `parallel` at once."""

  def __init__(self, search: Search, oracle, parallel: int):
    self.search, self.oracle = search, oracle
    self.parallel = max(1, parallel)
    # Runs share the machine's cores: each process gets its share of threads.
    self.threads = (max(1, (os.cpu_count() or 1) // self.parallel)
                    if self.parallel > 1 else None)
    self.active: Dict[str, _Slot] = {}  # by the oracle's tuner id
    self.completed_any = any(t.status == 'COMPLETED' for t in oracle.trials.values())

  def run(self) -> None:
    try:
      stopped = False
      while True:
        started = False
        if not stopped:
          stopped, started = self._fill_slots()
        if self.active:
          self._wait_for_one()
        elif stopped or not started:
          return  # the oracle has no trial left (or none it can offer now)
    finally:
      for slot in self.active.values():
        if slot.process is not None:  # interrupted: stop the children too
          slot.process.stop()

  def _fill_slots(self):
    """Starts trials on free slots: (the oracle has no more, any started)."""
    started = False
    for index in range(self.parallel):
      tuner_id = f'tuner{index}'
      # The first trial runs alone until it succeeds: it may train a
      # shared teacher first, which parallel runs must not all start.
      if tuner_id in self.active or (self.active and not self.completed_any):
        continue
      trial = self._create_trial(tuner_id)
      if trial.status == 'STOPPED':
        return True, started
      if trial.status != 'RUNNING':
        return False, started  # hyperband: waits for running trials' results
      started = True
      unfinished = [e for e in executions(self.search, trial)
                    if not os.path.exists(os.path.join(e.folder, grid.RESULTS_FILE))]
      self.active[tuner_id] = _Slot(trial, unfinished)
      self._advance(tuner_id)
    return False, started

  def _create_trial(self, tuner_id):
    try:
      return self.oracle.create_trial(tuner_id)
    except ValueError as e:
      raise UserError(f'the {self.search.oracle} oracle cannot search this '
                      f'space: {e}') from None

  def _advance(self, tuner_id: str) -> None:
    """Starts the trial's next execution, or ends the trial."""
    slot = self.active[tuner_id]
    trial = slot.trial
    while slot.pending:
      execution = slot.pending.pop(0)
      self._prepare_run(trial, execution)
      if self.parallel == 1:
        ok, message = _run_in_process(self.search, execution)
        if not ok:
          return self._end(tuner_id, 'FAILED', message)
        continue
      slot.process = grid.RunProcess(
          execution.folder, self.search.gin_files, execution.bindings,
          self.threads)
      return None
    return self._end(tuner_id, 'COMPLETED')

  def _wait_for_one(self) -> None:
    while True:
      for tuner_id, slot in list(self.active.items()):
        process = slot.process
        if process is not None and process.finished():
          slot.process = None
          if process.returncode == Preempted.exit_code:
            raise Preempted(f'a run of the search was preempted ({process.log}); '
                            'rerun the same command to resume the search.')
          if process.returncode != 0:
            self._end(tuner_id, 'FAILED', f'exit code {process.returncode}, '
                      f'see {process.log}')
          else:
            self._advance(tuner_id)
          return
      time.sleep(0.2)

  def _prepare_run(self, trial, execution: _Execution) -> None:
    """Says what starts, records its hparams, gives it its parent's checkpoint."""
    values = ', '.join(f'{d.key}={d.value(trial.hyperparameters.values[d.key])}'
                       for d in self.search.dimensions)
    epochs = trial.hyperparameters.values.get('tuner/epochs')
    extra = f', {EPOCHS_KEY}={epochs}' if epochs else ''
    if execution.parent_folder:
      extra += f' (continues trial {trial.hyperparameters.values["tuner/trial_id"]})'
    print(f'trial {trial.trial_id} seed {execution.seed}: {values}{extra} -> '
          f'{execution.folder}', flush=True)
    os.makedirs(execution.folder, exist_ok=True)
    grid.write_hparams(execution.folder, trial_values(self.search, trial),
                       os.path.basename(execution.folder))
    if execution.parent_folder:
      continue_checkpoint(execution.parent_folder, execution.folder)

  def _end(self, tuner_id: str, status: str, message: str = '') -> None:
    trial = self.active.pop(tuner_id).trial
    if status == 'COMPLETED':
      scores = [objective_of(e.folder, self.search.metric, self.search.direction)
                for e in executions(self.search, trial)]
      if any(s is None for s in scores):
        status, message = 'FAILED', (f'no {self.search.objective} was logged; '
                                     'see the runs\' validation summaries')
      else:
        value = sum(scores) / len(scores)
        self.oracle.update_trial(trial.trial_id, {self.search.objective: value})
        print(f'trial {trial.trial_id}: {self.search.objective} {value:.4f}',
              flush=True)
        self.completed_any = True
    if status == 'FAILED':
      print(f'trial {trial.trial_id} FAILED: {message}', flush=True)
    trial.status, trial.message = status, message
    self.oracle.end_trial(trial)


def executions(search: Search, trial) -> List[_Execution]:
  """The runs of a trial, one per execution, with their bindings."""
  values = trial.hyperparameters.values
  bindings = list(search.bindings) + [
      d.binding(values[d.key]) for d in search.dimensions]
  if 'tuner/epochs' in values:
    bindings.append(f'{EPOCHS_KEY} = {int(values["tuner/epochs"])}')
  # Early stopping, when the config asks for it, watches the objective.
  bindings.append(f'Training.early_stopping_metric = {search.metric!r}')
  parent = values.get('tuner/trial_id')
  runs = []
  for index in range(search.executions):
    seed = search.base_seed + index
    runs.append(_Execution(
        seed, run_folder(search.root, trial.trial_id, seed),
        bindings + [f'Training.seed = {seed}'],
        run_folder(search.root, parent, seed) if parent else None))
  return runs


def _run_in_process(search: Search, execution: _Execution):
  """(ok, message): trains the execution's run here, as `fmx run` would."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  from fmx.training import run  # pylint: disable=g-import-not-at-top
  try:
    run.run(search.gin_files, execution.bindings, execution.folder)
    return True, ''
  except Preempted:
    raise
  except StopRun as e:  # a user error or divergence ends this trial only
    return False, str(e).split('\n  In call to configurable')[0]
  finally:
    gin.clear_config()
    tf_keras.backend.clear_session()


def run_folder(root: str, trial_id: str, seed: int) -> str:
  return os.path.join(root, f'trial_{trial_id},seed={seed}')


def trial_values(search: Search, trial) -> Dict[str, object]:
  """gin key -> Python value of a trial (plus Training.epochs for hyperband)."""
  values = trial.hyperparameters.values
  result = {d.key: d.value(values[d.key]) for d in search.dimensions if d.key in values}
  if 'tuner/epochs' in values:
    result[EPOCHS_KEY] = int(values['tuner/epochs'])
  return result


def objective_of(folder: str, metric: str, direction: str) -> Optional[float]:
  """The best value the run's validation `metric` reached (None: never logged)."""
  from fmx.compare import read_curve  # pylint: disable=g-import-not-at-top
  _, values = read_curve(folder, metric)
  if not values.size:
    return None
  return float(values.max() if direction == 'max' else values.min())


def continue_checkpoint(parent_folder: str, folder: str) -> None:
  """Copies the parent run's latest checkpoint into a run that has none.

  The run then restores it and trains on from the parent's step (fmx resumes
  exactly: weights, optimizer, step and data position). The checkpoint list
  is written last, so a copy cut short by a kill is simply done again.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.train.latest_checkpoint(folder):
    return  # resumed: it has checkpoints of its own
  prefix = tf.train.latest_checkpoint(parent_folder)
  if prefix is None:
    raise StopRun(f'Hyperband promoted a trial whose run {parent_folder} has no '
                  'checkpoint to continue; was the folder removed?')
  for path in tf.io.gfile.glob(prefix + '.*'):
    shutil.copy(path, os.path.join(folder, os.path.basename(path)))
  # Relative, like the run's own list: the folder may move.
  tf.compat.v1.train.update_checkpoint_state(folder, os.path.basename(prefix))


def collect(search: Search, oracle) -> TuneResult:
  """Every trial of the oracle, best first."""
  trials = []
  for trial in oracle.trials.values():
    completed = trial.status == 'COMPLETED'
    values = trial.hyperparameters.values
    trials.append(Trial(
        trial.trial_id, trial_values(search, trial),
        float(trial.score) if completed and trial.score is not None else None,
        trial.status,
        [e.folder for e in executions(search, trial)],
        values.get('tuner/trial_id'), trial.message or ''))
  sign = -1.0 if search.direction == 'max' else 1.0
  trials.sort(key=lambda t: (t.objective is None,
                             sign * (t.objective or 0.0), t.trial_id))
  return TuneResult(search.root, search.objective, trials)


def format_result(result: TuneResult) -> str:
  """The table of trials, best first, and the best trial's bindings."""
  keys = list(dict.fromkeys(k for t in result.trials for k in t.values))
  short = [k.split('.')[-1] for k in keys]
  names = short if len(set(short)) == len(short) else keys
  header = ['trial', 'status', result.objective] + names + ['runs']
  rows = [header]
  for trial in result.trials:
    objective = '-' if trial.objective is None else f'{trial.objective:.4f}'
    cells = [f'{trial.values[k]:.4g}' if isinstance(trial.values.get(k), float)
             else str(trial.values.get(k, '-')) for k in keys]
    runs = os.path.relpath(trial.model_dirs[0], result.root)
    if len(trial.model_dirs) > 1:
      runs += f' (+{len(trial.model_dirs) - 1})'
    status = trial.status.lower() + (f' (from {trial.parent})' if trial.parent else '')
    rows.append([trial.trial_id, status, objective] + cells + [runs])
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  if result.best:
    lines += ['', f'best: trial {result.best.trial_id} ({result.objective} '
              f'{result.best.objective:.4f}); its values, to paste into a gin file:']
    lines += result.best_bindings
  failed = [t for t in result.trials if t.status == 'FAILED']
  for trial in failed:
    lines.append(f'trial {trial.trial_id} failed: {trial.message}')
  return '\n'.join(lines)
