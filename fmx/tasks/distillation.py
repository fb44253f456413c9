"""The function-matching distillation task (Beyer et al. 2021).

The teacher is frozen and runs in inference mode inside the same step, on the
very batch the student trains on (same crop, same flip, same MixUp). It is
either an fmx teacher run (`teacher_run`, rebuilt from its model.json and
checkpoint) or an exported SavedModel or TF-Hub handle of logits
(`teacher_saved_model`, e.g. a teacher fine-tuned elsewhere), or several of
either at once (`teacher_runs`, `teacher_saved_models`: an ensemble, its
outputs combined as `ensemble` says, fmx.tasks.ensemble). What the two
models see follows `teaching` (fmx.tasks.teaching; default function matching).
Labels are never used by the loss; they only feed the eval's accuracy metrics. The trainer
checkpoints only `build_model()`'s output, the student: we never change the
teacher, so there is nothing of it to save.
"""

import dataclasses
import os
import re
from typing import Callable, List, Optional, Sequence, Tuple, Union

import gin
import tensorflow as tf
import tf_keras

from fmx.backbones import hub
from fmx.errors import UserError
from fmx.registry import LOSSES, TASKS
from fmx.tasks import ensemble as ensemble_lib
from fmx.tasks import teacher_precision as precision_lib
from fmx.tasks import teacher_run
from fmx.tasks import teaching as teaching_lib
from fmx.tasks.base import FmxTask, apply_gradients, fit_to_model, to_float, top1_correct, top_k_correct, update_mean, validation_logs

# Training images are mixed: a mixed image's label is its slot's, not the
# blend's, so label accuracies on them mislead; teacher-student agreement
# needs no label. Accuracies are the eval's, on unmixed images.
TRAIN_METRICS = ('agreement',)
EVAL_METRICS = ('student_top1', 'teacher_top1', 'agreement', 'student_top5',
                'teacher_top5', 'kl')
# An ensemble's evaluations also log these per teacher, as '<metric>/<name>'.
PER_TEACHER_METRICS = ('teacher_top1', 'agreement', 'kl')


