"""Shampoo under MirroredStrategy on 2 logical CPU devices = on one device.

Each replica holds replicated statistics and computes the same inverse roots
from the all-reduced gradient inside the step (tf.cond on the step), so a
step on 2 replicas must update the weights as a step on one device does
with the whole batch. Logical devices must be set before TensorFlow starts,
hence a subprocess.
"""

import json
import subprocess
import sys

import numpy as np

from conftest import REPO

SCRIPT = r'''
import json, os
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(2)])
import numpy as np
import tf_keras
from fmx.optimizers.shampoo import Shampoo
from fmx.tasks.base import apply_gradients

rng = np.random.RandomState(0)
images = rng.randn(8, 6, 6, 2).astype(np.float32)
targets = rng.randn(8, 3).astype(np.float32)

def train(strategy, steps=3):
  tf_keras.utils.set_random_seed(0)
  with strategy.scope():
    model = tf_keras.Sequential([
        tf_keras.layers.Conv2D(4, 3, input_shape=(6, 6, 2)),
        tf_keras.layers.Flatten(), tf_keras.layers.Dense(3)])
    # Roots at every step, Shampoo's update from the first: all of it runs.
    optimizer = Shampoo(learning_rate=0.05, block_size=8,
                        preconditioning_compute_steps=2,
                        start_preconditioning_step=0)
  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices((images, targets)).batch(8).repeat())

  def step(x, y):
    with tf.GradientTape() as tape:
      # The mean over the global batch: each replica's mean over its half.
      loss = tf.reduce_mean(tf.square(model(x) - y))
    apply_gradients(tape, loss, model, optimizer)

  @tf.function
  def run(batch):
    strategy.run(step, args=batch)

  initial = [w.numpy().tolist() for w in model.weights]
  iterator = iter(dataset)
  for _ in range(steps):
    run(next(iterator))
  return initial, [w.numpy().tolist() for w in model.weights]

mirrored = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
assert mirrored.num_replicas_in_sync == 2
print(json.dumps({'one': train(tf.distribute.OneDeviceStrategy('/cpu:0')),
                  'two': train(mirrored)}))
'''


def test_two_replicas_update_as_one_device():
  out = subprocess.run([sys.executable, '-c', SCRIPT], cwd=REPO, check=True,
                       capture_output=True, text=True).stdout
  runs = json.loads(out.strip().splitlines()[-1])
  (initial, one), (initial_two, two) = runs['one'], runs['two']
  moved = 0.0
  for start, start_two, w_one, w_two in zip(initial, initial_two, one, two):
    np.testing.assert_array_equal(start_two, start)  # the same model
    # Summing two halves instead of one batch rounds differently: float32
    # noise only, far below how far the 3 steps moved the weights.
    np.testing.assert_allclose(w_two, w_one, rtol=1e-4, atol=1e-5)
    moved = max(moved, np.abs(np.array(w_one) - np.array(start)).max())
  assert moved > 1e-2
