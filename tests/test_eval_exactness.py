"""Evaluation counts every example exactly once, whatever the strategy.

100 test images at an eval batch of 16 on 8 replicas (a TPU v3-8's layout,
as 8 logical CPU devices): 6.25 global batches, so the last one is padded
(fmx.data.pipeline.Data.eval_dataset_fn) and some replicas see only
padding there. The same weights evaluated on one device and on the 8
replicas must give the same metrics, counted over exactly 100 examples,
for both tasks. Logical devices must be set before TensorFlow starts,
hence a subprocess.
"""

import json
import subprocess
import sys

import numpy as np

from conftest import REPO, TINY_DATA, tiny_student_gin, tiny_teacher_gin, write

SCRIPT = r'''
import json, os, sys
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(8)])
from absl import logging
logging.set_verbosity(logging.ERROR)
import gin
from official.core import train_utils
from fmx import gin_config
from fmx.tasks.base import TEST_SPLIT
from fmx.training import run, settings

strategies = {
    'one_device': lambda: tf.distribute.OneDeviceStrategy('/cpu:0'),
    'mirrored_8': lambda: tf.distribute.MirroredStrategy(
        [f'/cpu:{i}' for i in range(8)]),
}
out = {}
for task_name, gin_file in zip(sys.argv[1::2], sys.argv[2::2]):
  weights = None
  for name, make in strategies.items():
    settings.Runtime.strategy = lambda self, make=make: make()
    gin_config.parse([gin_file], [])
    setup = run.build_setup(task_name, '/nonexistent')
    with setup.strategy.scope():
      trainer = train_utils.create_trainer(setup.params, setup.task,
                                           train=False, evaluate=True)
    if weights is None:
      weights = trainer.model.get_weights()
    else:  # the very same weights on every strategy
      trainer.model.set_weights(weights)
    run.evaluate_split(setup, trainer, TEST_SPLIT)
    metrics = trainer.validation_metrics
    out[f'{task_name}/{name}'] = {
        'values': {m.name: float(m.result().numpy()) for m in metrics},
        'counts': {m.name: float(m.count.numpy()) for m in metrics},
        'replicas': setup.strategy.num_replicas_in_sync}
print(json.dumps(out))
'''

EVAL = """
Data.test_split = 'test[:100]'
Training.eval_batch_size = 16
"""


def test_eval_on_8_replicas_counts_each_example_once(trained_teacher, tmp_path):
  teacher_gin = write(tmp_path / 'teacher.gin',
                      tiny_teacher_gin(str(tmp_path / 'teacher')) + EVAL)
  student_gin = write(tmp_path / 'student.gin', tiny_student_gin(
      str(tmp_path / 'student'), trained_teacher[0]) + EVAL)
  assert 'Runtime.distribution_strategy' in TINY_DATA  # replaced in SCRIPT
  proc = subprocess.run(
      [sys.executable, '-c', SCRIPT, 'teacher', teacher_gin, 'distillation',
       student_gin], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])

  for task_name in ('teacher', 'distillation'):
    one, eight = out[f'{task_name}/one_device'], out[f'{task_name}/mirrored_8']
    assert (one['replicas'], eight['replicas']) == (1, 8)
    # Every Mean metric counted exactly the 100 real examples, on 8
    # replicas too: no padding example, none dropped, none twice.
    assert set(one['counts'].values()) == {100.0}, task_name
    assert eight['counts'] == one['counts'], task_name
    for key, value in one['values'].items():
      if key in ('kl', 'validation_loss'):
        # Float sums in another order (per replica, then across): equal
        # to float32 rounding.
        assert np.isclose(eight['values'][key], value, rtol=1e-5), key
      else:
        # Sums of 0/1 values are exact in float32: the same counts.
        assert eight['values'][key] == value, key
        assert np.isclose(value * 100, round(value * 100), atol=1e-4), key