@TASKS.register('distillation', denylist=('params', 'logging_dir', 'name'))
class DistillationTask(FmxTask):
  """Function matching: student learns the frozen teacher's outputs, no labels.

  Args:
    student: the backbone entry distilled into (`fmx list backbones`).
    teacher_run: folder of an fmx teacher run (or one teacher_gin trains).
    teacher_saved_model: a SavedModel folder or TF-Hub handle that outputs logits.
    teacher_gin: gin file that trains teacher_run first, if it is not finished.
    teacher_runs: an ensemble's teacher run folders (instead of teacher_run).
    teacher_saved_models: an ensemble's SavedModels / TF-Hub handles.
    teacher_gins: one gin file per teacher_runs entry, training it first (None: trained).
    ensemble: how an ensemble's teachers combine: 'mean_probabilities',
      'mean_logits' or 'sum_losses' (fmx.tasks.ensemble).
    loss: a distillation loss entry, e.g. 'kl'.
    teaching: 'function_matching', 'consistent', 'independent_noise' or 'fixed_teacher'.
    student_image_size: the student's input size; None: Data.image_size.
    teacher_image_size: a SavedModel teacher's input size (a list: one per
      teacher_saved_models entry); None: Data.image_size.
    teacher_jit_compile: compile the teacher's forward pass with XLA.
    teacher_precision: 'auto' (bfloat16 where the device computes it natively,
      else float32), 'float32', 'bfloat16' or 'float16'; a list: one per
      teacher (teacher_runs, then teacher_saved_models).
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
               teacher_runs: Sequence[str] = (),
               teacher_saved_models: Sequence[str] = (),
               teacher_gins: Sequence[Optional[str]] = (),
               ensemble: str = 'mean_probabilities',
               loss: str = 'kl',
               teaching: str = 'function_matching',
               student_image_size: Optional[int] = None,
               teacher_image_size: Union[None, int, Sequence[int]] = None,
               teacher_jit_compile: bool = False,
               teacher_precision: Union[str, Sequence[str]] = 'auto',
               teacher_output_cache: str = os.path.join(
                   os.path.expanduser('~'), '.cache', 'fmx', 'teacher_outputs')):
    runs, saved_models = _teacher_paths(teacher_run, teacher_saved_model,
                                        teacher_runs, teacher_saved_models)
    if teacher_gin and teacher_saved_model:
      raise UserError(
          'distillation.teacher_gin trains a teacher run, but the teacher is '
          f'the SavedModel {teacher_saved_model!r}: remove teacher_gin, or '
          'use teacher_run instead of teacher_saved_model.')
    if teacher_gins and len(teacher_gins) != len(teacher_runs):
      raise UserError(
          f'distillation.teacher_gins has {len(teacher_gins)} entries but '
          f'distillation.teacher_runs has {len(teacher_runs)}: give one gin file '
          'per teacher run, in the same order (None for a run that is already '
          'trained).')
    del teacher_gin, teacher_gins  # fmx.training.run trains teacher runs first
    super().__init__(params, logging_dir=logging_dir, name=name)
    self.student_backbone = student
    self.loss_fn = LOSSES.get(loss)
    if getattr(self.loss_fn, 'takes_labels', False):
      raise UserError(f'distillation.loss = {loss!r} needs labels; distillation '
                      "compares teacher and student: use e.g. 'kl'.")
    self.teaching = teaching_lib.check_mode(teaching)
    self.ensemble = ensemble_lib.check_rule(ensemble)
    # 'mean_probabilities' averages the teachers' probabilities at the
    # loss's own temperature.
    self._loss_temperature = ensemble_lib.loss_temperature(loss)
    # Data.image_size is the crop's size; each model gets its own resize of
    # it. A teacher run's model keeps the size it was trained at.
    self.student_image_size = student_image_size or self.data.image_size
    sizes = _per_teacher('teacher_image_size', teacher_image_size,
                         len(saved_models), 'distillation.teacher_saved_models')
    # 'auto': bfloat16 where the device computes it natively, else float32
    # (fmx.tasks.teacher_precision); resolved here so the run folder's
    # config check compares what the run really uses.
    precisions = [precision_lib.resolve(p) for p in _per_teacher(
        'teacher_precision', teacher_precision, len(runs) + len(saved_models),
        'the teachers (teacher_runs, then teacher_saved_models)')]
    paths = runs + saved_models
    self.teachers = [
        _Teacher(name, path, is_run=index < len(runs),
                 image_size=(sizes[index - len(runs)] if index >= len(runs)
                             else None) or self.data.image_size,
                 precision=precision)
        for index, (name, path, precision) in enumerate(
            zip(ensemble_lib.teacher_names(paths), paths, precisions))]
    single = len(self.teachers) == 1
    # One teacher: the names of the single-teacher settings, as before.
    self.teacher_run = runs[0] if single and runs else None
    self.teacher_saved_model = saved_models[0] if single and saved_models else None
    self.teacher_image_size = self.teachers[0].image_size
    self.teacher_precision = (precisions[0] if single else list(precisions))
    self.resolved_settings = {
        'distillation.teacher_precision': self.teacher_precision}
    self.teacher_output_cache = teacher_output_cache
    # XLA for the frozen teacher's forward pass alone, whatever Runtime.xla
    # says of the whole step: on a 2-core CPU it made a BiT-R50x1 teacher's
    # forward 1.4-2x faster at 96-224 px (XLA fuses GroupNorm) but 2.7x
    # slower at 64 px, and a MobileNetV3 teacher's ~9x slower (depthwise
    # convolutions); see docs/performance.md.
    self.teacher_jit_compile = teacher_jit_compile
    for teacher in self.teachers:
      teacher.forward = (tf.function(teacher.call, jit_compile=True)
                         if teacher_jit_compile else teacher.call)
    # An ensemble's float32 Keras model (exports, fmx.api's Run.teacher).
    self._ensemble_model: Optional[tf_keras.Model] = None
    # For 'fixed_teacher': the folder of the cached teacher outputs.
    self.fixed_outputs: Optional[str] = None

  # One teacher: `task.teacher` is its model, as the single-teacher API was.
  # An ensemble: a float32 Keras model of the combined logits.
  @property
  def teacher(self) -> Optional[tf_keras.Model]:
    if len(self.teachers) == 1:
      return self.teachers[0].model
    return self._ensemble_model

  @teacher.setter
  def teacher(self, model) -> None:
    if len(self.teachers) != 1:
      raise ValueError('an ensemble has one model per teacher: set teachers[i].model')
    # The new model runs as it is: the old one's rewritten graph goes too.
    self.teachers[0].model, self.teachers[0].graph = model, None

  @property
  def _teacher_forward(self):
    return self.teachers[0].forward

  @property
  def _teacher_graph(self):
    return self.teachers[0].graph

  @property
  def is_ensemble(self) -> bool:
    return len(self.teachers) > 1

  def build_model(self) -> tf_keras.Model:
    # Called under the strategy's scope by the trainer: the teachers'
    # variables are placed like the student's. Each is loaded once.
    float32_models = []
    for teacher in self.teachers:
      if teacher.is_run:
        float32_model = teacher_run.load_teacher(teacher.path)
        teacher.model, teacher.graph = precision_lib.run_teacher(
            float32_model, teacher.precision)
      else:
        float32_model = teacher.model = hub.saved_model_teacher(
            teacher.path,
            (teacher.image_size, teacher.image_size, self.input_shape[-1]))
        teacher.graph = precision_lib.graph_teacher(teacher.model,
                                                    teacher.precision)
      float32_models.append(float32_model)
      self._check_classes(teacher)
    if self.is_ensemble:
      self._ensemble_model = ensemble_lib.keras_ensemble(
          float32_models, [t.name for t in self.teachers], self.ensemble,
          (self.data.image_size, self.data.image_size, self.input_shape[-1]))
    if self.teacher_jit_compile:
      for teacher in self.teachers:
        self._check_teacher_compiles(teacher)
    if self.teaching == 'fixed_teacher':
      # A bfloat16 teacher's outputs differ from the float32 one's: never
      # reuse one's cache for the other. An ensemble's cache holds every
      # teacher's logits ([teachers, classes] per example), keyed by all.
      teacher_id = ' + '.join(
          (os.path.abspath(tf.train.latest_checkpoint(t.path)) if t.is_run
           else t.path) + f' ({t.precision})' for t in self.teachers)
      self.fixed_outputs = teaching_lib.cache_fixed_teacher_outputs(
          self._teacher_outputs_per_example, self.data, self.sources['train'],
          teacher_id, self.teacher_output_cache)
    return self.build_backbone(self.student_backbone, scope='student')

  def _check_classes(self, teacher: '_Teacher') -> None:
    """Every teacher predicts the data's classes (an ensemble: the same ones)."""
    classes = teacher.model.output_shape[-1]
    if classes == self.num_classes:
      return
    first = self.teachers[0]
    if teacher is not first and first.model is not None:
      raise UserError(
          f'the teachers disagree on the number of classes: {first.path!r} has '
          f'{first.model.output_shape[-1]} and {teacher.path!r} has {classes} '
          f'(the data {self.sources["train"].name!r} has {self.num_classes}); '
          'an ensemble needs teachers of one label space: remove or replace '
          'the odd one.')
    raise UserError(
        f'the teacher {teacher.path!r} has {classes} classes but the data '
        f'{self.sources["train"].name!r} has {self.num_classes}; distill on '
        'data of the same label space or use another teacher.')

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
    names = TRAIN_METRICS if training else self.validation_metrics
    return [tf_keras.metrics.Mean(name) for name in names]

  @property
  def validation_metrics(self) -> Tuple[str, ...]:
    """What every evaluation logs; an ensemble adds '<metric>/<teacher>'."""
    per_teacher = tuple(f'{metric}/{teacher.name}' for teacher in self.teachers
                        for metric in PER_TEACHER_METRICS) if self.is_ensemble else ()
    return self.VALIDATION_METRICS + per_teacher

  def _check_teacher_compiles(self, teacher: '_Teacher') -> None:
    """A clear error at start-up, not an XLA stack trace at the first step."""
    spec = tf.TensorSpec((1, *teacher.model.input_shape[1:]), tf.float32)
    try:
      # Lowering to HLO finds ops XLA has no kernel for, without compiling
      # machine code (the first step compiles at the real batch size):
      # ~2.5 s for BiT-R50x1 at 224 px here, against ~7 s for the compile.
      teacher.forward.experimental_get_compiler_ir(spec)(stage='hlo')
    except (ValueError, tf.errors.OpError) as e:
      op = re.search(r'XLA_\w+: (\w+) \(', str(e))
      reason = (f'it uses the op {op[1]}, which XLA cannot compile' if op
                else str(e).strip().splitlines()[0])
      raise UserError(
          'distillation.teacher_jit_compile = True, but XLA cannot compile the '
          f'teacher {teacher.path!r}: {reason}. '
          'Set distillation.teacher_jit_compile = False to run it as built.'
      ) from None

  def teacher_logits(self, images):
    """The teacher's float32 logits [batch, classes]; an ensemble's, stacked
    [teachers, batch, classes], each teacher fed its own resize of `images`."""
    # float32 whatever the teacher computes in: the loss and the metrics
    # compare logits, and a bfloat16 softmax would lose their small gaps.
    logits = [tf.stop_gradient(tf.cast(
        teacher.forward(fit_to_model(teacher.model, images)), tf.float32))
              for teacher in self.teachers]
    return tf.stack(logits) if self.is_ensemble else logits[0]

  def _teacher_outputs_per_example(self, images):
    """teacher_logits with the batch first: [batch, classes] or [batch, teachers, classes]."""
    logits = self.teacher_logits(images)
    return tf.transpose(logits, [1, 0, 2]) if self.is_ensemble else logits

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

  def distillation_loss(self, teacher_logits, student_logits):
    """Per-example loss; an ensemble's teachers combined by `ensemble`."""
    if not self.is_ensemble:
      return self.loss_fn(teacher_logits, student_logits)
    return ensemble_lib.loss(self.loss_fn, teacher_logits, student_logits,
                             self.ensemble, self._loss_temperature)

  def train_step(self, inputs, model, optimizer, metrics=None):
    images = inputs['image']
    if (self.teaching == 'function_matching' and self.data.mixup is not None
        and self.data.mixup_scope == 'global'):
      images = self.mix_global_batch(images, optimizer.iterations)
    if self.teaching == 'fixed_teacher':
      teacher_logits = inputs['teacher_logits']  # streamed from the cache
      if self.is_ensemble:  # cached [batch, teachers, classes]
        teacher_logits = tf.transpose(teacher_logits, [1, 0, 2])
    else:  # the teacher's own view, else exactly the student's pixels
      teacher_logits = self.teacher_logits(inputs.get('teacher_image', images))
    with tf.GradientTape() as tape:
      student_logits = model(fit_to_model(model, images), training=True)
      loss = tf.reduce_mean(self.distillation_loss(teacher_logits, student_logits))
    apply_gradients(tape, loss, model, optimizer, self.clip_gradients)
    self._update(metrics, inputs['label'], teacher_logits, student_logits)
    return {self.loss: loss}

  def validation_step(self, inputs, model, metrics=None):
    teacher_logits = self.teacher_logits(inputs['image'])
    student_logits = model(fit_to_model(model, inputs['image']), training=False)
    self._update(metrics, inputs['label'], teacher_logits, student_logits,
                 inputs.get('weight'))
    return validation_logs(inputs)

  def _update(self, metrics, labels, teacher_logits, student_logits,
              weights=None):
    per_teacher = {}
    if self.is_ensemble:
      stacked = teacher_logits
      for index, teacher in enumerate(self.teachers):
        per_teacher.update(_comparisons(labels, stacked[index], student_logits,
                                        suffix=f'/{teacher.name}'))
      teacher_logits = ensemble_lib.classifier_logits(stacked, self.ensemble)
    else:
      stacked = teacher_logits
    values = dict(
        _comparisons(labels, teacher_logits, student_logits),
        student_top1=lambda: top1_correct(labels, student_logits),
        student_top5=lambda: top_k_correct(labels, student_logits, 5),
        teacher_top5=lambda: top_k_correct(labels, teacher_logits, 5),
        validation_loss=lambda: self.distillation_loss(stacked, student_logits),
        **per_teacher)
    for metric in metrics or []:
      update_mean(metric, values[metric.name](), weights)

  def results(self, eval_logs) -> dict:
    logs = to_float(eval_logs)
    results = dict({name: logs[name] for name in EVAL_METRICS},
                   num_classes=self.num_classes)
    if self.is_ensemble:
      results.update(ensemble=self.ensemble, teachers={
          teacher.name: dict(path=teacher.path, **{
              metric: logs[f'{metric}/{teacher.name}']
              for metric in PER_TEACHER_METRICS})
          for teacher in self.teachers})
    return results


