"""Input-pipeline throughput next to a training step's, in one run.

    python benchmarks/input_pipeline.py            # ~1-2 minutes on 2 CPU cores

Writes 384 px JPEGs into TFRecords shaped like the original implementation's
(shards of 128, `train/train_bench-0-128.tfrec`) in a temporary folder, then
measures, in images/s:

1. decoding: the `tfrecords` entry's examples (read + parse + JPEG decode);
2. the training input pipeline of a function-matching run: the first epoch
   (decode, cache, 128 px inception crop + flip, batch, MixUp) and then
   epochs served from the cache, which is what a long run sees;
3. a distillation step on the pipeline's batches' shape: frozen teacher
   forward + student forward/backward + AdamW, small tf_keras models.

If (2) is well above (3) the input pipeline is not what limits training.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fmx import entries, registry  # noqa: E402  pylint: disable=g-import-not-at-top
from fmx.data.pipeline import Data  # noqa: E402  pylint: disable=g-import-not-at-top

SHARD = 128
NUM_CLASSES = 37


def _photo_like(random: np.random.RandomState, size: int) -> np.ndarray:
  """Smooth shapes plus fine grain: JPEG sizes and decode costs like photos'."""
  coarse = random.rand(12, 12, 3).astype(np.float32)
  image = tf.image.resize(coarse[None], (size, size), method='bicubic')[0].numpy()
  image += random.normal(0, 0.025, image.shape).astype(np.float32)
  return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_tfrecords(folder: str, count: int, size: int) -> float:
  """Writes `count` examples in the original format; mean JPEG size in KB."""
  random = np.random.RandomState(0)
  os.makedirs(os.path.join(folder, 'train'))
  total = 0
  for shard, start in enumerate(range(0, count, SHARD)):
    shard_size = min(SHARD, count - start)
    path = os.path.join(folder, 'train', f'train_bench-{shard}-{shard_size}.tfrec')
    with tf.io.TFRecordWriter(path) as writer:
      for index in range(start, start + shard_size):
        encoded = tf.io.encode_jpeg(_photo_like(random, size), quality=95).numpy()
        total += len(encoded)
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
            'class': tf.train.Feature(int64_list=tf.train.Int64List(
                value=[index % NUM_CLASSES])),
        })).SerializeToString())
  return total / count / 1024


def images_per_second(iterator, batches: int, batch_size: int,
                      start=None) -> float:
  start = start or time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  np.asarray(batch['image'])  # wait for the last one
  return batches * batch_size / (time.perf_counter() - start)


def measure_input(folder: str, count: int, batch_size: int, cached_batches: int):
  gin.clear_config()
  gin.parse_config(f"""
      Data.train_dataset = 'tfrecords'
      Data.eval_dataset = 'tfrecords'
      tfrecords.file_pattern = '{folder}/{{split}}/*.tfrec'
      tfrecords.num_classes = {NUM_CLASSES}
      Data.image_size = 128
      Data.train_augmentations = ['inception_crop', 'random_flip']
      Data.mixup = 'mixup_roll'
      Data.shuffle_buffer = {count}
      """)
  data = Data()
  start = time.perf_counter()
  source = data.source('train')
  open_seconds = time.perf_counter() - start

  start = time.perf_counter()
  decoded = sum(1 for _ in source.dataset)
  decode_rate = decoded / (time.perf_counter() - start)

  # The functions are traced when the dataset is built; the first batches
  # wait for the shuffle buffer (the whole split), i.e. for decoding.
  dataset = data.train_dataset_fn(batch_size, seed=0, source=source)
  start = time.perf_counter()
  batches = iter(dataset)
  first_epoch = images_per_second(batches, count // batch_size, batch_size,
                                  start)
  cached = images_per_second(batches, cached_batches, batch_size)
  return open_seconds, decode_rate, first_epoch, cached, next(batches)


def measure_training(batch, steps: int, teacher_name: str, student_name: str):
  shape = tuple(batch['image'].shape[1:])
  teacher = registry.BACKBONES.get(teacher_name)(num_classes=NUM_CLASSES,
                                                 input_shape=shape)
  student = registry.BACKBONES.get(student_name)(num_classes=NUM_CLASSES,
                                                 input_shape=shape)
  optimizer = tf_keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-5,
                                        global_clipnorm=1.0)
  kl = registry.LOSSES.get('kl')

  @tf.function
  def step(images):
    teacher_logits = tf.stop_gradient(teacher(images, training=False))
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(kl(teacher_logits, student(images, training=True),
                               temperature=2.0))
    grads = tape.gradient(loss, student.trainable_variables)
    optimizer.apply_gradients(zip(grads, student.trainable_variables))
    return loss

  images = batch['image']
  step(images).numpy()  # trace and warm up
  start = time.perf_counter()
  for _ in range(steps):
    loss = step(images)
  loss.numpy()
  return steps * images.shape[0] / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=384,
                      help='examples written (default: %(default)s)')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--cached_batches', type=int, default=60)
  parser.add_argument('--steps', type=int, default=8, help='training steps timed')
  parser.add_argument('--teacher', default='mobilenetv3large')
  parser.add_argument('--student', default='mobilenetv3small')
  args = parser.parse_args()
  entries.load_all()

  folder = tempfile.mkdtemp(prefix='fmx_bench_')
  try:
    start = time.perf_counter()
    jpeg_kb = write_tfrecords(folder, args.images, 384)
    print(f'wrote {args.images} 384x384 JPEGs ({jpeg_kb:.0f} KB each) in '
          f'{-(-args.images // SHARD)} TFRecord shards, '
          f'{time.perf_counter() - start:.0f} s', flush=True)
    open_seconds, decode, first, cached, batch = measure_input(
        folder, args.images, args.batch_size, args.cached_batches)
    train = measure_training(batch, args.steps, args.teacher, args.student)
  finally:
    shutil.rmtree(folder, ignore_errors=True)

  rows = [
      ('opening the split (count records, check labels)', f'{open_seconds:.2f} s'),
      ('decode only (read + parse + 384 px JPEG decode)', f'{decode:,.0f} img/s'),
      ('input, first epoch (decode + cache + crop/flip/MixUp)', f'{first:,.0f} img/s'),
      ('input, cached epochs (128 px crop + flip + MixUp)', f'{cached:,.0f} img/s'),
      (f'distillation step ({args.teacher} -> {args.student}, 128 px, '
       f'batch {args.batch_size})', f'{train:,.0f} img/s'),
  ]
  width = max(len(name) for name, _ in rows)
  print(f'\n{"stage":<{width}}  throughput')
  for name, value in rows:
    print(f'{name:<{width}}  {value:>12}')
  print(f'\ncached input / training step: {cached / train:.1f}x '
        f'({os.cpu_count()} CPU cores, TensorFlow {tf.__version__})')


if __name__ == '__main__':
  main()
