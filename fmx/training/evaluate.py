"""`fmx eval`: re-evaluates a run's latest checkpoint on a split of its data.

The run is rebuilt from its own operative_config.gin, so nothing but the
run folder is needed; results go to stdout as a table and to
`MODEL_DIR/eval-<split>.json`. `restore_run` is that rebuild, shared with
`fmx export` and `fmx report`.
"""

import dataclasses
import json
import os
import re
from typing import Any, List, Optional, Sequence

import tensorflow as tf
from official.core import train_utils

from fmx import gin_config
from fmx.errors import UserError
from fmx.tasks import teacher_run
from fmx.tasks.base import TEST_SPLIT
from fmx.training import run
from fmx.training import run_dir
from fmx.training.settings import Experiment


@dataclasses.dataclass
class RestoredRun:
  """A run rebuilt from its folder, its model holding the checkpoint's weights."""
  setup: run.Setup
  trainer: Any  # Model Garden's trainer; `.model` is the (student) model
  checkpoint: str


def restore_run(model_dir: str, bindings: Sequence[str] = (),
                checkpoint: Optional[str] = None) -> RestoredRun:
  """Parses model_dir's operative config, builds its trainer, reads its checkpoint.

  `bindings` are applied after the run's config (e.g. another test split).
  `checkpoint` is a checkpoint's path or step (default: the latest).
  """
  config = os.path.join(model_dir, run_dir.OPERATIVE_CONFIG)
  if not tf.io.gfile.exists(config):
    raise UserError(f'{model_dir!r} is not an fmx run folder (no '
                    f'{run_dir.OPERATIVE_CONFIG}); pass the --model_dir of a run.')
  checkpoint = find_checkpoint(model_dir, checkpoint)
  gin_config.parse([config], _task_binding(model_dir, config) +
                   _local_strategy_binding(config) + list(bindings))
  setup = run.build_setup(Experiment().task, model_dir)
  with setup.strategy.scope():
    trainer = train_utils.create_trainer(setup.params, setup.task, train=False,
                                         evaluate=True)
  status = trainer.checkpoint.read(checkpoint).expect_partial()
  try:
    # Optimizer slots are absent (train=False) and deferred; every object
    # that exists, the model above all, must have found its values.
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise UserError(
        f'checkpoint {checkpoint!r} does not match the model rebuilt from '
        f'{config} ({str(e).splitlines()[0]}); was the run folder reused for '
        'another experiment? Pass the folder of the run that wrote it.') from None
  return RestoredRun(setup, trainer, checkpoint)


def find_checkpoint(model_dir: str, wanted: Optional[str] = None) -> str:
  """The checkpoint `wanted` names (a path, or a step of model_dir), else the latest."""
  state = tf.train.get_checkpoint_state(model_dir)
  # The run's checkpoints live in it, whatever folder their paths were
  # recorded relative to.
  kept = [os.path.join(model_dir, os.path.basename(p))
          for p in (state.all_model_checkpoint_paths if state else [])]
  if wanted is None:
    latest = tf.train.latest_checkpoint(model_dir)
    if not latest:
      raise UserError(f'run {model_dir!r} has no checkpoint yet; train it with '
                      f'`fmx run` first.')
    return latest
  if str(wanted).isdigit():
    by_step = {run_dir.checkpoint_step(p): p for p in kept}
    if int(wanted) in by_step:
      return by_step[int(wanted)]
  elif tf.io.gfile.exists(f'{wanted}.index'):
    return str(wanted)
  steps = ', '.join(str(run_dir.checkpoint_step(p)) for p in kept) or 'none'
  raise UserError(f'--checkpoint {wanted}: no such checkpoint in {model_dir!r}; '
                  f'its checkpoints are at steps {steps}. Pass one of these '
                  'steps or the path of a checkpoint (without .index).')


def _task_binding(model_dir: str, config: str) -> List[str]:
  # Runs written before fmx recorded `Experiment` in the operative config of
  # a distillation run name their task only in results.json.
  with tf.io.gfile.GFile(config) as f:
    if re.search(r'^Experiment\.task\s*=', f.read(), re.MULTILINE):
      return []
  results = os.path.join(model_dir, teacher_run.RESULTS_FILE)
  if not tf.io.gfile.exists(results):
    return []  # gin then names the missing value
  task = teacher_run.read_results(model_dir).get('task')
  return [f'Experiment.task = {task!r}'] if task else []


def _local_strategy_binding(config: str) -> List[str]:
  # A run trained by several workers is evaluated by one machine: with the
  # workers' strategy, a TF_CONFIG in the environment would make it wait
  # for the rest of the cluster.
  with tf.io.gfile.GFile(config) as f:
    values = run_dir.parse_config(f.read())
  if values.get('Runtime.distribution_strategy') == "'multi_worker_mirrored'":
    return ["Runtime.distribution_strategy = 'auto'"]
  return []


def evaluate_run(model_dir: str, split: Optional[str] = None,
                 checkpoint: Optional[str] = None) -> dict:
  """Evaluates a checkpoint (default: the latest) of model_dir on `split`
  (default: its test split)."""
  bindings = [f'Data.test_split = {split!r}'] if split else []
  restored = restore_run(model_dir, bindings, checkpoint)
  setup = restored.setup
  results = run.evaluate_split(setup, restored.trainer, TEST_SPLIT)
  results['checkpoint'] = restored.checkpoint
  # 'test[:50%]' -> 'eval-test_50%.json'
  name = re.sub(r'[^A-Za-z0-9.%-]+', '_', setup.task.data.test_split).strip('_')
  step = f'-step{results["global_step"]}' if checkpoint is not None else ''
  path = os.path.join(model_dir, f'eval-{name}{step}.json')
  run_dir.write_text(path, json.dumps(results, indent=2, sort_keys=True) + '\n')
  results['written_to'] = path
  return results
