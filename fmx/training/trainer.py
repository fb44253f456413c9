"""Model Garden's trainer, with XLA wherever `Runtime.xla` asks for it.

Model Garden's `base_trainer.Trainer` jit-compiles the task's train step only
when `runtime.enable_xla` is set *and* the run has GPUs (a TPU compiles
everything with XLA anyway). fmx resolves `Runtime.xla` per device (on for
TPU and GPU, off for CPU, see fmx.training.settings.Runtime), so an explicit
`Runtime.xla = True` must also compile on a CPU host: this trainer does so on
every device but TPUs. Its loop of steps also stops between steps on request
and returns the last step's loss (create_train_loop_fn says why). Everything
else is Model Garden's.
"""

import tensorflow as tf
from official.core import base_trainer
from orbit.utils import loop_fns


def compiles_train_step(config, strategy: tf.distribute.Strategy) -> bool:
  """True when the task's train step is to be jit-compiled by XLA.

  Not on TPUs: their whole loop is one XLA program already.
  """
  on_tpu = isinstance(strategy, (tf.distribute.TPUStrategy,
                                 tf.distribute.experimental.TPUStrategy))
  return bool(config.runtime.enable_xla) and not on_tpu


class Trainer(base_trainer.Trainer):
  """base_trainer.Trainer whose train step honours enable_xla on any device."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._task_train_step = self.task.train_step
    if compiles_train_step(self.config, self.strategy):
      # One tf.function, made once: the while-loop of steps_per_loop steps
      # then calls the same compiled cluster every step.
      self._task_train_step = tf.function(self.task.train_step,
                                          jit_compile=True)

  def train_step(self, iterator):
    """One step per replica: the task's step (maybe XLA), loss and step count.

    Returns the step's loss (summed over this worker's replicas) so that a
    compiled step or loop has an output: see create_train_loop_fn.
    """

    def step_fn(inputs):
      logs = self._task_train_step(inputs, model=self.model,
                                   optimizer=self.optimizer,
                                   metrics=self.train_metrics)
      self.train_loss.update_state(logs[self.task.loss])
      self.global_step.assign_add(1)
      return logs[self.task.loss]

    inputs = self.next_train_inputs(iterator)
    losses = self.strategy.run(step_fn, args=(inputs,),
                               options=self._runtime_options)
    return tf.add_n([tf.cast(loss, tf.float32) for loss in
                     self.strategy.experimental_local_results(losses)])

  def create_train_loop_fn(self):
    """Orbit's loop of steps, ending early at a step boundary on a stop request.

    The stop request (fmx.training.preemption) is read before every step, so
    a SIGTERM stops the loop between two whole steps, within one step's time,
    however long steps_per_loop is. (Ending the input stream instead would
    cancel a step midway: some variables updated, others not.) Under
    multi-worker training the workers' requests are summed first, so every
    worker stops before the same step.

    The compiled loop returns its last step's loss, as Keras' loops return
    their logs. Orbit's loop returns nothing, and a compiled step whose
    results all end in variable updates runs without most of oneDNN's
    fusions on CPUs (BatchNorm + ReLU, Pad + Conv2D: seen in an op profile;
    why grappler leaves them out of a function without outputs was not
    found). With the loss as an output the loop keeps them: 6% less time a
    step on issue 18's workload (`python benchmarks/step_parts.py`).
    """
    stop_now = self._stop_now_fn()

    if not self._train_options.use_tf_while_loop:
      step_fn = (tf.function(self.train_step)
                 if self._train_options.use_tf_function else self.train_step)

      def python_loop_fn(iterator, num_steps):
        for _ in range(int(num_steps)):
          if bool(stop_now()):
            break
          step_fn(iterator)
      return python_loop_fn

    def loop_fn(iterator, num_steps):
      loss = tf.constant(0.0)
      for _ in tf.range(num_steps):
        if stop_now():
          break
        with tf.name_scope(''):
          loss = self.train_step(iterator)
      return loss

    if self._train_options.use_tpu_summary_optimization:
      return loop_fns.LoopFnWithSummaries(loop_fn)
    return tf.function(loop_fn)

  def _stop_now_fn(self):
    """A function: has a stop been requested (by any worker)? Always False
    when the task takes no stop requests."""
    preemption = getattr(self.task, 'preemption', None)
    if preemption is None:
      return lambda: tf.constant(False)
    stop = preemption.requested

    def stop_now():
      if not preemption.across_workers:
        return stop.read_value()
      # One scalar all-reduce: the same answer on every worker, which then
      # also holds the request (its stop action saves with the others).
      flags = self.strategy.run(lambda: tf.cast(stop.read_value(), tf.int32))
      agreed = self.strategy.reduce(tf.distribute.ReduceOp.SUM, flags,
                                    axis=None) > 0
      stop.assign(tf.logical_or(stop.read_value(), agreed))
      return agreed
    return stop_now
