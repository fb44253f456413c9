"""Each way to teach gives teacher and student exactly the documented inputs."""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.core import config_definitions as cfg

from conftest import Recorder, tiny_student_gin
from fmx.errors import UserError
from fmx.tasks import teaching
from fmx.tasks.distillation import DistillationTask
from fmx.training.settings import Optimizer


def _step(teacher_dir, tmp_path, mode):
  # A float32 teacher: the tests recompute its outputs with the float32
  # model (test_teacher_precision covers the bfloat16 ones).
  gin.parse_config(tiny_student_gin(str(tmp_path / 'student'), teacher_dir) + f"""
      distillation.teacher_precision = 'float32'
      distillation.teaching = '{mode}'
      distillation.teacher_output_cache = '{tmp_path / 'cache'}'""")
  tf_keras.utils.set_random_seed(0)
  task = DistillationTask(params=cfg.TaskConfig())
  student = task.build_model()
  optimizer = task.create_optimizer(Optimizer().config(train_steps=10))
  batch = next(iter(task.build_inputs(cfg.DataConfig(is_training=True,
                                                     global_batch_size=8))))
  teacher, student_recorder = Recorder(task.teacher), Recorder(student)
  task.teacher = teacher
  task.train_step(batch, student_recorder, optimizer, metrics=[])
  return task, batch, teacher.seen, student_recorder.seen


def _unmixed_views(task, seed_offset=0):
  """The first 8 training views without MixUp, recomputed from the pipeline."""
  data = task.data
  examples = data.train_examples(task.training.seed, None, task.sources['train'])
  views = [data.augment_example(task.training.seed + seed_offset, p, e)
           for p, e in examples.take(8)]
  return np.stack([v['image'].numpy() for v in views])


@pytest.mark.parametrize('mode', teaching.MODES)
def test_mode_inputs(mode, trained_teacher, tmp_path):
  task, batch, teacher_seen, student_seen = _step(trained_teacher[0], tmp_path, mode)
  student_input = student_seen[0]
  np.testing.assert_array_equal(student_input, batch['image'].numpy())
  plain = _unmixed_views(task)
  if mode == 'function_matching':
    np.testing.assert_array_equal(teacher_seen[0], student_input)
    assert not np.allclose(student_input, plain), 'MixUp should blend the batch'
  elif mode == 'consistent':
    np.testing.assert_array_equal(teacher_seen[0], student_input)
    np.testing.assert_allclose(student_input, plain, atol=1e-6)  # no MixUp
  elif mode == 'independent_noise':
    np.testing.assert_allclose(student_input, plain, atol=1e-6)
    teacher_view = _unmixed_views(task, teaching._TEACHER_VIEW_SEED_OFFSET)  # pylint: disable=protected-access
    np.testing.assert_allclose(teacher_seen[0], teacher_view, atol=1e-6)
    assert not np.allclose(teacher_seen[0], student_input), 'views must differ'
  else:  # fixed_teacher: no teacher call in the step; outputs from the cache
    assert teacher_seen == []
    np.testing.assert_allclose(student_input, plain, atol=1e-6)
    # The cached outputs are the teacher on the central (eval) view of the
    # very examples of the batch, recomputed here independently.
    source = task.sources['train']
    eval_view = task.data.eval_dataset_fn(512, source=source)
    all_images = np.concatenate([b['image'].numpy() for b in eval_view])
    expected = task.teacher.inner(all_images[batch['index'].numpy()], training=False)
    # Streamed beside the images, stored as float16 (3 significant digits).
    np.testing.assert_allclose(batch['teacher_logits'].numpy(), expected.numpy(),
                               rtol=2e-3, atol=2e-3)


def test_fixed_teacher_outputs_are_cached_on_disk(trained_teacher, tmp_path):
  _step(trained_teacher[0], tmp_path, 'fixed_teacher')
  cached = list((tmp_path / 'cache').glob('*/' + teaching.KEY_FILE))
  assert len(cached) == 1
  stamp = cached[0].stat().st_mtime_ns
  gin.clear_config()
  _step(trained_teacher[0], tmp_path, 'fixed_teacher')  # reuses, not rewrites
  assert cached[0].stat().st_mtime_ns == stamp
  assert not list((tmp_path / 'cache').glob('*.tmp-*'))


def test_fixed_teacher_outputs_stream_from_float16_shards(trained_teacher,
                                                           tmp_path, monkeypatch):
  # A split larger than a shard (the threshold, lowered from 10,000): the
  # 256 training examples span shards of 100, 100 and 56 records.
  monkeypatch.setattr(teaching, 'EXAMPLES_PER_SHARD', 100)
  task, batch, _, _ = _step(trained_teacher[0], tmp_path, 'fixed_teacher')
  shards = sorted(tf.io.gfile.glob(f'{task.fixed_outputs}/shard-*.tfrecord'))
  records = [[tf.train.Example.FromString(r.numpy()) for r in
              tf.data.TFRecordDataset(shard)] for shard in shards]
  assert [len(r) for r in records] == [100, 100, 56]
  indices = [r.features.feature['index'].int64_list.value[0]
             for shard in records for r in shard]
  assert indices == list(range(256))
  stored = np.stack([np.frombuffer(r.features.feature['logits'].bytes_list.value[0],
                                   np.float16) for shard in records for r in shard])
  # The teacher on each example's eval view, recomputed independently.
  eval_view = task.data.eval_dataset_fn(512, source=task.sources['train'])
  images = np.concatenate([b['image'].numpy() for b in eval_view])
  expected = task.teacher.inner(images, training=False).numpy()
  np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=2e-3,
                             atol=2e-3)
  # Over an epoch, each training example gets its own index's outputs.
  epoch = list(task.build_inputs(cfg.DataConfig(
      is_training=True, global_batch_size=8)).take(32))
  index = np.concatenate([b['index'].numpy() for b in epoch])
  assert sorted(index) == list(range(256)) and index[0] == batch['index'][0]
  np.testing.assert_array_equal(
      np.concatenate([b['teacher_logits'].numpy() for b in epoch]),
      stored[index].astype(np.float32))


def test_fixed_teacher_cache_survives_a_concurrent_writer(trained_teacher, tmp_path,
                                                         monkeypatch):
  """Two processes (seeds of one cell, `fmx grid --parallel 2`) write the same
  cache at once: here the other one writes and renames between this one's
  write and its rename."""
  task, _, _, _ = _step(trained_teacher[0], tmp_path, 'consistent')
  cache, real_rename, others = str(tmp_path / 'shared'), tf.io.gfile.rename, []

  def outputs():
    return teaching.cache_fixed_teacher_outputs(
        task.teacher, task.data, task.sources['train'], 'teacher', cache)

  def rename_after_another_writer(source, target, overwrite=False):
    if not others:
      others.append('started')
      others.append(outputs())  # the other run, start to end
    real_rename(source, target, overwrite=overwrite)

  monkeypatch.setattr(tf.io.gfile, 'rename', rename_after_another_writer)
  first = outputs()
  monkeypatch.undo()
  assert others[1] == first  # the other writer did run in between, same key
  assert [p.name for p in (tmp_path / 'shared').iterdir()] == [os.path.basename(first)]
  logits = [r['logits'].numpy() for r in teaching.read_fixed_outputs(first)]
  assert len(logits) == task.sources['train'].num_examples


def test_unknown_mode_is_a_user_error():
  with pytest.raises(UserError, match="distillation.teaching = 'matching'"):
    teaching.check_mode('matching')
