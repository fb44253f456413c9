"""One run, from parsed gin to checkpoints, TensorBoard and results.json.

    gin -> Experiment/Data/Training/... -> Task -> Model Garden trainer
        -> Orbit controller (loop, checkpoints, summaries) -> results.json

A distillation run naming a teacher run that has not finished trains that
teacher first, from the teacher's own gin file, then carries on.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras
from official.core import base_task
from official.core import config_definitions as cfg
from official.core import train_utils
from tensorflow.python.framework import config as tf_config  # pylint: disable=g-direct-tensorflow-import

from fmx import gin_config
from fmx.data import decoding
from fmx.errors import UserError
from fmx.registry import TASKS
from fmx.tasks import teacher_run
from fmx.tasks.base import EVAL_SPLIT, TEST_SPLIT
from fmx.training import batch_norm
from fmx.training import cluster
from fmx.training import dry_run as dry_run_lib
from fmx.training import early_stopping
from fmx.training import input_images
from fmx.training import labels
from fmx.training import preemption
from fmx.training import progress
from fmx.training import recovery
from fmx.training import run_dir
from fmx.training import teacher_bindings
from fmx.training import trainer as trainer_lib
from fmx.training.run_dir import write_text
from fmx.training.settings import Experiment, Optimizer, Runtime, Training

def run(gin_files: Sequence[str], bindings: Sequence[str] = (),
        model_dir: Optional[str] = None, dry_run: bool = False,
        dry_run_root: Optional[str] = None,
        allow_config_change: bool = False, keep_dry_run: bool = False) -> dict:
  """Parses the config, trains (or resumes) and returns results.json's content.

  With dry_run, everything happens offline at a tiny shape in dry_run_root
  (default: a new temporary folder, removed afterwards unless keep_dry_run;
  dry runs sharing one reuse its dry-run teachers), see
  fmx.training.dry_run. The folder is returned as results['dry_run_dir']
  (None once removed).

  A model_dir holding a run of another config is refused unless
  allow_config_change (see fmx.training.run_dir.check_config); a finished
  run is not trained or evaluated again unless allow_config_change: its
  results.json is returned as it is.
  """
  if not dry_run:
    return _run(gin_files, bindings, model_dir, None, allow_config_change)
  root = dry_run_root or tempfile.mkdtemp(prefix='fmx-dry-run-')
  try:
    with dry_run_lib.offline_data():
      results = _run(gin_files, bindings, model_dir, root, allow_config_change)
  finally:
    # A dry run's folder holds a stand-in TF-Hub module, teachers and
    # checkpoints (~360 MB for a BiT experiment): nothing to keep by default.
    removed = not dry_run_root and not keep_dry_run
    if removed:
      shutil.rmtree(root, ignore_errors=True)
  results.update(dry_run=True, dry_run_dir=None if removed else root)
  return results


def _run(gin_files, bindings, model_dir, dry_run_root: Optional[str],
         allow_config_change: bool = False) -> dict:
  user_bindings, bindings = list(bindings), list(bindings)
  if dry_run_root is not None:
    bindings += dry_run_lib.bindings(dry_run_root)
  gin_config.parse(gin_files, bindings)
  teachers = (_teacher_runs_to_train() if Experiment().task == 'distillation'
              else None)
  if teachers:
    setting, run_dirs, teacher_gins = teachers
    used_dirs = []
    for index, (run_dir, teacher_gin) in enumerate(zip(run_dirs, teacher_gins)):
      if teacher_gin and dry_run_root is not None:
        run_dir = dry_run_lib.teacher_dir(dry_run_root, teacher_gin, used_dirs)
      # Absolute in the operative config, so eval and export of this run
      # work from any folder.
      run_dirs[index] = run_dir = os.path.abspath(run_dir)
      used_dirs.append(run_dir)
      if teacher_gin and not teacher_run.is_finished(run_dir):
        inherited = _same_workers() + teacher_bindings.inherited(user_bindings)
        print(f'Teacher run {run_dir} has no finished checkpoint: training it '
              f'first with {teacher_gin}.', flush=True)
        for binding in inherited:
          print(f'  the teacher inherits: {binding}', flush=True)
        for binding in user_bindings:
          if binding not in inherited:
            print(f"  the student's alone: {binding}", flush=True)
        _run([teacher_gin], inherited, run_dir, dry_run_root)
    value = run_dirs[0] if setting == 'teacher_run' else run_dirs
    bindings.append(f'distillation.{setting} = {value!r}')
    # The teacher run replaced the config; parsing again also restarts gin's
    # record of used values, so the operative config is this run's alone.
    gin_config.parse(gin_files, bindings)
  experiment = Experiment()
  model_dir = model_dir or experiment.model_dir
  if dry_run_root is not None and not (model_dir or '').startswith(dry_run_root):
    # One folder per experiment file: dry runs sharing a root never resume
    # each other's runs.
    model_dir = os.path.join(dry_run_root, 'runs',
                             os.path.splitext(os.path.basename(gin_files[-1]))[0])
  if not model_dir:
    raise UserError('no model_dir: pass --model_dir DIR or set '
                    "Experiment.model_dir = '...' in the gin file.")
  if model_dir != experiment.model_dir:
    # The operative config records the folder used (--model_dir wins).
    with gin.unlock_config():
      gin.bind_parameter('Experiment.model_dir', model_dir)
    Experiment()
  # A data check failing inside the TF graph (a corrupt image met in
  # training) ends as its one-paragraph UserError.
  with decoding.data_errors_as_user_errors():
    return train_and_evaluate(experiment.task, model_dir, allow_config_change)


def _same_workers() -> List[str]:
  """Bindings that train a multi-worker run's teacher on the same workers.

  With its own gin's strategy, every worker would train a teacher of its
  own into the same folder (and a process cannot join a cluster later).
  """
  try:
    strategy = gin.query_parameter('Runtime.distribution_strategy')
  except ValueError:
    return []  # not set
  if strategy != 'multi_worker_mirrored':
    return []
  return ["Runtime.distribution_strategy = 'multi_worker_mirrored'"]


def _teacher_runs_to_train() -> Optional[Tuple[str, List[str], List[Optional[str]]]]:
  """(setting, teacher run folders, their gin files) of a distillation config.

  One teacher (`teacher_run` + `teacher_gin`) or an ensemble's
  (`teacher_runs` + `teacher_gins`, None for a run already trained); None
  when no teacher run is named with a gin to train it.
  """
  def bound(name):
    try:
      return gin.query_parameter(f'distillation.{name}')
    except ValueError:
      return None  # not set

  if bound('teacher_saved_model'):
    return None  # no teacher run to train, or the task says what is wrong
  run_dir, teacher_gin = bound('teacher_run'), bound('teacher_gin')
  if run_dir and teacher_gin and not bound('teacher_runs'):
    return 'teacher_run', [run_dir], [teacher_gin]
  run_dirs, teacher_gins = bound('teacher_runs'), bound('teacher_gins')
  if (run_dir or not isinstance(run_dirs, (list, tuple)) or not run_dirs
      or not teacher_gins or not isinstance(teacher_gins, (list, tuple))
      or len(teacher_gins) != len(run_dirs)):
    return None  # the task names what is wrong, if anything
  return 'teacher_runs', list(run_dirs), list(teacher_gins)


@dataclasses.dataclass
class Setup:
  """Everything a run builds from gin before Model Garden's trainer."""
  task_name: str  # the TASKS entry: 'teacher' or 'distillation'
  task: base_task.Task
  strategy: tf.distribute.Strategy
  params: cfg.ExperimentConfig
  train_steps: int
  # gin keys whose 'auto' value Runtime resolved per device -> the result.
  resolved: Dict[str, Any]


