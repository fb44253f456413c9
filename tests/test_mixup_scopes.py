"""MixUp across replicas on 8 logical CPU devices (a TPU v3-8's layout).

Batches come from the real input pipeline (Data.train_dataset_fn, distributed
by the strategy); each mixed image's partner and coefficient are then read
back from its pixels by least squares against the unmixed batch (the same
pipeline without MixUp), independently of fmx's MixUp code.

Per-replica scope (the pipeline's, as the original implementation): `reverse`
gives mirrored duplicate pairs inside each replica, `roll` none, and no pair
crosses replicas. Global scope (the distillation step's): pairs cross them.
In both, every replica of a step mixes with the same coefficient (one per
global batch / step, as the original and big_vision), and steps differ.
Logical devices must be set before TensorFlow starts, hence a subprocess.
"""

import json
import subprocess
import sys

import numpy as np

from conftest import REPO

REPLICAS, PER_REPLICA, STEPS = 8, 4, 2

SCRIPT = r'''
import json, os, types
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(8)])
import gin
from fmx import entries
entries.load_all()
from fmx.data.pipeline import Data
from fmx.tasks.distillation import DistillationTask

REPLICAS, PER_REPLICA, STEPS = 8, 4, 2
strategy = tf.distribute.MirroredStrategy([f'/cpu:{i}' for i in range(REPLICAS)])

def global_batches(data, step_fn=None):
  """STEPS global batches from the pipeline, replicas concatenated in order."""
  source = data.source('train')  # read once, as FmxTask.build_inputs does
  dataset = strategy.distribute_datasets_from_function(
      lambda context: data.train_dataset_fn(PER_REPLICA, 0, context, source))
  out = []
  traced = tf.function(step_fn) if step_fn else None  # traced once, not per step
  for step, batch in zip(range(STEPS), dataset):
    images = batch['image']
    if traced is not None:
      images = strategy.run(traced, args=(images, tf.constant(step, tf.int64)))
    out.append(tf.concat(strategy.experimental_local_results(images), 0).numpy().tolist())
  return out

def configure(mixup, scope):
  gin.clear_config()
  gin.parse_config(f"""
      Data.train_dataset = 'mnist_embedded'
      Data.eval_dataset = 'mnist_embedded'
      Data.train_split = 'train[:64]'
      Data.image_size = 8
      Data.train_augmentations = ['random_translate', 'resize']
      Data.shuffle_buffer = 64
      Data.mixup = {mixup!r}
      Data.mixup_scope = '{scope}'""")
  return Data()

out = {'unmixed': global_batches(configure(None, 'replica'))}
for scope, name in (('replica', 'mixup_reverse'), ('replica', 'mixup_roll'),
                    ('global', 'mixup_roll')):
    data = configure(name, scope)
    fake_task = types.SimpleNamespace(data=data, training=types.SimpleNamespace(seed=0))
    mix = ((lambda images, step: DistillationTask.mix_global_batch(fake_task, images, step))
           if scope == 'global' else None)
    out[f'{scope}/{name}'] = global_batches(data, mix)
print(json.dumps(out))
'''


def read_back(mixed, unmixed):
  """(partner, coefficient) of each mixed image: the best least-squares fit
  of mixed_i = a x_i + (1 - a) x_j over every other image j of the batch."""
  flat_mixed = mixed.reshape(len(mixed), -1)
  flat = unmixed.reshape(len(unmixed), -1)
  partners, coefficients = [], []
  for i, target in enumerate(flat_mixed):
    best = None
    for j, other in enumerate(flat):
      if j == i:
        continue
      direction = flat[i] - other
      a = np.dot(target - other, direction) / np.dot(direction, direction)
      residual = np.linalg.norm(target - other - a * direction)
      if best is None or residual < best[0]:
        best = (residual, j, a)
    assert best[0] < 1e-3, f'image {i} is no blend of two images of the batch'
    partners.append(best[1])
    coefficients.append(best[2])
  return partners, np.array(coefficients)


def test_mixup_through_the_pipeline_per_replica_and_global():
  proc = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True,
                        text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  per, replicas, n = PER_REPLICA, REPLICAS, PER_REPLICA * REPLICAS
  replica_of = lambda i: i // per
  unmixed = [np.array(batch) for batch in out['unmixed']]

  def read(key):
    results = [read_back(np.array(mixed), plain)
               for mixed, plain in zip(out[key], unmixed)]
    coefficients = [c for _, c in results]
    for step_coefficients in coefficients:
      # One coefficient per step, shared by every replica.
      np.testing.assert_allclose(step_coefficients, step_coefficients[0],
                                 atol=1e-3)
    assert abs(coefficients[0][0] - coefficients[1][0]) > 1e-3, 'steps differ'
    partners = [p for p, _ in results]
    assert partners[0] == partners[1]  # the pairing is the same every step
    return partners[0]

  reverse, roll = read('replica/mixup_reverse'), read('replica/mixup_roll')
  for partners in (reverse, roll):  # per-replica scope: never across replicas
    assert all(replica_of(i) == replica_of(p) for i, p in enumerate(partners))
  # reverse: i <-> n-1-i inside each replica: every pair appears twice.
  assert reverse == [r * per + (per - 1 - k) for r in range(replicas) for k in range(per)]
  assert len({frozenset((i, p)) for i, p in enumerate(reverse)}) == n // 2
  # roll: i <- i-1 inside each replica, no mirrored duplicates.
  assert roll == [r * per + (k - 1) % per for r in range(replicas) for k in range(per)]
  assert len({frozenset((i, p)) for i, p in enumerate(roll)}) == n

  # global scope: pairs over the whole global batch, across replicas.
  global_roll = read('global/mixup_roll')
  assert global_roll == [(i - 1) % n for i in range(n)]
  assert sum(replica_of(i) != replica_of(p) for i, p in enumerate(global_roll)) == replicas
