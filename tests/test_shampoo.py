"""Shampoo (fmx.optimizers.shampoo) against references written independently.

- A numpy Shampoo written here from the definitions of Anil et al. 2020 /
  optax's distributed_shampoo (statistics, inverse p-th roots by float64
  eigendecomposition, grafting, momentum) follows fmx's tf_keras optimiser
  step by step on 2-D, 4-D (conv) and 1-D variables, through steps that
  recompute the roots and steps that do not, with and without blocks.
- The inverse p-th root against scipy.linalg.fractional_matrix_power.
- Model Garden's factory builds it from fmx's settings, float16 included.
"""

import itertools

import gin
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
import tf_keras
from official.core import base_task
from official.core import config_definitions as cfg

from fmx.errors import UserError
from fmx.optimizers import shampoo
from fmx.optimizers.matrix_roots import inverse_pth_root
from fmx.training.settings import Optimizer


class NumpyShampoo:
  """One variable's Shampoo in float64 numpy, from the paper's definitions."""

  def __init__(self, shape, lr, block_size, beta1=0.9, beta2=0.999, eps=1e-6,
               graft='adam', start=5, every=10, weight_decay=0.0,
               nesterov=True):
    self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
    self.graft, self.start, self.every = graft, start, every
    self.weight_decay, self.nesterov = weight_decay, nesterov
    self.shape = shape
    # Merge neighbouring dims while the product fits in a block.
    self.merged, run = [], 1
    for d in shape:
      if run * d > block_size:
        if run > 1:
          self.merged.append(run)
        run = 1
      run *= d
    if run > 1:
      self.merged.append(run)
    # Block boundaries per merged dim, as slices.
    self.cuts = [[slice(a, min(a + block_size, d)) for a in range(0, d, block_size)]
                 for d in self.merged]
    self.blocks = list(itertools.product(*self.cuts))
    self.preconditioned = len(shape) >= 2
    sizes = [[s.stop - s.start for s in block] for block in self.blocks]
    self.stats = [[eps * np.eye(n) for n in ns] for ns in sizes]
    self.roots = [[np.eye(n) for n in ns] for ns in sizes]
    self.v = np.zeros(shape)
    self.m = np.zeros(shape)
    self.m_graft = np.zeros(shape)
    self.step = 0

  def root(self, s, p):
    values, vectors = np.linalg.eigh(s)
    values = np.maximum(values, 0) + self.eps * max(values.max(), 1e-6)
    return (vectors * values ** (-1.0 / p)) @ vectors.T

  def update(self, w, g):
    g = g.astype(np.float64)
    if self.graft == 'sgd':
      graft = g
    else:
      self.v = self.beta2 * self.v + (1 - self.beta2) * g * g
      v = self.v / (1 - self.beta2 ** (self.step + 1)) if self.graft == 'adam' else self.v
      graft = g / (np.sqrt(v) + 1e-10)
    if self.preconditioned:
      gm = g.reshape(self.merged)
      out = np.zeros_like(gm)
      rank = len(self.merged)
      for b, block in enumerate(self.blocks):
        gb = gm[block]
        for axis in range(rank):
          # Rows of the unfolding along `axis`: G_(axis) G_(axis)^T.
          unfolded = np.moveaxis(gb, axis, 0).reshape(gb.shape[axis], -1)
          self.stats[b][axis] = (self.beta2 * self.stats[b][axis] +
                                 (1 - self.beta2) * unfolded @ unfolded.T)
          if self.step % self.every == 0:
            self.roots[b][axis] = self.root(self.stats[b][axis], 2 * rank)
        letters = 'abcdefgh'[:rank]
        pg = gb
        for axis in range(rank):  # multiply dim `axis` by its root
          spec = (letters + ',' + letters[axis].upper() + letters[axis] + '->' +
                  letters.replace(letters[axis], letters[axis].upper()))
          pg = np.einsum(spec, pg, self.roots[b][axis])
        out[block] = pg
      pg = out.reshape(self.shape)
      shampoo_update = pg * np.linalg.norm(graft) / (np.linalg.norm(pg) + 1e-16)
    else:
      shampoo_update = graft
    self.m = self.beta1 * self.m + (1 - self.beta1) * shampoo_update
    self.m_graft = self.beta1 * self.m_graft + (1 - self.beta1) * graft
    if self.preconditioned and self.step < self.start:
      m, u = self.m_graft, graft
    else:
      m, u = self.m, shampoo_update
    update = (1 - self.beta1) * u + self.beta1 * m if self.nesterov else m
    self.step += 1
    return w - self.lr * (update + self.weight_decay * w)


