"""MixUp across replicas on 8 logical CPU devices (a TPU v3-8's layout).

Per-replica scope (the pipeline's, as the original implementation): `reverse`
gives mirrored duplicate pairs inside each replica, `roll` none, and no pair
crosses replicas. Global scope (the distillation step's): pairs cross them.
Logical devices must be set before TensorFlow starts, hence a subprocess.
"""

import json
import subprocess
import sys

from conftest import REPO

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

REPLICAS, PER_REPLICA = 8, 4
GLOBAL = REPLICAS * PER_REPLICA
strategy = tf.distribute.MirroredStrategy([f'/cpu:{i}' for i in range(REPLICAS)])

def partners(mixed, a):
  """Partner index of each image, read back from one-hot 'images'."""
  rows = mixed.reshape(GLOBAL, GLOBAL).copy()
  for i in range(GLOBAL):
    rows[i, i] -= a
  return [int(r.argmax()) for r in rows]

def one_hot_batch(context):
  # Replica r holds global images r*PER_REPLICA ... as one-hot 'pixels'.
  start = context.replica_id_in_sync_group * PER_REPLICA
  return tf.reshape(tf.eye(GLOBAL)[start:start + PER_REPLICA], [PER_REPLICA, 1, 1, GLOBAL])

out = {}
for scope in ('replica', 'global'):
  for name in ('mixup_reverse', 'mixup_roll'):
    gin.clear_config()
    gin.parse_config(f"""
        Data.train_dataset = 'mnist_embedded'
        Data.eval_dataset = 'mnist_embedded'
        Data.image_size = 8
        Data.mixup = '{name}'
        Data.mixup_scope = '{scope}'""")
    data = Data()
    coefficient = float(data.mixup(tf.eye(2)[:, None, None, :], data.mixup_seed(0, 0))[1])
    fake_task = types.SimpleNamespace(data=data, training=types.SimpleNamespace(seed=0))

    def step():
      context = tf.distribute.get_replica_context()
      images = one_hot_batch(context)
      if scope == 'global':
        return DistillationTask.mix_global_batch(fake_task, images, tf.constant(0, tf.int64))
      return data.mixup(images, data.mixup_seed(0, 0))[0]  # what tf.data does per replica

    result = strategy.run(tf.function(step))
    mixed = tf.concat(strategy.experimental_local_results(result), 0).numpy()
    out[f'{scope}/{name}'] = {'partners': partners(mixed, coefficient)}
print(json.dumps(out))
'''


def test_mixup_pairs_per_replica_and_global():
  proc = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True,
                        text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  per, replicas = 4, 8
  replica_of = lambda i: i // per

  reverse = out['replica/mixup_reverse']['partners']
  roll = out['replica/mixup_roll']['partners']
  for partners in (reverse, roll):  # per-replica scope: never across replicas
    assert all(replica_of(i) == replica_of(p) for i, p in enumerate(partners))
  # reverse: i <-> n-1-i inside each replica: every pair appears twice.
  assert reverse == [r * per + (per - 1 - k) for r in range(replicas) for k in range(per)]
  unordered = {frozenset((i, p)) for i, p in enumerate(reverse)}
  assert len(unordered) == replicas * per // 2
  # roll: i <- i-1 inside each replica, no mirrored duplicates.
  assert roll == [r * per + (k - 1) % per for r in range(replicas) for k in range(per)]
  assert len({frozenset((i, p)) for i, p in enumerate(roll)}) == replicas * per

  # global scope: roll over the whole global batch, across replicas.
  global_roll = out['global/mixup_roll']['partners']
  assert global_roll == [(i - 1) % (per * replicas) for i in range(per * replicas)]
  assert sum(replica_of(i) != replica_of(p) for i, p in enumerate(global_roll)) == replicas
  global_reverse = out['global/mixup_reverse']['partners']
  assert global_reverse == [per * replicas - 1 - i for i in range(per * replicas)]
