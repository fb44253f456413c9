"""Optimisers and schedules built from gin through Model Garden."""

import math
import types

import gin
import numpy as np
import pytest
import tensorflow as tf
from official.core import base_task

from fmx.training.settings import Optimizer, Training


def _optimizer(bindings, train_steps=100):
  gin.parse_config(bindings)
  return base_task.Task.create_optimizer(Optimizer().config(train_steps))


@pytest.mark.parametrize('epochs,examples,batch', [(1000, 3312, 512), (3, 1000, 64),
                                                   (0.5, 256, 16)])
def test_schedule_ends_exactly_at_the_last_step(epochs, examples, batch):
  gin.parse_config(f"""
      Training.epochs = {epochs}
      Training.global_batch_size = {batch}
      Optimizer.learning_rate = 0.01
      Optimizer.warmup_steps = 1500""")
  steps = Training().train_steps(examples)
  assert steps == math.ceil(epochs * examples / batch)
  schedule = base_task.Task.create_optimizer(Optimizer().config(steps)).learning_rate
  # Every step the run takes (0 .. steps-1) has a positive learning rate,
  # the peak is reached, and the decay reaches 0 only at `steps`.
  sample = np.unique(np.linspace(0, steps - 1, 200).astype(int))
  rates = np.array([float(schedule(s)) for s in sample])
  assert np.all(rates[1:] > 0)
  assert math.isclose(rates.max(), 0.01, rel_tol=0.05)
  assert float(schedule(steps)) == pytest.approx(0.0, abs=1e-9)
  assert float(schedule(steps - 1)) > 0


def test_warmup_is_linear_to_the_peak():
  schedule = _optimizer("""
      Optimizer.learning_rate = 0.01
      Optimizer.warmup_steps = 100""", train_steps=10_000).learning_rate
  for step in (10, 50, 99):
    assert float(schedule(step)) == pytest.approx(0.01 * step / 100, rel=1e-3)


def _decay_one_step(bindings):
  optimizer = _optimizer(bindings + "\nOptimizer.decay = 'constant'")
  kernel = tf.Variable(tf.ones([3, 3]), name='dense/kernel')
  bias = tf.Variable(tf.ones([3]), name='dense/bias')
  optimizer.apply_gradients([(tf.zeros_like(kernel), kernel),
                             (tf.zeros_like(bias), bias)])
  return kernel.numpy(), bias.numpy()


def test_adamw_decays_every_weight_by_lr_times_decay():
  kernel, bias = _decay_one_step("""
      Optimizer.name = 'adamw'
      Optimizer.learning_rate = 0.1
      Optimizer.weight_decay = 0.01""")
  # Zero gradients leave Adam's update at 0: only decay moves the weights.
  np.testing.assert_allclose(kernel, 1 - 0.1 * 0.01, rtol=1e-6)
  np.testing.assert_allclose(bias, 1 - 0.1 * 0.01, rtol=1e-6)


def test_weight_decay_on_kernels_only():
  kernel, bias = _decay_one_step("""
      Optimizer.name = 'adamw'
      Optimizer.learning_rate = 0.1
      Optimizer.weight_decay = 0.01
      Optimizer.weight_decay_on = ['kernel']""")
  np.testing.assert_allclose(kernel, 1 - 0.1 * 0.01, rtol=1e-6)
  np.testing.assert_array_equal(bias, 1.0)


def test_sgd_momentum():
  optimizer = _optimizer("""
      Optimizer.name = 'sgd'
      Optimizer.learning_rate = 0.1
      Optimizer.momentum = 0.9
      Optimizer.decay = 'constant'""")
  weight = tf.Variable([1.0])
  for _ in range(2):
    optimizer.apply_gradients([(tf.constant([1.0]), weight)])
  # v1 = -0.1; v2 = 0.9 * v1 - 0.1 = -0.19; w = 1 - 0.1 - 0.19.
  np.testing.assert_allclose(weight.numpy(), [0.71], rtol=1e-6)


def test_piecewise_schedule_steps_at_fractions_of_the_run():
  schedule = _optimizer("""
      Optimizer.name = 'sgd'
      Optimizer.learning_rate = 0.08
      Optimizer.decay = 'piecewise'""", train_steps=1000).learning_rate
  expected = {0: 0.08, 299: 0.08, 301: 0.008, 599: 0.008, 601: 0.0008, 999: 0.00008}
  for step, value in expected.items():
    assert float(schedule(step)) == pytest.approx(value, rel=1e-5), step