def build_setup(task_name: str, model_dir: str) -> Setup:
  """Strategy, task and Model Garden config from the parsed gin config."""
  task_cls = TASKS.get(task_name)
  runtime, training, optimizer = Runtime(), Training(), Optimizer()
  # Always set: a teacher trained first in this process may have left its own.
  tf_keras.mixed_precision.set_global_policy(
      {None: 'float32', 'bfloat16': 'mixed_bfloat16',
       'float16': 'mixed_float16'}[runtime.mixed_precision])
  tf_keras.utils.set_random_seed(training.seed)
  # Also switched off: a run earlier in this process (a teacher trained
  # first, a notebook's previous run) may have switched it on.
  if runtime.deterministic:
    tf.config.experimental.enable_op_determinism()
  else:
    tf_config.disable_op_determinism()  # not in tf.config's public API
  if runtime.distribution_strategy == 'multi_worker_mirrored':
    cluster.check_tf_config()
  strategy = runtime.strategy()
  replicas = strategy.num_replicas_in_sync
  for key, batch in (('global_batch_size', training.global_batch_size),
                     ('eval_batch_size', training.eval_batch_size)):
    if batch % replicas:
      raise UserError(f'Training.{key} = {batch} does not split over the '
                      f'{replicas} replicas of {type(strategy).__name__}; use a '
                      f'multiple of {replicas}.')
  task_config = cfg.TaskConfig(
      train_data=cfg.DataConfig(is_training=True,
                                global_batch_size=training.global_batch_size),
      validation_data=cfg.DataConfig(is_training=False, input_path=EVAL_SPLIT,
                                     global_batch_size=training.eval_batch_size))
  task = task_cls(params=task_config, logging_dir=model_dir)
  train_steps = training.train_steps(task.sources['train'].num_examples)
  params = cfg.ExperimentConfig(
      task=task_config,
      trainer=training.trainer_config(train_steps, optimizer.config(train_steps)),
      runtime=runtime.runtime_config())
  resolved = {'Runtime.mixed_precision': runtime.mixed_precision,
              'Runtime.xla': runtime.xla}
  resolved.update(getattr(task, 'resolved_settings', {}))  # e.g. the teacher's
  return Setup(task_name, task, strategy, params, train_steps, resolved)


