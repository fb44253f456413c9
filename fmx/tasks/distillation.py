"""The function-matching distillation task (Beyer et al. 2021).

The teacher is frozen and runs in inference mode inside the same step, on the
very batch the student trains on (same crop, same flip, same MixUp). It is
either an fmx teacher run (`teacher_run`, rebuilt from its model.json and
checkpoint) or an exported SavedModel or TF-Hub handle of logits
(`teacher_saved_model`, e.g. a teacher fine-tuned elsewhere). What the two
models see follows `teaching` (fmx.tasks.teaching; default function matching).
Labels are never used by the loss; they only feed the eval's accuracy metrics. The trainer
checkpoints only `build_model()`'s output, the student: we never change the
teacher, so there is nothing of it to save.
"""

import os
import re
from typing import Optional

import gin
import tensorflow as tf
import tf_keras

from fmx.backbones import hub
from fmx.errors import UserError
from fmx.registry import LOSSES, TASKS
from fmx.tasks import teacher_precision as precision_lib
from fmx.tasks import teacher_run
from fmx.tasks import teaching as teaching_lib
from fmx.tasks.base import FmxTask, apply_gradients, fit_to_model, to_float, top1_correct, top_k_correct, update_mean

# Training images are mixed: a mixed image's label is its slot's, not the
# blend's, so label accuracies on them mislead; teacher-student agreement
# needs no label. Accuracies are the eval's, on unmixed images.
TRAIN_METRICS = ('agreement',)
EVAL_METRICS = ('student_top1', 'teacher_top1', 'agreement', 'student_top5',
                'teacher_top5', 'kl')