CASES = {
    # name: (shape, optimiser options); every case runs 5 steps: roots are
    # computed at steps 0 and 3 and reused in between, Shampoo's update
    # replaces the grafting one from step 2.
    'dense_2d': ((6, 5), {}),
    # One of its 4x4 statistics made optax's Newton stop after one step.
    'dense_2d_blocks_sgd_graft': ((10, 6), dict(block_size=4, graft_type='sgd')),
    'conv_4d_merged_dims': ((3, 3, 2, 4), dict(block_size=8)),
    'conv_4d_eigh_rmsprop': ((3, 3, 2, 4), dict(block_size=8, inverse_root='eigh',
                                                graft_type='rmsprop')),
    'bias_1d_falls_back_to_graft': ((7,), {}),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_agrees_with_a_numpy_reference_step_by_step(name):
  shape, options = CASES[name]
  options = dict(dict(block_size=128, graft_type='adam', inverse_root='newton'),
                 **options)
  rng = np.random.RandomState(0)
  initial = rng.randn(*shape).astype(np.float32)
  grads = [rng.randn(*shape).astype(np.float32) * scale
           for scale in (1.0, 0.5, 2.0, 0.3, 1.5)]
  lr, wd = 0.05, 0.01
  optimizer = shampoo.Shampoo(learning_rate=lr, weight_decay_rate=wd,
                              start_preconditioning_step=2,
                              preconditioning_compute_steps=3, **options)
  var = tf.Variable(initial)
  reference = NumpyShampoo(shape, lr, options['block_size'],
                           graft=options['graft_type'], start=2, every=3,
                           weight_decay=wd)
  expected = initial.astype(np.float64)
  for step, grad in enumerate(grads):
    optimizer.apply_gradients([(tf.constant(grad), var)])
    expected = reference.update(expected, grad)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-3, atol=2e-4,
                               err_msg=f'step {step}')
  # float32 roots of nearly singular statistics: ~1e-4 from float64. The
  # weights moved far beyond that, so a wrong definition cannot pass.
  assert np.abs(expected - initial).max() > 0.05


def _spd(size, condition, rng):
  q, _ = np.linalg.qr(rng.randn(size, size))
  return (q * np.logspace(0, -np.log10(condition), size)) @ q.T


@pytest.mark.parametrize('method', ['newton', 'eigh'])
@pytest.mark.parametrize('p', [2, 6])
@pytest.mark.parametrize('condition', [10.0, 1e6])
def test_inverse_pth_root_matches_scipy(method, p, condition):
  rng = np.random.RandomState(p)
  matrix = _spd(24, condition, rng) * 3.0
  root, error = inverse_pth_root(tf.constant(matrix, tf.float32), p,
                                 ridge_epsilon=1e-6, method=method)
  damped = matrix + 1e-6 * np.linalg.eigvalsh(matrix).max() * np.eye(24)
  expected = np.real(scipy.linalg.fractional_matrix_power(damped, -1.0 / p))
  relative = np.linalg.norm(root.numpy() - expected) / np.linalg.norm(expected)
  # float32 rounding of the input alone (6e-8) moves the smallest eigenvalue
  # by ~condition x 6e-8 of itself: the bound grows with the condition.
  assert relative < 1e-8 * condition + 1e-5, relative
  assert float(error) < 0.1


def test_model_garden_builds_it_from_settings_with_float16_loss_scaling():
  gin.parse_config("""
      Optimizer.name = 'shampoo'
      Optimizer.learning_rate = 0.1
      Optimizer.weight_decay = 0.01
      Optimizer.weight_decay_on = ['kernel']
      Optimizer.shampoo = {'block_size': 4, 'graft_type': 'sgd'}""")
  optimizer = base_task.Task.create_optimizer(
      Optimizer().config(100), cfg.RuntimeConfig(mixed_precision_dtype='float16'))
  assert isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  inner = optimizer.inner_optimizer
  assert isinstance(inner, shampoo.Shampoo)
  assert (inner.block_size, inner.graft_type) == (4, 'sgd')
  kernel = tf.Variable(tf.ones([3, 3]), name='dense/kernel')
  bias = tf.Variable(tf.ones([3]), name='dense/bias')
  optimizer.apply_gradients([(tf.zeros_like(kernel), kernel),
                             (tf.zeros_like(bias), bias)])
  # Zero gradients: only the decay of the kernels moves anything (warmup
  # from 0: the first step's learning rate is 0, so take a second one).
  optimizer.apply_gradients([(tf.zeros_like(kernel), kernel),
                             (tf.zeros_like(bias), bias)])
  assert float(kernel[0, 0]) < 1.0
  np.testing.assert_array_equal(bias.numpy(), 1.0)


@pytest.mark.parametrize('options,fragment', [
    ({'blocksize': 4}, "unknown option(s) ['blocksize']"),
    ({'graft_type': 'adagrad'}, "Optimizer.shampoo['graft_type'] = 'adagrad'"),
    ({'weight_decay_rate': 0.1}, 'Optimizer.weight_decay'),
])
def test_a_wrong_shampoo_option_is_named(options, fragment):
  gin.parse_config(f"""
      Optimizer.name = 'shampoo'
      Optimizer.learning_rate = 0.1
      Optimizer.shampoo = {options!r}""")
  with pytest.raises(UserError) as error:
    Optimizer()
  assert fragment in str(error.value)
