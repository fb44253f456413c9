"""The baseline: distillation written the way the original implementation did.

A `tf_keras.Model` subclass holds teacher and student; its `train_step` runs
the teacher in inference mode, the student under a GradientTape, the KL
divergence of both softmaxes at temperature T, and the optimiser's update.
It is trained with `model.fit(dataset, epochs=..., steps_per_epoch=...)` and
Keras' defaults (one step per execution, the progress bar). That is the
structure of the original implementation's `Distiller`
(sayakpaul/FunMatch-Distillation), with TensorFlow Addons' AdamW (not
available for TF 2.20) swapped for tf_keras' own: lr 0.01 after a linear
warmup of 1,500 steps then cosine, weight decay 1e-5, clipnorm 1.0.

Its input is fmx's pipeline on the same TFRecords, so the augmentation is
identical (Inception crop, flip, MixUp), but, like the original's, it does
not cache decoded images: every epoch decodes its JPEGs again.
"""

import os

import tensorflow as tf
import tf_keras

import workload as workload_lib

WARMUP_STEPS = 1500
LEARNING_RATE = 0.01


class Distiller(tf_keras.Model):
  """Teacher and student in one Keras model; fit() trains the student."""

  def __init__(self, student: tf_keras.Model, teacher: tf_keras.Model,
               temperature: float, global_batch_size: int):
    super().__init__()
    self.student = student
    self.teacher = teacher
    self.temperature = temperature
    self.global_batch_size = global_batch_size
    # Per example, averaged over the global batch: how a loss is written
    # for a tf.distribute strategy (the original ran on a TPU's 8 cores).
    self.distillation_loss = tf_keras.losses.KLDivergence(
        reduction=tf_keras.losses.Reduction.NONE)
    self.loss_tracker = tf_keras.metrics.Mean(name='distillation_loss')

  @property
  def metrics(self):
    return [self.loss_tracker]

  def train_step(self, data):
    images, _ = data  # labels are not used by distillation
    teacher_logits = self.teacher(images, training=False)
    with tf.GradientTape() as tape:
      student_logits = self.student(images, training=True)
      loss = tf.nn.compute_average_loss(
          self.distillation_loss(
              tf.nn.softmax(teacher_logits / self.temperature, axis=1),
              tf.nn.softmax(student_logits / self.temperature, axis=1)),
          global_batch_size=self.global_batch_size)
    trainable = self.student.trainable_variables
    gradients = tape.gradient(loss, trainable)
    self.optimizer.apply_gradients(zip(gradients, trainable))
    self.loss_tracker.update_state(loss)
    return {'distillation_loss': self.loss_tracker.result()}

  def call(self, images, training=False):
    return self.student(images, training=training)


def load_teacher(run_dir: str) -> tf_keras.Model:
  """The teacher as plain Keras loads it: architecture + weights, nothing else.

  Not fmx's teacher_run.load_teacher: that also prepares the frozen teacher
  for fmx's step, which is part of what is being compared.
  """
  from fmx.tasks import teacher_run  # pylint: disable=g-import-not-at-top
  if not os.path.exists(os.path.join(run_dir, teacher_run.ARCHITECTURE_FILE)):
    # A SavedModel teacher, loaded as the original implementation loaded its
    # fine-tuned teacher.
    return tf_keras.models.load_model(run_dir, compile=False)
  with open(os.path.join(run_dir, teacher_run.ARCHITECTURE_FILE)) as f:
    teacher = tf_keras.models.model_from_json(f.read())
  tf.train.Checkpoint(model=teacher).read(
      tf.train.latest_checkpoint(run_dir)).expect_partial()
  return teacher


def build(folder: str, workload: workload_lib.Workload, model_dir: str,
          total_steps: int):
  """(distiller, dataset): the same teacher, student and input as fmx's run.

  Call it under the strategy's scope, as the original did; then
  `distiller.fit(dataset, epochs=..., steps_per_epoch=...)` trains.
  """
  from fmx.data.pipeline import Data  # pylint: disable=g-import-not-at-top
  # fmx's config but for the cache, so both see the same gin values.
  workload_lib.parse(folder, workload, model_dir, total_steps, cache='none')
  data = Data()
  dataset = data.train_dataset_fn(workload.batch_size, seed=0,
                                  source=data.source('train'))
  dataset = dataset.map(lambda batch: (batch['image'], batch['label']))

  tf_keras.utils.set_random_seed(0)
  teacher = load_teacher(workload_lib.teacher_dir(folder, workload))
  student = workload_lib.build_backbone(workload.student,
                                        workload.student_params,
                                        workload.image_size)
  schedule = tf_keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=0.0, decay_steps=10**6, warmup_target=LEARNING_RATE,
      warmup_steps=WARMUP_STEPS)
  distiller = Distiller(student, teacher, workload_lib.TEMPERATURE,
                        workload.batch_size)
  distiller.compile(optimizer=tf_keras.optimizers.AdamW(
      learning_rate=schedule, weight_decay=1e-5, clipnorm=1.0))
  return distiller, dataset