def train_and_evaluate(task_name: str, model_dir: str,
                       allow_config_change: bool = False) -> dict:
  """Trains the configured task into model_dir; resumes if it has a checkpoint.

  Before training: model_dir must be writable, hold no other config (unless
  allow_config_change) and have room for checkpoints; a corrupt latest
  checkpoint is moved aside for the previous one (fmx.training.run_dir).
  During training: non-finite losses roll back (fmx.training.recovery) and
  SIGTERM or Ctrl-C saves and stops (fmx.training.preemption).
  Under multi-worker, every worker runs this; only the chief writes
  model_dir (fmx.training.cluster).
  """
  setup = build_setup(task_name, model_dir)
  with cluster.worker_role(setup.strategy, model_dir) as role:
    with cluster.peers_lost_as_stop(role):
      return _train_and_evaluate(setup, role, allow_config_change)


def _train_and_evaluate(setup: Setup, role: cluster.Role,
                        allow_config_change: bool) -> dict:
  task_name, task, strategy, params = (setup.task_name, setup.task,
                                       setup.strategy, setup.params)
  model_dir = role.model_dir
  start = cluster.starting_checkpoint(strategy, role)
  task.start_step = start[0]
  task.preemption = preemption.Preemption(across_workers=role.multi_worker)
  with strategy.scope():
    trainer = train_utils.create_trainer(params, task, train=True, evaluate=True,
                                         trainer_cls=trainer_lib.Trainer)
  # Model, data and optimizer are built, so gin's operative config is
  # complete; it is checked before the checkpoint is restored into them.
  config = gin.operative_config_str()
  cluster.check_same_config(strategy, role, config)
  with cluster.together(strategy, role):
    run_dir.check_free_space(role.write_dir, _checkpoint_bytes(trainer))
    if role.is_chief:
      run_dir.check_config(model_dir, config, allow_config_change,
                           setup.resolved)
      labels.announce(task, model_dir)
  finished = cluster.from_chief(strategy, role, int(
      role.is_chief and start[0] >= setup.train_steps and
      tf.io.gfile.exists(os.path.join(model_dir, teacher_run.RESULTS_FILE))))
  if finished and not allow_config_change:
    # Rerunning a finished run's command changes nothing: evaluating again
    # would only rewrite the same figures.
    print(f'Run {model_dir} has finished (step {start[0]} of '
          f'{setup.train_steps}); its results.json, unchanged. (To extend it, '
          'rerun with more Training.epochs and --allow_config_change.)',
          flush=True)
    return teacher_run.read_results(model_dir)
  bar = progress.ProgressBar(setup.train_steps,
                             params.task.train_data.global_batch_size,
                             os.path.join(role.write_dir, 'train'),
                             description=progress.bar_label(task_name, model_dir))
  training = Training()
  runner = None
  rollback = recovery.rollback_action(
      trainer, model_dir, training.nan_rollbacks, training.loss_upper_bound,
      lambda: runner.checkpoint_manager)
  clock = TrainClock(trainer)
  stop = preemption.stop_if_requested(
      task.preemption, lambda: _save_finite(runner, trainer, model_dir), model_dir)
  precise_statistics = batch_norm.recompute_before_evals(
      trainer, task, strategy, params.trainer.validation_interval,
      setup.train_steps, params.task.train_data.global_batch_size)
  same_statistics = _same_statistics_before_evals(
      trainer, strategy, params.trainer.validation_interval, setup.train_steps)
  early = early_stopping.for_run(training, task_name, task, model_dir,
                                 task.start_step, trainer.global_step)
  # Rollback first: a loop cut short by SIGTERM is checked before it is
  # saved; statistics recomputed at an eval step are saved too.
  runner = cluster.ExperimentRunner(
      distribution_strategy=strategy, task=task, mode='train_and_eval',
      params=params, role=role, start=start, trainer=trainer,
      train_actions=[rollback, clock, precise_statistics, stop,
                     same_statistics, bar],
      eval_actions=[progress.EvalPrinter(bar)] + ([early] if early else []))
  bar.attach(trainer.global_step)  # the controller has restored it by now
  try:
    if task.start_step == 0:
      # Something to roll back to before the first periodic checkpoint.
      runner.controller.save_checkpoint()
    if role.is_chief:
      if task_name == 'teacher':
        teacher_run.write_architecture(trainer.model, model_dir)
      input_images.log_first_batch(task, model_dir,
                                   int(trainer.global_step.numpy()))

    clock.start()
    # The controller directly, not runner.run(): that also profiles the model to
    # count FLOPs, which costs ~20 s and prints TF1 warnings on every run.
    with task.preemption.watching(), run_dir.disk_errors_as_user_errors(model_dir):
      with strategy.scope():
        _train_and_evaluate_loop(runner.controller, setup.train_steps,
                                 params.trainer.validation_interval, early)
  finally:
    bar.close()  # an error then starts on its own line
  stopped_early = None
  if early and early.stopped:
    step = int(trainer.global_step.numpy())
    print(early.describe(step), flush=True)
    stopped_early = early.summary(step)

  # As the final checkpoint holds it (set after the last loop of steps):
  # the validations between loops count, the last validation and the test
  # evaluation do not, and a run extended later continues from this figure.
  train_seconds = float(clock.seconds.numpy())
  results = evaluate_split(setup, trainer, TEST_SPLIT,
                           summary_dir=os.path.join(role.write_dir, 'test'))
  results.update(train_seconds=round(train_seconds, 1),
                 skipped_corrupt=decoding.total_skipped(task.sources.values()))
  if stopped_early:
    results['early_stopped'] = stopped_early
  if role.is_chief:
    # results.json marks the run finished: write it last, atomically, keeping
    # an earlier run's (a rerun with other values) beside it.
    path = os.path.join(model_dir, teacher_run.RESULTS_FILE)
    if tf.io.gfile.exists(path):
      tf.io.gfile.rename(path, path.replace(
          '.json', f'.before-{time.strftime("%Y%m%d-%H%M%S")}.json'), overwrite=True)
    write_text(path, json.dumps(results, indent=2, sort_keys=True) + '\n')
  # The other workers return once it is written: a distillation run that
  # trained its teacher first reads the teacher's results.json next.
  cluster.from_chief(strategy, role, 0)
  return results


