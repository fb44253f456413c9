"""The supervised teacher task: trains or fine-tunes a teacher on labels.

This is the original implementation's first step. Its run directory holds
what a distillation run needs to rebuild the teacher: `model.json` (the
architecture) beside the checkpoints, and `results.json` once finished.
"""

import gin
import tensorflow as tf
import tf_keras

from fmx.errors import UserError
from fmx.registry import LOSSES, TASKS
from fmx.tasks.base import FmxTask, apply_gradients, to_float, top1_correct, update_mean, validation_logs


@TASKS.register('teacher', denylist=('params', 'logging_dir', 'name'))
class TeacherTask(FmxTask):
  """Supervised training of a teacher backbone with labels (cross-entropy).

  Args:
    backbone: the backbone entry trained (`fmx list backbones`).
    loss: a supervised loss entry, e.g. 'cross_entropy'.
  """

  # What every evaluation logs (validation/<name>), the main metric first:
  # early stopping and `fmx tune` objectives name one of them.
  VALIDATION_METRICS = ('top1', 'validation_loss')

  def __init__(self, params, logging_dir=None, name=None,
               backbone: str = gin.REQUIRED, loss: str = 'cross_entropy'):
    super().__init__(params, logging_dir=logging_dir, name=name)
    self.backbone = backbone
    self.loss_fn = LOSSES.get(loss)
    if not getattr(self.loss_fn, 'takes_labels', False):
      raise UserError(f'teacher.loss = {loss!r} compares two models; the teacher '
                      "task needs a supervised loss such as 'cross_entropy'.")
    if not self.sources['train'].labeled:
      raise UserError(f'the teacher task trains on labels, but '
                      f'{self.sources["train"].name!r} is unlabeled; train the '
                      'teacher on labeled data (unlabeled images can still be '
                      'distillation data).')
    if self.data.mixup is not None:
      raise UserError('the teacher task trains on labels, which fmx does not '
                      'mix; set Data.mixup = None in the teacher\'s gin file.')

  def build_model(self) -> tf_keras.Model:
    return self.build_backbone(self.backbone, scope='teacher')

  def build_metrics(self, training: bool = True):
    # The eval loss is a metric of per-example losses, weighted like the
    # others (Model Garden's own validation_loss would average the padded
    # batches' means). Training's loss is the trainer's.
    names = ('top1',) if training else self.VALIDATION_METRICS
    return [tf_keras.metrics.Mean(name) for name in names]

  def train_step(self, inputs, model, optimizer, metrics=None):
    with tf.GradientTape() as tape:
      logits = model(inputs['image'], training=True)
      loss = tf.reduce_mean(self.loss_fn(inputs['label'], logits))
    apply_gradients(tape, loss, model, optimizer, self.clip_gradients)
    self._update(metrics, inputs['label'], logits)
    return {self.loss: loss}

  def validation_step(self, inputs, model, metrics=None):
    logits = model(inputs['image'], training=False)
    self._update(metrics, inputs['label'], logits, inputs.get('weight'))
    return validation_logs(inputs)

  def _update(self, metrics, labels, logits, weights=None):
    values = {'top1': lambda: top1_correct(labels, logits),
              'validation_loss': lambda: self.loss_fn(labels, logits)}
    for metric in metrics or []:
      update_mean(metric, values[metric.name](), weights)

  def results(self, eval_logs) -> dict:
    logs = to_float(eval_logs)
    return {'top1': logs['top1'], 'loss': logs.get('validation_loss'),
            'num_classes': self.num_classes}
