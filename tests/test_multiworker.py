"""Multi-worker runs: TF_CONFIG, the data each worker reads, two real workers.

- A malformed TF_CONFIG is one UserError.
- The training stream does not depend on the number of workers: P input
  pipelines together feed every replica exactly the batch one pipeline
  would (resumed runs too), and the padded eval stream gives every
  pipeline the same number of whole batches, each example once.
- A teacher run trained first trains on the same workers.
- Two `fmx run` processes (MultiWorkerMirroredStrategy, TF_CONFIG on
  127.0.0.1), stopped by a SIGTERM to one of them (both save at the same
  step) and started again, end with the student of a one-device run of the
  same global batch, and only the chief wrote the run folder.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import gin
import numpy as np
import pytest
import tensorflow as tf
from official.core import train_utils

from conftest import TINY_DATA, tiny_student_gin, tiny_teacher_gin, write
from fmx.data.pipeline import Data
from fmx.errors import Preempted, UserError
from fmx.registry import DATASETS
from fmx.training import cluster
from fmx.training import run


@pytest.mark.parametrize('tf_config, message', [
    ('{"cluster": ', 'not valid JSON'),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, '
     '"task": {"type": "worker", "index": 0}}', "['ps']"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
     '"host:port"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', '"task"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, '
     '"task": {"type": "worker", "index": 2}}', 'index 2'),
])
def test_malformed_tf_config_is_a_user_error(monkeypatch, tf_config, message):
  monkeypatch.setenv('TF_CONFIG', tf_config)
  with pytest.raises(UserError, match='TF_CONFIG is') as error:
    cluster.check_tf_config()
  assert message in str(error.value)
  monkeypatch.setenv('TF_CONFIG', '{"cluster": {"worker": ["a:1", "b:2"]}, '
                     '"task": {"type": "worker", "index": 1}}')
  cluster.check_tf_config()  # a valid one passes


def _data():
  gin.parse_config(TINY_DATA + "Data.mixup = 'mixup_roll'")
  return Data(), DATASETS.get('mnist_embedded')(split='train[:40]')


@pytest.mark.parametrize('replicas, pipelines', [(2, 2), (4, 2)])
def test_pipelines_together_feed_each_replica_the_one_pipeline_batch(
    replicas, pipelines):
  data, source = _data()
  per_replica, steps, start = 4, 6, 3  # 40 examples: epochs end mid-step

  def replica_batches(pipelines, start_step):
    """{(step, replica): images} as tf.distribute hands them out."""
    local = replicas // pipelines
    batches = {}
    for index in range(pipelines):
      context = tf.distribute.InputContext(pipelines, index, replicas)
      stream = data.train_dataset_fn(per_replica, 7, context, source,
                                     start_batch=start_step * local)
      for j, batch in enumerate(stream.take(steps * local)):
        # A pipeline gives its batches to its replicas in turn.
        batches[(start_step + j // local, index * local + j % local)] = (
            batch['image'].numpy())
    return batches

  one = replica_batches(1, 0)
  for got in (replica_batches(pipelines, 0), replica_batches(pipelines, start)):
    for key, images in got.items():
      if key in one:
        np.testing.assert_array_equal(images, one[key], err_msg=str(key))
  assert len(replica_batches(pipelines, start).keys() & one.keys()) == (
      (steps - start) * replicas)


def test_padded_eval_gives_every_pipeline_whole_batches_and_each_example_once():
  data, source = _data()  # 40 examples, global batch 4 x 4 replicas = 16
  labels, weights, counts = [], [], []
  for index in range(2):
    context = tf.distribute.InputContext(2, index, 4)
    batches = list(data.eval_dataset_fn(4, context, source, pad=True))
    counts.append(len(batches))
    assert all(b['image'].shape[0] == 4 for b in batches)
    for b in batches:
      labels += list(b['label'].numpy()[b['weight'].numpy() > 0])
      weights += list(b['weight'].numpy())
  # ceil(40 / 16) = 3 global batches: 6 per-replica batches per pipeline.
  assert counts == [6, 6]
  assert sum(weights) == 40 and len(weights) == 48
  assert sorted(labels) == sorted(int(e['label']) for e in source.dataset)


# --- Two real workers -------------------------------------------------------

STEPS, RESUME_AT = 96, 48  # 6 epochs of 256 images at global batch 16
# No BatchNorm and MixUp over the global batch: a step is then the same
# function of the global batch on one device and on two (BatchNorm's batch
# statistics and per-replica MixUp pairs are per replica by design).
EXTRA = """
Training.epochs = 6
Training.steps_per_loop = 8
Training.checkpoint_every_steps = 16
Training.checkpoints_to_keep = 10
student/backbones.simple_cnn.batch_norm = False
Data.mixup_scope = 'global'
"""
MULTI_WORKER = "Runtime.distribution_strategy = 'multi_worker_mirrored'"
# Measured: two workers end within 1.5e-7 of one device (weights up to
# ~0.6), resumed or not. Not 0: one device takes the gradient of the mean
# over 16 images, two workers each that of the mean over 8, halved and
# summed (float32 rounds differently), and Adam carries the differences
# along. 1e-5 leaves a margin of ~70x and is far below what a real fault
# gives (a worker that does not restore, other data, other MixUp pairs:
# differences of 1e-2 and more).
TOLERANCE = 1e-5


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _latest_step(model_dir):
  checkpoint = tf.train.latest_checkpoint(str(model_dir))
  return int(checkpoint.rsplit('-', 1)[1]) if checkpoint else -1


def _start_worker(index, hosts, gin_file, tmp_path, label=''):
  """One `fmx run` worker of a two-worker cluster; its output goes to a file."""
  tf_config = {'cluster': {'worker': hosts},
               'task': {'type': 'worker', 'index': index}}
  env = dict(os.environ, TF_CONFIG=json.dumps(tf_config),
             TMPDIR=str(tmp_path / 'tmp'), TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.Popen(
      [sys.executable, '-m', 'fmx.cli', 'run', '--gin', gin_file,
       '--bind', MULTI_WORKER],
      stdout=open(tmp_path / f'worker{index}{label}.txt', 'w'),
      stderr=subprocess.STDOUT, text=True, env=env)


def _wait(workers, timeout):
  """Waits for every worker; stragglers (a hung collective) are killed."""
  deadline = time.monotonic() + timeout
  try:
    for worker in workers:
      worker.wait(max(1, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    pytest.fail(f'the workers did not finish in {timeout} s')
  finally:
    for worker in workers:
      worker.kill()
  return [worker.returncode for worker in workers]


def _weights(prefix):
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name.startswith(('model/', 'optimizer/', 'global_step'))}


def _assert_non_chief_resumes_like_the_chief(model_dir, write_dir):
  """A non-chief worker's runner restores the chief's checkpoint and saves
  at the chief's steps only.

  Under multi-worker a save is collective (BatchNorm's moving statistics
  are synchronised on read), so one save more on one worker stops the run;
  this student has no BatchNorm, so the runner's own schedule is checked,
  in this process, with a non-chief's Role.
  """
  setup = run.build_setup('distillation', model_dir)
  checkpoint = os.path.join(model_dir, f'ckpt-{RESUME_AT}')
  with setup.strategy.scope():
    trainer = train_utils.create_trainer(setup.params, setup.task, train=True,
                                         evaluate=True)
  role = cluster.Role(is_chief=False, multi_worker=False, model_dir=model_dir,
                      write_dir=write_dir)
  runner = cluster.ExperimentRunner(
      distribution_strategy=setup.strategy, task=setup.task, mode='train',
      params=setup.params, trainer=trainer, role=role,
      start=(RESUME_AT, checkpoint))
  assert int(trainer.global_step.numpy()) == RESUME_AT  # restored
  reader = tf.train.load_checkpoint(checkpoint)
  kernel = trainer.model.get_layer('logits').kernel.numpy()
  np.testing.assert_array_equal(kernel, reader.get_tensor(
      'model/layer_with_weights-2/kernel/.ATTRIBUTES/VARIABLE_VALUE'))
  manager = runner.checkpoint_manager
  interval = setup.params.trainer.checkpoint_interval
  for step, saves in ((RESUME_AT + 8, False), (RESUME_AT + interval, True)):
    trainer.global_step.assign(step)
    assert (manager.save(checkpoint_number=step) is not None) == saves, step


def test_two_workers_stopped_by_sigterm_save_resume_and_match_one_device(
    trained_teacher, tmp_path):
  """A run of two workers, stopped by SIGTERM mid-run and started again,
  ends with the one-device student.

  SIGTERM reaches one worker only (a preempted machine): both stop before
  the same step, save a checkpoint there together and exit 75. Started
  again, both resume from it (the other worker reads it from the chief's
  folder) and continue the same data stream. (SIGKILLing two workers and
  restarting them works the same way, checked by
  benchmarks/multiworker_demo.py.)
  """
  model_dir = tmp_path / 'two_workers'
  # A float32 teacher: the whole run of 96 steps takes ~4 s with a bfloat16
  # one, and SIGTERM must land after step 16 and before the end.
  gin_file = write(tmp_path / 'two.gin', tiny_student_gin(
      str(model_dir), trained_teacher[0]) + EXTRA +
      "distillation.teacher_precision = 'float32'\n")
  # Started again if both workers ran to the end before SIGTERM reached one
  # (twice in four loaded full-suite runs the 96 steps ended first); a stop
  # that does not happen twice in a row fails below.
  for _ in range(2):
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.rmtree(tmp_path / 'tmp', ignore_errors=True)
    (tmp_path / 'tmp').mkdir()
    hosts = [f'127.0.0.1:{port}' for port in _free_ports(2)]
    workers = [_start_worker(i, hosts, gin_file, tmp_path) for i in range(2)]
    try:
      deadline = time.monotonic() + 240
      while not (model_dir / 'ckpt-16.index').exists():  # cheaper than TF's reader
        assert workers[0].poll() is None and time.monotonic() < deadline, (
            (tmp_path / 'worker0.txt').read_text()[-3000:])
        time.sleep(0.005)
      workers[1].send_signal(signal.SIGTERM)
    finally:
      codes = _wait(workers, 240)
    if codes != [0, 0]:
      break
  outputs = [(tmp_path / f'worker{i}.txt').read_text() for i in range(2)]
  assert codes == [Preempted.exit_code] * 2, outputs[0][-3000:] + outputs[1][-3000:]
  stopped = _latest_step(model_dir)
  assert 16 <= stopped < STEPS
  for output in outputs:  # both stopped before the same step and saved it
    assert f'saved a checkpoint at step {stopped} ' in output
  chiefs = {workers[0].pid}

  workers = [_start_worker(i, hosts, gin_file, tmp_path, 'again')
             for i in range(2)]
  try:
    # The one-device reference meanwhile.
    reference_dir = str(tmp_path / 'one_device')
    reference = run.run([write(tmp_path / 'one.gin', tiny_student_gin(
        reference_dir, trained_teacher[0]) + EXTRA +
        "distillation.teacher_precision = 'float32'\n")])
    _assert_non_chief_resumes_like_the_chief(reference_dir,
                                             str(tmp_path / 'non_chief'))
  finally:
    codes = _wait(workers, 240)
  chiefs.add(workers[0].pid)
  outputs = [(tmp_path / f'worker{i}again.txt').read_text() for i in range(2)]
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  for output in outputs:  # both resumed from the chief's checkpoint
    assert f'resuming from the checkpoint at step {stopped}' in output

  # The same student as on one device, to float32 rounding.
  expected = _weights(os.path.join(reference_dir, f'ckpt-{STEPS}'))
  got = _weights(tf.train.latest_checkpoint(str(model_dir)))
  assert expected.keys() == got.keys()
  assert int(got['global_step/.ATTRIBUTES/VARIABLE_VALUE']) == STEPS
  difference = max(float(np.max(np.abs(expected[k] - got[k]))) for k in expected)
  print(f'max abs weight difference, 2 workers vs 1 device: {difference:.3g}')
  assert difference < TOLERANCE
  results = json.load(open(model_dir / 'results.json'))
  for key in ('student_top1', 'student_top5', 'agreement', 'teacher_top1'):
    assert results[key] == reference[key], key  # counts over 100 images
  assert np.isclose(results['kl'], reference['kl'], rtol=1e-4)

  # Only the chief wrote the run folder: every TensorBoard file is its own
  # (their names end in the writer's pid), one results.json, one config;
  # the other worker's temporary folder is gone.
  events = glob.glob(str(model_dir / '*' / 'events.out.tfevents.*'))
  assert {'train', 'validation', 'test'} <= {
      os.path.basename(os.path.dirname(e)) for e in events}
  assert {int(os.path.basename(e).split('.')[-3]) for e in events} == chiefs
  assert not glob.glob(str(model_dir / '*.before-*'))
  assert (model_dir / 'operative_config.gin').exists()
  assert not glob.glob(str(tmp_path / 'tmp' / 'fmx-*'))


def test_a_teacher_run_trained_first_uses_the_students_workers(
    tmp_path, monkeypatch):
  # Every worker of a multi-worker distillation trains the missing teacher
  # together with the others, not each one on its own into the same folder.
  teacher_dir = str(tmp_path / 'teacher')
  teacher_gin = write(tmp_path / 'teacher.gin', tiny_teacher_gin(teacher_dir))
  student_gin = write(tmp_path / 'student.gin', tiny_student_gin(
      str(tmp_path / 'student'), teacher_dir, teacher_gin=teacher_gin)
      + "Runtime.distribution_strategy = 'multi_worker_mirrored'\n")
  seen = []

  def record(task_name, model_dir, allow_config_change=False):
    seen.append((task_name, model_dir,
                 gin.query_parameter('Runtime.distribution_strategy')))
    raise KeyboardInterrupt  # stop before anything trains

  monkeypatch.setattr(run, 'train_and_evaluate', record)
  with pytest.raises(KeyboardInterrupt):
    run.run([student_gin])
  assert seen == [('teacher', teacher_dir, 'multi_worker_mirrored')]