class TrainClock:
  """A train action: the seconds spent training, summed over invocations.

  The total is a variable of the checkpoint, so a resumed run adds its own
  time to that of the invocations before it, up to the step it resumed
  from (a killed invocation's time after its last checkpoint was lost work
  and is not counted). Set before every save (train actions run before
  Orbit's checkpoint saves); it does not change what the run computes.
  """

  def __init__(self, trainer):
    # Outside the strategy's scope: one local copy per worker, not a
    # synchronised variable; the chief's is the one saved in model_dir.
    with tf.device('/cpu:0'):
      self.seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                 name='fmx_train_seconds')
    # Before the controller restores the checkpoint, so the restore fills it.
    trainer.checkpoint.fmx_train_seconds = self.seconds
    self._before, self._started = 0.0, None

  def start(self) -> None:
    """Starts this invocation's time, after the checkpoint was restored."""
    self._before, self._started = float(self.seconds.numpy()), time.perf_counter()

  def total(self) -> float:
    """Seconds of training so far, this invocation's and the earlier ones'."""
    if self._started is None:
      return self._before
    return self._before + time.perf_counter() - self._started

  def __call__(self, _):
    self.seconds.assign(self.total())


def _train_and_evaluate_loop(controller, train_steps: int, eval_interval: int,
                             early: Optional[early_stopping.EarlyStopping]):
  """Orbit's Controller.train_and_evaluate, ending when `early` says so.

  Trains eval_interval steps, evaluates, and again, up to train_steps (or
  until early stopping has run out of patience, after the evaluation's
  summaries are written), then saves a checkpoint at the step reached.
  """
  step = int(controller.global_step.numpy())
  while step < train_steps and not (early and early.stopped):
    controller.train(steps=min(train_steps, step + eval_interval),
                     checkpoint_at_completion=False)
    controller.evaluate(steps=-1)
    step = int(controller.global_step.numpy())
  controller.save_checkpoint()