def _comparisons(labels, teacher_logits, student_logits, suffix: str = ''):
  """A teacher's top-1, and the student's agreement with it and KL from it."""
  return {
      f'teacher_top1{suffix}': lambda: top1_correct(labels, teacher_logits),
      f'agreement{suffix}': lambda: top1_correct(
          tf.argmax(teacher_logits, -1), student_logits),
      f'kl{suffix}': lambda: LOSSES.get('kl')(teacher_logits, student_logits,
                                              temperature=1.0),
  }


@dataclasses.dataclass(eq=False)
class _Teacher:
  """One frozen teacher: where it comes from, and how it runs once loaded."""
  name: str  # in metric names: validation/agreement/<name>
  path: str  # a teacher run's folder, or a SavedModel folder / TF-Hub handle
  is_run: bool
  image_size: int  # a SavedModel's input size (a run's model keeps its own)
  precision: str  # resolved: 'float32', 'bfloat16' or 'float16'
  model: Optional[tf_keras.Model] = None
  graph: Optional[Callable] = None  # the frozen graph rewritten to precision
  forward: Optional[Callable] = None  # call, or call compiled by XLA

  def call(self, images):
    if self.graph is not None:
      return self.graph(images)
    return self.model(images, training=False)


def _teacher_paths(teacher_run, teacher_saved_model, teacher_runs,
                   teacher_saved_models) -> Tuple[List[str], List[str]]:
  """(teacher runs, SavedModels): one teacher, or the lists of an ensemble."""
  single = [name for name, value in (('teacher_run', teacher_run),
                                     ('teacher_saved_model', teacher_saved_model))
            if value]
  plural = [name for name, value in (('teacher_runs', teacher_runs),
                                     ('teacher_saved_models', teacher_saved_models))
            if value]
  if single and plural:
    raise UserError(
        f'distillation.{single[0]} names one teacher and distillation.'
        f'{plural[0]} an ensemble: set one or the other (an ensemble lists '
        f'every teacher, e.g. distillation.teacher_runs = [...]).')
  if len(single) > 1:
    raise UserError(
        'distillation needs exactly one teacher: set either '
        'distillation.teacher_run (an fmx teacher run\'s folder) or '
        'distillation.teacher_saved_model (a SavedModel folder or TF-Hub '
        'handle that outputs logits), not both; to distill from both, list '
        'them in distillation.teacher_runs and distillation.teacher_saved_models.')
  if not single and not plural:
    raise UserError(
        'distillation needs a teacher: set distillation.teacher_run (an fmx '
        'teacher run\'s folder) or distillation.teacher_saved_model (a '
        'SavedModel folder or TF-Hub handle that outputs logits), or for an '
        'ensemble distillation.teacher_runs / teacher_saved_models, not neither.')
  for name, values in (('teacher_runs', teacher_runs),
                       ('teacher_saved_models', teacher_saved_models)):
    if isinstance(values, str):
      raise UserError(f'distillation.{name} = {values!r} must be a list of '
                      f"paths, e.g. ['{values}']; for one teacher use "
                      f'distillation.{name[:-1]}.')
  if single:
    return ([teacher_run], []) if teacher_run else ([], [teacher_saved_model])
  return list(teacher_runs), list(teacher_saved_models)


def _per_teacher(setting, value, count: int, what: str) -> list:
  """A setting given once for every teacher, or as a list of one per teacher."""
  if not isinstance(value, (list, tuple)):
    return [value] * count
  if len(value) != count:
    raise UserError(f'distillation.{setting} lists {len(value)} values but '
                    f'there are {count} {what}: give one value for all, or one '
                    'per teacher in order.')
  return list(value)
