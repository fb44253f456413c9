"""The function-matching distillation task (Beyer et al. 2021).

The teacher is frozen and runs in inference mode inside the same step, on the
very batch the student trains on (same crop, same flip, same MixUp). Labels
are never used by the loss; they only feed the accuracy metrics. The trainer
checkpoints only `build_model()`'s output, the student: we never change the
teacher, so there is nothing of it to save.
"""

from typing import Optional

import gin
import tensorflow as tf
import tf_keras

from fmx.errors import UserError
from fmx.registry import LOSSES, TASKS
from fmx.tasks import teacher_run
from fmx.tasks.base import FmxTask, to_float, top1_correct

TRAIN_METRICS = ('student_top1', 'teacher_top1', 'agreement')
EVAL_METRICS = TRAIN_METRICS + ('kl',)


@TASKS.register('distillation', denylist=('params', 'logging_dir', 'name'))
class DistillationTask(FmxTask):
  """Function matching: student learns the frozen teacher's outputs, no labels."""

  def __init__(self, params, logging_dir=None, name=None,
               student: str = gin.REQUIRED,
               teacher_run: str = gin.REQUIRED,
               teacher_gin: Optional[str] = None,
               loss: str = 'kl'):
    super().__init__(params, logging_dir=logging_dir, name=name)
    del teacher_gin  # used by fmx.training.run to train the teacher first
    self.student_backbone = student
    self.teacher_run = teacher_run
    self.loss_fn = LOSSES.get(loss)
    if getattr(self.loss_fn, 'takes_labels', False):
      raise UserError(f'distillation.loss = {loss!r} needs labels; distillation '
                      "compares teacher and student: use e.g. 'kl'.")
    self.teacher: Optional[tf_keras.Model] = None

  def build_model(self) -> tf_keras.Model:
    # Called under the strategy's scope by the trainer: the teacher's
    # variables are placed like the student's.
    self.teacher = teacher_run.load_teacher(self.teacher_run)
    teacher_classes = self.teacher.output_shape[-1]
    if teacher_classes != self.num_classes:
      raise UserError(
          f'the teacher in {self.teacher_run!r} has {teacher_classes} classes '
          f'but the data {self.sources["train"].name!r} has {self.num_classes}; '
          'distill on data of the same label space or use another teacher.')
    return self.build_backbone(self.student_backbone, scope='student')

  def build_metrics(self, training: bool = True):
    names = TRAIN_METRICS if training else EVAL_METRICS
    return [tf_keras.metrics.Mean(name) for name in names]

  def teacher_logits(self, images):
    return tf.stop_gradient(self.teacher(images, training=False))

  def train_step(self, inputs, model, optimizer, metrics=None):
    images = inputs['image']
    teacher_logits = self.teacher_logits(images)
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tf.GradientTape() as tape:
      student_logits = model(images, training=True)
      loss = tf.reduce_mean(self.loss_fn(teacher_logits, student_logits))
      # Gradients are summed over replicas: each replica's share is 1/n, so
      # the update is that of the mean over the global batch.
      scaled = (loss + tf.add_n(model.losses or [0.0])) / num_replicas
    grads = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    self._update(metrics, inputs['label'], teacher_logits, student_logits)
    return {self.loss: loss}

  def validation_step(self, inputs, model, metrics=None):
    teacher_logits = self.teacher_logits(inputs['image'])
    student_logits = model(inputs['image'], training=False)
    self._update(metrics, inputs['label'], teacher_logits, student_logits)
    return {self.loss: tf.reduce_mean(
        self.loss_fn(teacher_logits, student_logits))}

  def _update(self, metrics, labels, teacher_logits, student_logits):
    values = {
        'student_top1': lambda: top1_correct(labels, student_logits),
        'teacher_top1': lambda: top1_correct(labels, teacher_logits),
        'agreement': lambda: top1_correct(
            tf.argmax(teacher_logits, -1), student_logits),
        'kl': lambda: LOSSES.get('kl')(teacher_logits, student_logits,
                                       temperature=1.0),
    }
    for metric in metrics or []:
      metric.update_state(values[metric.name]())

  def results(self, eval_logs) -> dict:
    logs = to_float(eval_logs)
    return {name: logs[name] for name in EVAL_METRICS}
