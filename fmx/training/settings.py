"""The gin-facing settings of a run, translated into Model Garden's configs.

Gin is the only configuration language a user writes; Model Garden's
dataclass configs (`ExperimentConfig`, `OptimizationConfig`) are built from
these values so the trainer, optimizers and schedules are Model Garden's own.
"""

import dataclasses
import math
from typing import Optional, Sequence, Tuple

import gin
import tensorflow as tf
from absl import logging
from official.common import distribute_utils
from official.core import config_definitions as cfg

from fmx.errors import UserError
from fmx.optimizers import shampoo as shampoo_optimizer


@gin.configurable
class Experiment:
  """Which task a gin file runs, and where it writes (`--model_dir` wins).

  Args:
    task: 'teacher' (supervised, with labels) or 'distillation'.
    model_dir: the run folder: checkpoints, TensorBoard, results.json.
  """

  def __init__(self, task: str = gin.REQUIRED, model_dir: Optional[str] = None):
    self.task = task
    self.model_dir = model_dir


@gin.configurable
class Training:
  """Length, batch and bookkeeping of a run; schedules derive from these.

  Args:
    epochs: passes over the training split (fractions allowed).
    global_batch_size: images per step, over all replicas.
    eval_batch_size: images per evaluation batch, over all replicas.
    steps_per_loop: steps run in one compiled loop between progress updates.
    evals: evaluations on the eval split during the run.
    checkpoints_to_keep: newest checkpoints kept (2 or more allow a fallback).
    seed: seed of shuffling, augmentation, MixUp and initialisation.
    max_steps: a cap on the steps, for smoke tests; None: no cap.
    compile_steps: run steps as compiled tf.functions (False: eagerly).
    checkpoint_every_steps: steps between checkpoints; None: at every eval.
    nan_rollbacks: rollbacks to the last good checkpoint after a non-finite loss.
    loss_upper_bound: a loss above this counts as diverged.
    early_stopping_patience: evaluations without improvement before the run
      stops early; None: never.
    early_stopping_metric: the validation metric watched; 'auto': the task's
      main one (top-1 of the teacher, or of the student).
    early_stopping_min_delta: the least gain that counts as an improvement.
  """

  def __init__(self,
               epochs: float = gin.REQUIRED,
               global_batch_size: int = gin.REQUIRED,
               eval_batch_size: int = 256,
               steps_per_loop: int = 100,
               evals: int = 5,
               checkpoints_to_keep: int = 3,
               seed: int = 0,
               max_steps: Optional[int] = None,
               compile_steps: bool = True,
               checkpoint_every_steps: Optional[int] = None,
               nan_rollbacks: int = 3,
               loss_upper_bound: float = 1e6,
               early_stopping_patience: Optional[int] = None,
               early_stopping_metric: str = 'auto',
               early_stopping_min_delta: float = 0.0):
    self.epochs = epochs
    self.global_batch_size = global_batch_size
    self.eval_batch_size = eval_batch_size
    self.steps_per_loop = steps_per_loop
    self.evals = evals
    self.checkpoints_to_keep = checkpoints_to_keep
    self.seed = seed
    self.max_steps = max_steps  # a cap for dry runs and smoke tests
    # False runs steps eagerly: for dry runs, where tracing a big model once
    # costs more than the one step it would speed up.
    self.compile_steps = compile_steps
    # None: at every eval. Rounded up to whole loops of steps_per_loop.
    self.checkpoint_every_steps = checkpoint_every_steps
    # Rollbacks to the last good checkpoint after a non-finite loss or
    # weights (fmx.training.recovery) before the run stops.
    self.nan_rollbacks = nan_rollbacks
    self.loss_upper_bound = loss_upper_bound
    # Stop after this many evaluations in a row without improvement of the
    # validation metric (Keras' EarlyStopping(patience) with evaluations for
    # epochs); 'auto' is the task's main metric. See fmx.training.early_stopping.
    self.early_stopping_patience = early_stopping_patience
    self.early_stopping_metric = early_stopping_metric
    self.early_stopping_min_delta = early_stopping_min_delta
    if early_stopping_patience is not None and early_stopping_patience < 1:
      raise UserError(f'Training.early_stopping_patience = '
                      f'{early_stopping_patience}; use None (no early stopping) '
                      'or a number of evaluations >= 1.')
    if checkpoints_to_keep < 1:
      raise UserError(f'Training.checkpoints_to_keep = {checkpoints_to_keep}; '
                      'keep at least 1 (2 or more let a run fall back when its '
                      'latest checkpoint is corrupt).')
    if global_batch_size <= 0 or epochs <= 0:
      raise UserError(f'Training.epochs ({epochs}) and Training.global_batch_size '
                      f'({global_batch_size}) must be positive.')

  def train_steps(self, num_examples: int) -> int:
    """Steps for `epochs` passes over `num_examples` at the global batch."""
    steps = max(1, math.ceil(self.epochs * num_examples / self.global_batch_size))
    return min(steps, self.max_steps) if self.max_steps else steps

  def trainer_config(self, train_steps: int,
                     optimizer: cfg.base_config.Config) -> cfg.TrainerConfig:
    # Orbit only checkpoints and summarises at loop boundaries, so every
    # interval is a multiple of steps_per_loop. Loops of equal length (at most
    # steps_per_loop): otherwise a short run's last loop (e.g. 4 of 32 steps at
    # steps_per_loop 28) would end in a second evaluation a few steps after one.
    loops = math.ceil(train_steps / max(1, self.steps_per_loop))
    loop = max(1, math.ceil(train_steps / max(1, loops)))
    # Rounded up, so the last interval ends at train_steps (no extra eval).
    eval_interval = loop * max(1, math.ceil(train_steps / max(1, self.evals) / loop))
    checkpoint_interval = (loop * max(1, math.ceil(self.checkpoint_every_steps / loop))
                           if self.checkpoint_every_steps else eval_interval)
    return cfg.TrainerConfig(
        optimizer_config=optimizer,
        train_steps=train_steps,
        steps_per_loop=loop,
        summary_interval=loop,
        checkpoint_interval=checkpoint_interval,
        validation_interval=eval_interval,
        validation_steps=-1,  # the whole eval split, every time
        max_to_keep=self.checkpoints_to_keep,
        train_tf_function=self.compile_steps,
        train_tf_while_loop=self.compile_steps,
        eval_tf_function=self.compile_steps,
        # fmx.training.recovery replaces Model Garden's own rollback, which
        # checks only the loss and raises a bare RuntimeError.
        recovery_max_trials=-1,
        loss_upper_bound=self.loss_upper_bound)


