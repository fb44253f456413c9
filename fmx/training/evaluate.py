"""`fmx eval`: re-evaluates a run's latest checkpoint on a split of its data.

The run is rebuilt from its own operative_config.gin, so nothing but the
run folder is needed; results go to stdout as a table and to
`MODEL_DIR/eval-<split>.json`.
"""

import json
import os
import re
from typing import Optional

import tensorflow as tf
from official.core import train_utils

from fmx import gin_config
from fmx.errors import UserError
from fmx.tasks.base import TEST_SPLIT
from fmx.training import run
from fmx.training.settings import Experiment


def evaluate_run(model_dir: str, split: Optional[str] = None) -> dict:
  """Evaluates model_dir's latest checkpoint on `split` (default: its test split)."""
  config = os.path.join(model_dir, run.OPERATIVE_CONFIG)
  if not tf.io.gfile.exists(config):
    raise UserError(f'{model_dir!r} is not an fmx run folder (no '
                    f'{run.OPERATIVE_CONFIG}); pass the --model_dir of a run.')
  checkpoint = tf.train.latest_checkpoint(model_dir)
  if not checkpoint:
    raise UserError(f'run {model_dir!r} has no checkpoint yet; train it with '
                    f'`fmx run` first.')
  bindings = [f'Data.test_split = {split!r}'] if split else []
  gin_config.parse([config], bindings)
  setup = run.build_setup(Experiment().task, model_dir)
  with setup.strategy.scope():
    trainer = train_utils.create_trainer(setup.params, setup.task, train=False,
                                         evaluate=True)
  trainer.checkpoint.read(checkpoint).expect_partial()
  results = run.evaluate_split(setup, trainer, TEST_SPLIT)
  results['checkpoint'] = checkpoint
  # 'test[:50%]' -> 'eval-test_50%.json'
  name = re.sub(r'[^A-Za-z0-9.%-]+', '_', setup.task.data.test_split).strip('_')
  path = os.path.join(model_dir, f'eval-{name}.json')
  run.write_text(path, json.dumps(results, indent=2, sort_keys=True) + '\n')
  results['written_to'] = path
  return results
