"""Several workers, one run: who writes the run folder, TF_CONFIG, failures.

Under MultiWorkerMirroredStrategy every worker runs the same `fmx run`
with its own TF_CONFIG and holds a copy of the same model. The run folder
(`model_dir`, on a filesystem every worker reaches: gs:// or NFS) is
written by the chief alone: checkpoints and their fix-ups, TensorBoard,
operative_config.gin, model.json, results.json. The others must still save
checkpoints in step with the chief (a save reads variables that are
synchronised across workers), so they save into a temporary folder of
their own, as Model Garden's runner does, removed at the end. A resumed
run restores the chief's checkpoint on every worker (Model Garden's runner
would restore nothing on the others: replicas with other weights).

`worker_role()` is the one place that decides who writes where; the rest
asks its Role. One-process strategies (one device, mirrored, TPU) have one
process, which is the chief. Collectives here (`_sum_over_workers`) must be
called by every worker at the same point of the run.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterator, Optional, Tuple

import tensorflow as tf
from official.core import train_lib
from official.core import train_utils

from fmx.errors import Preempted, UserError
from fmx.training import run_dir


@dataclasses.dataclass
class Role:
  """Where one process of a run reads and writes."""
  is_chief: bool
  multi_worker: bool
  model_dir: str  # the run folder: read by every worker, written by the chief
  write_dir: str  # model_dir for the chief, a temporary folder for the others


@contextlib.contextmanager
def worker_role(strategy: tf.distribute.Strategy,
                model_dir: str) -> Iterator[Role]:
  """This process's Role; a non-chief's temporary folder is removed after."""
  extended = strategy.extended
  multi_worker = extended._in_multi_worker_mode()  # pylint: disable=protected-access
  # As Model Garden's runner and Keras decide: the chief (TF_CONFIG's
  # 'chief' task, else worker 0) is the one that should checkpoint.
  if extended.should_checkpoint:
    with run_dir.removed_if_left_empty(model_dir):
      yield Role(True, multi_worker, model_dir, model_dir)
    return
  # One folder per run and task, emptied at start: a worker killed before
  # it could remove its folder leaves one behind, not one per restart.
  resolver = strategy.cluster_resolver
  run = hashlib.sha1(os.path.abspath(model_dir).encode()).hexdigest()[:12]
  write_dir = os.path.join(
      tempfile.gettempdir(),
      f'fmx-{resolver.task_type}{resolver.task_id}-{run}')
  shutil.rmtree(write_dir, ignore_errors=True)
  os.makedirs(write_dir)
  try:
    yield Role(False, multi_worker, model_dir, write_dir)
  finally:
    shutil.rmtree(write_dir, ignore_errors=True)


def _sum_over_workers(strategy: tf.distribute.Strategy, value: int) -> int:
  """Sum of one int per worker; returns once every worker has called it."""
  calls = []

  def contribution(_):  # called once per local replica: the first counts
    calls.append(True)
    return tf.constant(value if len(calls) == 1 else 0, tf.int64)

  values = strategy.experimental_distribute_values_from_function(contribution)
  return int(strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None))


def from_chief(strategy: tf.distribute.Strategy, role: Role, value: int) -> int:
  """The chief's `value` on every worker (a barrier: waits for the chief)."""
  if not role.multi_worker:
    return value
  return _sum_over_workers(strategy, value if role.is_chief else 0)


@contextlib.contextmanager
def together(strategy: tf.distribute.Strategy, role: Role):
  """A UserError raised in the block on some workers stops all of them.

  Chief-only checks (the run folder, its config) would otherwise leave the
  other workers waiting for the chief in their first training step.
  """
  error = None
  try:
    yield
  except UserError as e:
    error = e
  if role.multi_worker:
    failed = _sum_over_workers(strategy, int(error is not None))
    if failed and error is None:
      error = UserError(f'{failed} other worker(s) of this multi-worker run '
                        'stopped with an error before training; see their '
                        'output.')
  if error is not None:
    raise error


def starting_checkpoint(strategy: tf.distribute.Strategy,
                        role: Role) -> Tuple[int, Optional[str]]:
  """(step, checkpoint) the run starts from, the same on every worker.

  The chief prepares model_dir and finds its newest readable checkpoint,
  moving corrupt ones aside (fmx.training.run_dir); the others wait for it,
  then read the checkpoint it settled on. The checkpoint is returned to
  non-chief workers only: the chief's checkpoint manager finds it itself.
  """
  step = 0
  with together(strategy, role):
    if role.is_chief:
      run_dir.prepare(role.model_dir)
      step = run_dir.restorable_step(role.model_dir)
  step = from_chief(strategy, role, step)
  checkpoint = None
  with together(strategy, role):
    if not role.is_chief and step:
      checkpoint = tf.train.latest_checkpoint(role.model_dir)
      seen = (train_utils.read_global_step_from_checkpoint(checkpoint)
              if checkpoint else None)
      if seen != step:
        raise UserError(
            f'the chief resumes from step {step} but this worker sees '
            f'{checkpoint or "no checkpoint"} in model_dir '
            f'{role.model_dir!r}: every worker must reach the same run '
            'folder (gs:// or a shared NFS path), not a local copy.')
  return step, checkpoint