@TASKS.register('distillation', denylist=('params', 'logging_dir', 'name'))
class DistillationTask(FmxTask):
  """Function matching: student learns the frozen teacher's outputs, no labels.

  Args:
    student: the backbone entry distilled into (`fmx list backbones`).
    teacher_run: folder of an fmx teacher run (or one teacher_gin trains).
    teacher_saved_model: a SavedModel folder or TF-Hub handle that outputs logits.
    teacher_gin: gin file that trains teacher_run first, if it is not finished.
    loss: a distillation loss entry, e.g. 'kl'.
    teaching: 'function_matching', 'consistent', 'independent_noise' or 'fixed_teacher'.
    student_image_size: the student's input size; None: Data.image_size.
    teacher_image_size: a SavedModel teacher's input size; None: Data.image_size.
    teacher_jit_compile: compile the teacher's forward pass with XLA.
    teacher_precision: 'auto' (bfloat16 where the device computes it natively,
      else float32), 'float32', 'bfloat16' or 'float16'.
    teacher_output_cache: folder caching fixed_teacher's outputs.
  """

  # What every evaluation logs (validation/<name>), the main metric first:
  # early stopping and `fmx tune` objectives name one of them.
  VALIDATION_METRICS = EVAL_METRICS + ('validation_loss',)

  def __init__(self, params, logging_dir=None, name=None,
               student: str = gin.REQUIRED,
               teacher_run: Optional[str] = None,
               teacher_saved_model: Optional[str] = None,
               teacher_gin: Optional[str] = None,
               loss: str = 'kl',
               teaching: str = 'function_matching',
               student_image_size: Optional[int] = None,
               teacher_image_size: Optional[int] = None,
               teacher_jit_compile: bool = False,
               teacher_precision: str = 'auto',
               teacher_output_cache: str = os.path.join(
                   os.path.expanduser('~'), '.cache', 'fmx', 'teacher_outputs')):
    if bool(teacher_run) == bool(teacher_saved_model):
      raise UserError(
          'distillation needs exactly one teacher: set either '
          'distillation.teacher_run (an fmx teacher run\'s folder) or '
          'distillation.teacher_saved_model (a SavedModel folder or TF-Hub '
          'handle that outputs logits), not '
          f'{"both" if teacher_run else "neither"}.')
    if teacher_gin and teacher_saved_model:
      raise UserError(
          'distillation.teacher_gin trains a teacher run, but the teacher is '
          f'the SavedModel {teacher_saved_model!r}: remove teacher_gin, or '
          'use teacher_run instead of teacher_saved_model.')
    del teacher_gin  # used by fmx.training.run to train the teacher run first
    super().__init__(params, logging_dir=logging_dir, name=name)
    self.student_backbone = student
    self.teacher_run = teacher_run
    self.teacher_saved_model = teacher_saved_model
    self.loss_fn = LOSSES.get(loss)
    if getattr(self.loss_fn, 'takes_labels', False):
      raise UserError(f'distillation.loss = {loss!r} needs labels; distillation '
                      "compares teacher and student: use e.g. 'kl'.")
    self.teaching = teaching_lib.check_mode(teaching)
    # Data.image_size is the crop's size; each model gets its own resize of
    # it. A teacher run's model keeps the size it was trained at.
    self.student_image_size = student_image_size or self.data.image_size
    self.teacher_image_size = teacher_image_size or self.data.image_size
    self.teacher_output_cache = teacher_output_cache
    # XLA for the frozen teacher's forward pass alone, whatever Runtime.xla
    # says of the whole step: on a 2-core CPU it made a BiT-R50x1 teacher's
    # forward 1.4-2x faster at 96-224 px (XLA fuses GroupNorm) but 2.7x
    # slower at 64 px, and a MobileNetV3 teacher's ~9x slower (depthwise
    # convolutions); see docs/performance.md.
    self.teacher_jit_compile = teacher_jit_compile
    self._teacher_forward = (
        tf.function(self._teacher_call, jit_compile=True)
        if teacher_jit_compile else self._teacher_call)
    # 'auto': bfloat16 where the device computes it natively, else float32
    # (fmx.tasks.teacher_precision); resolved here so the run folder's
    # config check compares what the run really uses.
    self.teacher_precision = precision_lib.resolve(teacher_precision)
    self.resolved_settings = {
        'distillation.teacher_precision': self.teacher_precision}
    self.teacher: Optional[tf_keras.Model] = None
    # For 'fixed_teacher': the folder of the cached teacher outputs.
    self.fixed_outputs: Optional[str] = None
    # A SavedModel teacher's graph rewritten to teacher_precision, if any.
    self._teacher_graph = None

  def build_model(self) -> tf_keras.Model:
    # Called under the strategy's scope by the trainer: the teacher's
    # variables are placed like the student's.
    if self.teacher_run:
      self.teacher = precision_lib.keras_teacher(
          teacher_run.load_teacher(self.teacher_run), self.teacher_precision)
    else:
      self.teacher = hub.saved_model_teacher(
          self.teacher_saved_model,
          (self.teacher_image_size, self.teacher_image_size, self.input_shape[-1]))
      self._teacher_graph = precision_lib.graph_teacher(self.teacher,
                                                        self.teacher_precision)
    teacher_classes = self.teacher.output_shape[-1]
    if teacher_classes != self.num_classes:
      raise UserError(
          f'the teacher {self.teacher_run or self.teacher_saved_model!r} has '
          f'{teacher_classes} classes but the data '
          f'{self.sources["train"].name!r} has {self.num_classes}; distill on '
          'data of the same label space or use another teacher.')
    if self.teacher_jit_compile:
      self._check_teacher_compiles()
    if self.teaching == 'fixed_teacher':
      teacher_id = (os.path.abspath(tf.train.latest_checkpoint(self.teacher_run))
                    if self.teacher_run else self.teacher_saved_model)
      # A bfloat16 teacher's outputs differ from the float32 one's: never
      # reuse one's cache for the other.
      teacher_id += f' ({self.teacher_precision})'
      self.fixed_outputs = teaching_lib.cache_fixed_teacher_outputs(
          self.teacher, self.data, self.sources['train'], teacher_id,
          self.teacher_output_cache)
    return self.build_backbone(self.student_backbone, scope='student')

  def train_inputs(self, batch_size, source, input_context=None):
    return teaching_lib.train_dataset(self.data, self.teaching, batch_size,
                                      self.training.seed, input_context, source,
                                      self.start_batch(input_context),
                                      self.fixed_outputs)

  @property
  def input_shape(self):
    """The student's input shape."""
    return (self.student_image_size, self.student_image_size,
            self.sources['train'].channels)

  def build_metrics(self, training: bool = True):
    # The eval loss is a metric of per-example losses, weighted like the
    # others (Model Garden's own validation_loss would average the padded
    # batches' means). Training's loss is the trainer's.
    names = TRAIN_METRICS if training else self.VALIDATION_METRICS
    return [tf_keras.metrics.Mean(name) for name in names]

  def _check_teacher_compiles(self) -> None:
    """A clear error at start-up, not an XLA stack trace at the first step."""
    spec = tf.TensorSpec((1, *self.teacher.input_shape[1:]), tf.float32)
    try:
      # Lowering to HLO finds ops XLA has no kernel for, without compiling
      # machine code (the first step compiles at the real batch size):
      # ~2.5 s for BiT-R50x1 at 224 px here, against ~7 s for the compile.
      self._teacher_forward.experimental_get_compiler_ir(spec)(stage='hlo')
    except (ValueError, tf.errors.OpError) as e:
      op = re.search(r'XLA_\w+: (\w+) \(', str(e))
      reason = (f'it uses the op {op[1]}, which XLA cannot compile' if op
                else str(e).strip().splitlines()[0])
      raise UserError(
          'distillation.teacher_jit_compile = True, but XLA cannot compile the '
          f'teacher {self.teacher_run or self.teacher_saved_model!r}: {reason}. '
          'Set distillation.teacher_jit_compile = False to run it as built.'
      ) from None

  def _teacher_call(self, images):
    if self._teacher_graph is not None:
      return self._teacher_graph(images)
    return self.teacher(images, training=False)

  def teacher_logits(self, images):
    # float32 whatever the teacher computes in: the loss and the metrics
    # compare logits, and a bfloat16 softmax would lose their small gaps.
    return tf.stop_gradient(tf.cast(
        self._teacher_forward(fit_to_model(self.teacher, images)), tf.float32))

  def mix_global_batch(self, images, step):
    """MixUp over the global batch: partners may come from any replica.

    Every replica gathers the global batch, mixes it with the same seed and
    keeps its own slice, so all replicas agree on the pairs.
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    # tf.identity places the batch on this replica's device: under
    # multi-worker, tensors from the input iterator carry no device, which
    # all_gather refuses ("destinations can not be empty").
    gathered = (context.all_gather(tf.identity(images), axis=0)
                if replicas > 1 else images)
    mixed, _ = self.data.mixup(gathered, self.data.mixup_seed(self.training.seed,
                                                              step))
    size = tf.shape(images)[0]
    start = tf.cast(context.replica_id_in_sync_group, tf.int32) * size
    return mixed[start:start + size]

  def train_step(self, inputs, model, optimizer, metrics=None):
    images = inputs['image']
    if (self.teaching == 'function_matching' and self.data.mixup is not None
        and self.data.mixup_scope == 'global'):
      images = self.mix_global_batch(images, optimizer.iterations)
    if self.teaching == 'fixed_teacher':
      teacher_logits = inputs['teacher_logits']  # streamed from the cache
    else:  # the teacher's own view, else exactly the student's pixels
      teacher_logits = self.teacher_logits(inputs.get('teacher_image', images))
    with tf.GradientTape() as tape:
      student_logits = model(fit_to_model(model, images), training=True)
      loss = tf.reduce_mean(self.loss_fn(teacher_logits, student_logits))
    apply_gradients(tape, loss, model, optimizer, self.clip_gradients)
    self._update(metrics, inputs['label'], teacher_logits, student_logits)
    return {self.loss: loss}

  def validation_step(self, inputs, model, metrics=None):
    teacher_logits = self.teacher_logits(inputs['image'])
    student_logits = model(fit_to_model(model, inputs['image']), training=False)
    self._update(metrics, inputs['label'], teacher_logits, student_logits,
                 inputs.get('weight'))
    return {}  # the loss is the 'validation_loss' metric

  def _update(self, metrics, labels, teacher_logits, student_logits,
              weights=None):
    values = {
        'student_top1': lambda: top1_correct(labels, student_logits),
        'teacher_top1': lambda: top1_correct(labels, teacher_logits),
        'agreement': lambda: top1_correct(
            tf.argmax(teacher_logits, -1), student_logits),
        'student_top5': lambda: top_k_correct(labels, student_logits, 5),
        'teacher_top5': lambda: top_k_correct(labels, teacher_logits, 5),
        'kl': lambda: LOSSES.get('kl')(teacher_logits, student_logits,
                                       temperature=1.0),
        'validation_loss': lambda: self.loss_fn(teacher_logits, student_logits),
    }
    for metric in metrics or []:
      update_mean(metric, values[metric.name](), weights)

  def results(self, eval_logs) -> dict:
    logs = to_float(eval_logs)
    return dict({name: logs[name] for name in EVAL_METRICS},
                num_classes=self.num_classes)