def _one_sgd_update(clipnorm, learning_rate, clip_mode='global_norm'):
  """Weights after one SGD step on 3*w1 + 4*w2 + 0.5*b (gradients (3, 4), 0.5)."""
  from fmx.tasks.base import apply_gradients  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  optimizer = _optimizer(f"""
      Optimizer.name = 'sgd'
      Optimizer.momentum = 0.0
      Optimizer.learning_rate = {learning_rate}
      Optimizer.clipnorm = {clipnorm}
      Optimizer.clip_mode = '{clip_mode}'
      Optimizer.decay = 'constant'""")
  model = tf_keras.Sequential([tf_keras.layers.Dense(
      1, kernel_initializer='zeros', bias_initializer='zeros')])
  model.build((None, 2))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(tf.constant([[3.0, 4.0]]))) * 0.5 + tf.reduce_sum(
        model(tf.constant([[3.0, 4.0]]))) * 0.5 + 0.5 * model.layers[0].bias[0]
  apply_gradients(tape, loss, model, optimizer, Optimizer().clip)
  kernel, bias = model.get_weights()
  return np.concatenate([kernel[:, 0], bias])


def _numpy_clip(gradients, norm):
  return gradients * min(1.0, norm / np.linalg.norm(gradients))


GRADIENTS = (np.array([3.0, 4.0]), np.array([1.5]))  # kernel, bias


def test_task_clips_the_global_gradient_norm():
  # All gradients together, norm sqrt(25 + 2.25), clipped to 1 (big_vision).
  expected = -_numpy_clip(np.concatenate(GRADIENTS), 1.0)
  np.testing.assert_allclose(_one_sgd_update(1.0, 1.0), expected, rtol=1e-6)


def test_per_variable_clipping_clips_each_gradient_by_its_own_norm():
  # Keras' clipnorm, the original implementation's: kernel (3, 4) -> (.6, .8),
  # the bias' 1.5 -> 1.
  expected = -np.concatenate([_numpy_clip(g, 1.0) for g in GRADIENTS])
  np.testing.assert_allclose(_one_sgd_update(1.0, 1.0, 'per_variable'), expected,
                             rtol=1e-6)


def test_unclipped_update_is_the_plain_gradient():
  np.testing.assert_allclose(_one_sgd_update(None, 0.1),
                             -0.1 * np.concatenate(GRADIENTS), rtol=1e-6)


def test_unknown_clip_mode_is_a_user_error():
  from fmx.errors import UserError  # pylint: disable=g-import-not-at-top
  gin.parse_config("""
      Optimizer.learning_rate = 0.1
      Optimizer.clip_mode = 'global'""")
  with pytest.raises(UserError, match=r"clip_mode = 'global'.*per_variable"):
    Optimizer()


@pytest.mark.parametrize('name', ['adam', 'adamw'])
def test_adam_epsilon_reaches_the_optimizer(name):
  # Keras' Adam (Model Garden's too) adds epsilon to sqrt(v) before bias
  # correction: its first step from zero moments is lr * m1 * c / (sqrt(v1) +
  # eps), c = sqrt(1 - b2) / (1 - b1). A gradient of 1e-8 tells 1e-8 apart
  # from the default 1e-7.
  g, b1, b2 = 1e-8, 0.9, 0.999
  m1, v1 = (1 - b1) * g, (1 - b2) * g * g
  for epsilon in (1e-8, None):
    gin.clear_config()
    optimizer = _optimizer(f"""
        Optimizer.name = '{name}'
        Optimizer.learning_rate = 1.0
        Optimizer.decay = 'constant'
        Optimizer.epsilon = {epsilon}""")
    weight = tf.Variable([0.0])
    optimizer.apply_gradients([(tf.constant([g]), weight)])
    expected = (m1 * np.sqrt(1 - b2) / (1 - b1)) / (np.sqrt(v1) + (epsilon or 1e-7))
    assert -float(weight[0]) == pytest.approx(expected, rel=1e-3), epsilon


def test_skipped_float16_steps_do_not_advance_the_schedule():
  # Model Garden wraps the optimiser in a dynamic LossScaleOptimizer for
  # float16; Keras counts a skipped (overflowing) step in `iterations`, which
  # the schedule reads. fmx takes it back: the schedule follows applied steps.
  from fmx.tasks.base import apply_gradients  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from official.core import config_definitions as cfg  # pylint: disable=g-import-not-at-top
  gin.parse_config("""
      Optimizer.name = 'sgd'
      Optimizer.momentum = 0.0
      Optimizer.learning_rate = 1.0
      Optimizer.warmup_steps = 10
      Optimizer.decay = 'constant'""")
  optimizer = base_task.Task.create_optimizer(
      Optimizer().config(100), cfg.RuntimeConfig(mixed_precision_dtype='float16'))
  assert isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  weight = tf.Variable([0.0])
  model = types.SimpleNamespace(trainable_variables=[weight], losses=[])
  updates = []
  for factor in (1.0, float('inf'), 1.0, 1.0):  # the second step overflows
    before = float(weight[0])
    with tf.GradientTape() as tape:
      loss = weight[0] * factor + weight[0]
    apply_gradients(tape, loss, model, optimizer)
    updates.append(before - float(weight[0]))
  # Linear warmup: lr = step / 10 at the applied steps 0, 1, 2.
  np.testing.assert_allclose(updates, [0.0, 0.0, 0.2, 0.4], atol=1e-6)
  assert int(optimizer.iterations) == 3