def check_same_config(strategy: tf.distribute.Strategy, role: Role,
                      operative_config: str) -> None:
  """Stops every worker if one was started with another config.

  One `--bind` more on one machine would otherwise hang the run or train
  garbage. Compares digests of the values that matter (not model_dir).
  """
  if not role.multi_worker:
    return
  values = '\n'.join(run_dir.config_differences('', operative_config))
  digest = int(hashlib.sha256(values.encode()).hexdigest()[:15], 16)
  with together(strategy, role):
    if from_chief(strategy, role, digest) != digest:
      raise UserError(
          'this worker was started with another gin config than the chief; '
          'start every worker with the same gin files and --bind values: '
          'only TF_CONFIG differs between workers.')


class ExperimentRunner(train_lib.OrbitExperimentRunner):
  """Model Garden's runner, writing into `role.write_dir`.

  A non-chief worker checkpoints into its temporary folder (Model Garden's
  runner would make another one), starts from the chief's checkpoint
  `start` = (step, path) and saves at the chief's steps: saves are
  collective (see the module docstring), so one save more on one worker
  (Model Garden's would save at the first step after a resume) stops the
  run. A rollback to the last good checkpoint (RecoveryAction's
  restore_or_initialize) restores the worker's own latest save or, before
  its first, the chief's checkpoint again: the chief's latest either way.
  """

  def __init__(self, *args, role: Role, start: Tuple[int, Optional[str]],
               **kwargs):
    self._role, self._start = role, start
    super().__init__(*args, model_dir=role.write_dir, **kwargs)

  def _maybe_build_checkpoint_manager(self):
    if self._role.is_chief:
      return super()._maybe_build_checkpoint_manager()
    trainer = self.trainer
    step, checkpoint = self._start

    def initialize():
      if checkpoint:
        trainer.checkpoint.restore(checkpoint)
      else:
        trainer.initialize()

    return tf.train.CheckpointManager(
        trainer.checkpoint, directory=self._role.write_dir, max_to_keep=1,
        step_counter=trainer.global_step,
        checkpoint_interval=self.params.trainer.checkpoint_interval,
        # The chief's manager counts its interval from the step it restored.
        last_checkpoint_step=step or None, init_fn=initialize)


class WorkerLost(Preempted):
  """Another worker of the run stopped: start them all again (exit 75)."""
  label = 'error'


@contextlib.contextmanager
def peers_lost_as_stop(role: Role):
  """A worker whose peer died ends with one paragraph, exit 75.

  TF's health checks abort the survivors' collectives within seconds of a
  worker's death (UnavailableError); the checkpoints in model_dir are
  intact, so starting every worker again resumes.
  """
  try:
    yield
  except (tf.errors.UnavailableError, tf.errors.CancelledError,
          tf.errors.DeadlineExceededError) as e:
    if not role.multi_worker:
      raise
    reason = (getattr(e, 'message', '') or str(e)).strip().splitlines()
    raise WorkerLost(
        'a worker of this multi-worker run stopped or cannot be reached '
        f'({reason[0] if reason else type(e).__name__}). Start every worker '
        'again with the same command: they resume from '
        f'{tf.train.latest_checkpoint(role.model_dir) or "the start"}.'
    ) from None


def check_tf_config() -> None:
  """Checks TF_CONFIG for a multi-worker run; a mistake is one UserError.

  TF_CONFIG is JSON: {"cluster": {"worker": ["host:port", ...]}, "task":
  {"type": "worker", "index": i}}, the same cluster on every worker and
  each worker's own index (a "chief" list of one is optional). Without it,
  this machine trains alone.
  """
  text = os.environ.get('TF_CONFIG', '').strip()
  if not text:
    print("fmx: warning: Runtime.distribution_strategy = 'multi_worker_mirrored'"
          ' but TF_CONFIG is not set: this machine runs alone.', flush=True)
    return
  example = ('e.g. {"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
             '"task": {"type": "worker", "index": 0}} on the first machine')
  try:
    config = json.loads(text)
  except ValueError as e:
    raise UserError(f'TF_CONFIG is not valid JSON ({e}); set it to the '
                    f'cluster and this worker\'s task, {example}.') from None
  cluster = config.get('cluster') if isinstance(config, dict) else None
  task = config.get('task') if isinstance(config, dict) else None
  problem = None
  if not isinstance(cluster, dict) or not (cluster.get('worker') or
                                           cluster.get('chief')):
    problem = 'it has no "cluster" with a "worker" list'
  elif set(cluster) - {'chief', 'worker'}:
    problem = (f'its cluster has {sorted(set(cluster) - {"chief", "worker"})}'
               ', but multi-worker mirrored training has only "worker" tasks '
               '(and at most one "chief")')
  elif not all(isinstance(hosts, list) and hosts and all(
      isinstance(h, str) and h.rpartition(':')[2].isdigit() for h in hosts)
               for hosts in cluster.values()):
    problem = 'its cluster lists must hold "host:port" strings'
  elif len(cluster.get('chief', [])) > 1:
    problem = 'its cluster has more than one "chief"'
  elif not isinstance(task, dict) or task.get('type') not in cluster:
    problem = ('its "task" must give this worker\'s "type" (one of '
               f'{sorted(cluster)}) and "index"')
  elif (not isinstance(task.get('index'), int) or
        not 0 <= task['index'] < len(cluster[task['type']])):
    problem = (f'its task index {task.get("index")!r} is not one of the '
               f'{len(cluster[task["type"]])} {task["type"]} addresses')
  if problem:
    raise UserError(f'TF_CONFIG is malformed: {problem}; {example}, the same '
                    'cluster on every machine and its own index on each.')