def _same_statistics_before_evals(trainer, strategy, eval_interval: int,
                                  train_steps: int):
  """A train action: before each eval, every replica takes the mean of the
  replicas' BatchNorm moving statistics.

  tf.distribute keeps one copy per replica, each updated from its own
  batches, and synchronises them only on read: a checkpoint holds their
  mean, but each replica would evaluate its own copy, that is another
  model than the one saved (`fmx eval` of the checkpoint would disagree).
  The mean, the only value saved, stays as it is.
  """
  variables = [v for v in trainer.model.variables
               if v.synchronization == tf.VariableSynchronization.ON_READ]

  def act(_):
    step = int(trainer.global_step.numpy())
    if strategy.num_replicas_in_sync > 1 and (step % eval_interval == 0 or
                                              step == train_steps):
      with strategy.scope():
        for variable in variables:
          variable.assign(variable.read_value())
  return act


def _save_finite(runner, trainer, model_dir: str) -> Tuple[str, int]:
  """Saves a checkpoint at the current step unless a weight is non-finite.

  Returns what it did and the step a rerun resumes from.
  """
  step = int(trainer.global_step.numpy())
  if recovery.all_finite(trainer):
    runner.controller.save_checkpoint()
    return f'saved a checkpoint at step {step}', step
  # Never a checkpoint holding NaN: the last good one stays the latest.
  latest = tf.train.latest_checkpoint(model_dir)
  return (f'the weights at step {step} are not finite, so {latest} stays the '
          'latest checkpoint',
          int(train_utils.read_global_step_from_checkpoint(latest)) if latest else 0)