CLIP_MODES = ('global_norm', 'per_variable')


@gin.configurable
class Optimizer:
  """An optimiser + linear warmup + cosine decay, via Model Garden.

  `decay`: 'cosine' (after a linear warmup), 'piecewise' (steps at fractions
  of the run, times multipliers) or 'constant'.
  `name`: 'adamw' (Model Garden's AdamWeightDecay: decoupled weight decay of
  lr * weight_decay per step), 'adam', 'sgd' (momentum) or 'shampoo'
  (fmx.optimizers.shampoo, with the same decoupled weight decay; `shampoo`
  overrides its options, e.g. {'block_size': 64, 'graft_type': 'sgd'}).
  `epsilon`: Adam's (None: Keras' and Model Garden's 1e-7; optax's,
  big_vision's, is 1e-8).
  `clipnorm` clips the gradient summed over all replicas (in the task), by
  `clip_mode`: 'global_norm' (the norm of all gradients together, big_vision)
  or 'per_variable' (each variable's gradient by its own norm, as Keras'
  `clipnorm` did in the original implementation).
  `weight_decay_on` restricts decay to variables whose names match one of its
  regexes, e.g. ['kernel'] for the official recipe's kernels-only decay. The
  cosine decay lasts exactly the run's train_steps, so the schedule ends at
  the last step actually run (the original code's ended early and trained
  its tail at lr 0).

  Args:
    name: 'adamw', 'adam', 'sgd' (with momentum) or 'shampoo'.
    learning_rate: the peak learning rate, reached at the end of warmup.
    warmup_steps: steps of linear warmup from 0.
    decay: 'cosine', 'piecewise' or 'constant', after the warmup.
    weight_decay: decoupled weight decay rate (adamw only).
    weight_decay_on: regexes of the variables to decay; None: all.
    clipnorm: clip gradients to this norm (see clip_mode); None: no clipping.
    clip_mode: 'global_norm' (all gradients together) or 'per_variable'.
    epsilon: Adam's epsilon; None: Keras' 1e-7.
    momentum: momentum of 'sgd'.
    piecewise_boundaries: fractions of the run where 'piecewise' steps down.
    piecewise_multipliers: learning rate multipliers, one more than boundaries.
    shampoo: Shampoo's options (fields of
      fmx.optimizers.shampoo.ShampooConfig), e.g. {'block_size': 64}.
  """

  def __init__(self,
               name: str = 'adamw',
               learning_rate: float = gin.REQUIRED,
               warmup_steps: int = 0,
               decay: str = 'cosine',
               weight_decay: float = 0.0,
               weight_decay_on: Optional[Sequence[str]] = None,
               clipnorm: Optional[float] = None,
               clip_mode: str = 'global_norm',
               epsilon: Optional[float] = None,
               momentum: float = 0.9,
               piecewise_boundaries: Sequence[float] = (0.3, 0.6, 0.9),
               piecewise_multipliers: Sequence[float] = (1.0, 0.1, 0.01, 0.001),
               shampoo: Optional[dict] = None):
    if name not in ('adamw', 'adam', 'sgd', 'shampoo'):
      raise UserError(f"Optimizer.name = {name!r}; use 'adamw', 'adam', 'sgd' "
                      "or 'shampoo'.")
    if decay not in ('cosine', 'piecewise', 'constant'):
      raise UserError(f"Optimizer.decay = {decay!r}; use 'cosine', 'piecewise' "
                      "or 'constant'.")
    if len(piecewise_multipliers) != len(piecewise_boundaries) + 1:
      raise UserError('Optimizer.piecewise_multipliers needs one value more than '
                      f'Optimizer.piecewise_boundaries ({len(piecewise_multipliers)}'
                      f' vs {len(piecewise_boundaries)}).')
    if clip_mode not in CLIP_MODES:
      raise UserError(f'Optimizer.clip_mode = {clip_mode!r}; use one of '
                      f'{list(CLIP_MODES)}.')
    self.clip_mode, self.epsilon = clip_mode, epsilon
    self.piecewise = (list(piecewise_boundaries), list(piecewise_multipliers))
    self.name, self.learning_rate, self.decay = name, learning_rate, decay
    self.warmup_steps, self.weight_decay = warmup_steps, weight_decay
    self.weight_decay_on = list(weight_decay_on) if weight_decay_on else None
    self.clipnorm, self.momentum = clipnorm, momentum
    self.shampoo = self.shampoo_options(shampoo or {})

  def clip(self, grads):
    """`grads` clipped to `clipnorm` by `clip_mode` (unchanged without one)."""
    if not self.clipnorm:
      return grads
    if self.clip_mode == 'per_variable':
      return [tf.clip_by_norm(g, self.clipnorm) for g in grads]
    return tf.clip_by_global_norm(grads, self.clipnorm)[0]

  @staticmethod
  def shampoo_options(options: dict) -> dict:
    """`Optimizer.shampoo`, checked against ShampooConfig's fields."""
    known = {f.name for f in dataclasses.fields(shampoo_optimizer.ShampooConfig)}
    known -= {'name', 'clipnorm', 'clipvalue', 'global_clipnorm',
              'weight_decay_rate', 'include_in_weight_decay',
              'exclude_from_weight_decay'}
    unknown = sorted(set(options) - known)
    if unknown:
      raise UserError(f'Optimizer.shampoo has unknown option(s) {unknown}; the '
                      f'options are {sorted(known)} (weight decay is set by '
                      'Optimizer.weight_decay and Optimizer.weight_decay_on).')
    choices = {'graft_type': shampoo_optimizer.GRAFT_TYPES,
               'inverse_root': shampoo_optimizer.ROOT_METHODS}
    for key, allowed in choices.items():
      if key in options and options[key] not in allowed:
        raise UserError(f'Optimizer.shampoo[{key!r}] = {options[key]!r}; use '
                        f'one of {list(allowed)}.')
    return dict(options)

  def config(self, train_steps: int) -> shampoo_optimizer.OptimizationConfig:
    # Clipping is not the optimiser's: fmx.tasks.base.apply_gradients clips
    # the gradient summed over replicas (the optimisers would clip each
    # replica's share, a bound n times looser on n replicas).
    if self.name in ('adamw', 'shampoo'):
      optimizer = {'weight_decay_rate': self.weight_decay}
      if self.name == 'adamw':
        optimizer['gradient_clip_norm'] = 0.0
      else:
        optimizer.update(self.shampoo)
      if self.weight_decay_on:
        # Model Garden decays every variable not excluded, even with an
        # include list: exclude everything the include list does not name.
        optimizer.update(include_in_weight_decay=self.weight_decay_on,
                         exclude_from_weight_decay=['.*'])
    elif self.name == 'adam':
      optimizer = {}
    else:
      optimizer = {'momentum': self.momentum}
    if self.epsilon is not None and self.name in ('adam', 'adamw'):
      optimizer['epsilon'] = self.epsilon
    # A warmup as long as the run (tests, dry runs) is halved so the run
    # still decays; any warmup that fits is kept as configured.
    warmup = (self.warmup_steps if self.warmup_steps < train_steps
              else train_steps // 2)
    if self.decay == 'cosine':
      # The cosine starts at the end of warmup (offset): Model Garden's warmup
      # ramps up to the schedule's value at warmup_steps, which is then the
      # peak learning rate itself, and the decay ends exactly at train_steps.
      learning_rate = {'type': 'cosine', 'cosine': {
          'initial_learning_rate': self.learning_rate,
          'decay_steps': train_steps - warmup, 'offset': warmup}}
    elif self.decay == 'piecewise':
      # Boundaries are fractions of the run (BiT-HyperRule: /10 at 30%, 60%
      # and 90%), so the schedule stretches with the run's length.
      boundaries, multipliers = self.piecewise
      learning_rate = {'type': 'stepwise', 'stepwise': {
          'boundaries': [max(1, int(b * train_steps)) for b in boundaries],
          'values': [self.learning_rate * m for m in multipliers]}}
    else:
      learning_rate = {'type': 'constant', 'constant': {
          'learning_rate': self.learning_rate}}
    config = {'optimizer': {'type': self.name, self.name: optimizer},
              'learning_rate': learning_rate}
    if warmup:
      config['warmup'] = {'type': 'linear', 'linear': {'warmup_steps': warmup}}
    # fmx's OptimizationConfig is Model Garden's plus the 'shampoo' choice.
    return shampoo_optimizer.OptimizationConfig(config)


@gin.configurable
class Runtime:
  """Devices and numerics: the tf.distribute strategy, precision and XLA.

  `mixed_precision` 'auto' (default) and `xla` None (default) pick per device
  (see AUTO_NUMERICS); an explicit value wins: None, 'bfloat16' or 'float16',
  and True or False. After construction both attributes hold the resolved,
  concrete values, so every reader sees what the run really uses.

  Args:
    distribution_strategy: 'auto', 'one_device', 'mirrored', 'multi_worker_mirrored' or 'tpu'.
    tpu: TPU address or name; None: no TPU.
    num_gpus: GPUs to use; None: every visible GPU.
    mixed_precision: 'auto' (per device), None (float32), 'bfloat16' or 'float16'.
    xla: compile steps with XLA; None: per device.
    deterministic: make TF ops deterministic (reproducible, slower).
    intra_op_threads: threads per op; None: TF's default (set by `fmx grid --parallel`).
  """

  # (xla, mixed_precision) that 'auto' means on each kind of device. TPUs
  # compute in bfloat16 natively and always compile with XLA. GPUs gain from
  # XLA's fusions and from float16 on tensor cores (with loss scaling, which
  # Model Garden adds for float16). On a CPU, XLA made ResNet training about
  # 2x slower (2-core host, TF 2.20), and a CPU without bfloat16 units only
  # spends time converting: both stay off.
  AUTO_NUMERICS = {'tpu': (True, 'bfloat16'),
                   'gpu': (True, 'float16'),
                   'cpu': (False, None)}
  MIXED_PRECISIONS = (None, 'bfloat16', 'float16')

  def __init__(self,
               distribution_strategy: str = 'auto',
               tpu: Optional[str] = None,
               num_gpus: Optional[int] = None,
               mixed_precision: Optional[str] = 'auto',
               xla: Optional[bool] = None,
               deterministic: bool = False,
               intra_op_threads: Optional[int] = None):
    self.distribution_strategy = distribution_strategy
    self.tpu = tpu
    self.num_gpus = (len(tf.config.list_physical_devices('GPU'))
                     if num_gpus is None else num_gpus)
    if mixed_precision not in self.MIXED_PRECISIONS + ('auto',):
      raise UserError(f"Runtime.mixed_precision = {mixed_precision!r}; use 'auto' "
                      "(per device), None (float32), 'bfloat16' or 'float16'.")
    if xla not in (None, True, False):
      raise UserError(f'Runtime.xla = {xla!r}; use None (per device), True or '
                      'False.')
    self.device = self.device_kind()
    # Resolved once, here: the Keras policy (fmx.training.run), Model
    # Garden's RuntimeConfig and exports all read concrete values.
    self.xla, self.mixed_precision = self.resolve_numerics(
        self.device, xla, mixed_precision)
    self.deterministic = deterministic
    if intra_op_threads:
      # Set by `fmx grid --parallel N`, so N runs share the cores instead of
      # each starting one thread per core. Must precede any TF op.
      try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(intra_op_threads)
      except RuntimeError:
        pass  # TF already started in this process (teacher trained first)

  def device_kind(self) -> str:
    """'tpu', 'gpu' or 'cpu': what the strategy of this runtime computes on."""
    if self.tpu or self.distribution_strategy == 'tpu':
      return 'tpu'
    return 'gpu' if self.num_gpus > 0 else 'cpu'

  @classmethod
  def resolve_numerics(cls, device: str, xla: Optional[bool],
                       mixed_precision: Optional[str]
                       ) -> Tuple[bool, Optional[str]]:
    """(xla, mixed_precision) on `device`, None and 'auto' replaced by defaults."""
    auto_xla, auto_precision = cls.AUTO_NUMERICS[device]
    if device == 'tpu' and xla is False:
      logging.warning('Runtime.xla = False has no effect on a TPU: TPU programs '
                      'are always compiled by XLA.')
      xla = True
    return (auto_xla if xla is None else xla,
            auto_precision if mixed_precision == 'auto' else mixed_precision)

  def strategy(self) -> tf.distribute.Strategy:
    name = self.distribution_strategy
    if name == 'auto':
      name = 'tpu' if self.tpu else (
          'mirrored' if self.num_gpus > 1 else 'one_device')
    try:
      return distribute_utils.get_distribution_strategy(
          distribution_strategy=name, num_gpus=self.num_gpus,
          tpu_address=self.tpu)
    except ValueError as e:
      raise UserError(f'Runtime.distribution_strategy = {name!r} could not be '
                      f'built: {e}') from None

  def runtime_config(self) -> cfg.RuntimeConfig:
    # Model Garden's trainer jit-compiles the task's train step when
    # enable_xla is set, on GPUs only; fmx.training.trainer.Trainer on any
    # device but TPUs (where everything is compiled anyway).
    return cfg.RuntimeConfig(distribution_strategy=self.distribution_strategy,
                             num_gpus=self.num_gpus, tpu=self.tpu,
                             enable_xla=self.xla,
                             mixed_precision_dtype=self.mixed_precision)