def _checkpoint_bytes(trainer) -> int:
  """Bytes of one checkpoint: model and optimizer variables (slots estimated)."""
  model = sum(v.shape.num_elements() * v.dtype.size for v in trainer.model.weights)
  return 3 * model  # Adam-like optimisers keep two slots per weight


def evaluate_split(setup: Setup, trainer, split: str,
                   summary_dir: Optional[str] = None) -> dict:
  """Evaluates the trainer's model on one split ('eval' or 'test') of the task.

  Every example is counted once, under any strategy: the eval pipeline pads
  the split to whole global batches with examples of weight 0, which the
  metrics do not count (fmx.data.pipeline.Data.eval_dataset_fn).
  """
  task = setup.task
  config = cfg.DataConfig(is_training=False, input_path=split,
                          global_batch_size=setup.params.task.validation_data.global_batch_size)
  trainer.eval_dataset = trainer.distribute_dataset(task.build_inputs, config)
  with setup.strategy.scope():
    logs = trainer.evaluate(tf.constant(-1, tf.int32))
  step = int(trainer.global_step.numpy())
  if summary_dir:
    writer = tf.summary.create_file_writer(summary_dir)
    with writer.as_default(step=step):
      for name, value in logs.items():
        tf.summary.scalar(name, value)
    writer.flush()
  results = task.results(logs)
  split_name = task.data.test_split if split == TEST_SPLIT else task.data.eval_split
  results.update(task=setup.task_name, global_step=step, train_steps=setup.train_steps,
                 test_split=f'{task.data.eval_dataset}:{split_name}')
  results.update(_param_counts(task, trainer.model))
  return results


def _param_counts(task, model) -> dict:
  teacher = getattr(task, 'teacher', None)
  if teacher is not None:
    return {'student_params': model.count_params(),
            'teacher_params': teacher.count_params()}
  return {'params': model.count_params()}


def format_results(results: dict) -> str:
  """The table printed at the end of a run."""
  if results.get('task') == 'distillation':
    ratio = results['teacher_params'] / max(1, results['student_params'])
    rows = [('', 'teacher', 'student'),
            ('test top-1', f'{results["teacher_top1"]:.2%}', f'{results["student_top1"]:.2%}'),
            # Top-5 of 5 classes or fewer is 100% by definition.
            *([('test top-5', f'{results["teacher_top5"]:.2%}',
                f'{results["student_top5"]:.2%}')]
              if results.get('num_classes', 6) > 5 else []),
            ('parameters', f'{results["teacher_params"]:,}', f'{results["student_params"]:,}'),
            ('agreement', '', f'{results["agreement"]:.2%}'),
            ('KL(teacher||student)', '', f'{results["kl"]:.4f}')]
    teachers = results.get('teachers') or {}
    if teachers:  # an ensemble: the 'teacher' column is the ensemble's
      rows[0] = ('', f'ensemble ({results["ensemble"]})', 'student')
      for name, one in teachers.items():
        rows.append((f'{name}: top-1, agreement', f'{one["teacher_top1"]:.2%}',
                     f'{one["agreement"]:.2%}'))
    if not results.get('dry_run'):
      # A dry run's teacher may be a stand-in for a TF-Hub module: its size
      # says nothing.
      rows.append(('compression', '', f'{ratio:.1f}x fewer parameters'))
  else:
    rows = [('', 'teacher'), ('test top-1', f'{results["top1"]:.2%}'),
            ('parameters', f'{results["params"]:,}')]
  widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(rows[0]))]
  lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
           for row in rows]
  trained = (f', {results["train_seconds"]:.0f} s of training'
             if 'train_seconds' in results else '')
  lines.append(f'({results["test_split"]}, step {results["global_step"]}{trained})')
  return '\n'.join(lines)
