"""Inverse p-th roots of symmetric positive semi-definite matrices, in float32.

Shampoo preconditions with (L + eps I)^(-1/p). Two ways to compute it, both
inside a TF graph (no host round trip), with the ridge eps relative to the
largest eigenvalue as in Anil et al. 2020's distributed Shampoo:
- 'newton': the coupled Newton iteration (Higham, "Functions of Matrices",
  eq. 7.18), only matrix products: what accelerators do fastest;
- 'eigh': an eigendecomposition, exact up to float32 rounding; slower on
  accelerators, often faster on a CPU for small matrices.
"""

import numpy as np
import tensorflow as tf

ROOT_METHODS = ('newton', 'eigh')

# Near convergence, float32 rounding makes the error rise again: a rise
# beyond this ratio ends the iteration and the previous iterate is kept.
# optax applies this test from the first step, but the first steps may
# raise the max-entry error legitimately (1.33x on a 4x4 statistic of
# condition 70, whose root then failed): fmx tests it only once the error
# is below _GUARDED_ERROR, and a run that never gets there ends with a large
# error, which Shampoo rejects.
_MAX_ERROR_RATIO = 1.2
_GUARDED_ERROR = 1e-2


def largest_eigenvalue(matrix: tf.Tensor, num_iters: int = 100,
                       tolerance: float = 1e-6) -> tf.Tensor:
  """The largest eigenvalue of a symmetric PSD matrix, by power iteration."""
  size = matrix.shape[-1]
  # A fixed start vector: every replica computes exactly the same value.
  start = np.random.RandomState(1729).uniform(-1.0, 1.0, size).astype(np.float32)

  def keep_going(i, unused_v, unused_value, change):
    return tf.logical_and(i < num_iters, change > tolerance)

  def step(i, v, value, unused_change):
    v = v / tf.norm(v)
    product = tf.linalg.matvec(matrix, v)
    new_value = tf.tensordot(v, product, 1)
    return i + 1, product, new_value, tf.abs(new_value - value)

  _, _, value, _ = tf.while_loop(
      keep_going, step, (tf.constant(0), tf.constant(start), tf.constant(0.0),
                         tf.constant(np.inf, tf.float32)))
  return value


def _matrix_power(matrix: tf.Tensor, p: int) -> tf.Tensor:
  """matrix^p for a positive integer p, by repeated squaring."""
  result, base = None, matrix
  while p:
    if p & 1:
      result = base if result is None else tf.matmul(result, base)
    p >>= 1
    if p:
      base = tf.matmul(base, base)
  return result


def inverse_pth_root(matrix, p: int, ridge_epsilon: float = 1e-6,
                     method: str = 'newton', num_iters: int = 100,
                     error_tolerance: float = 1e-6):
  """(matrix + ridge_epsilon * max(lambda_max, 1e-6) * I)^(-1/p), and its error.

  `matrix` is symmetric PSD (cast to float32), `p` a positive integer. The
  error is max |M - I| of the Newton iteration's residual M (0 for 'eigh');
  Shampoo keeps its previous preconditioner when it is large or NaN.
  """
  if method not in ROOT_METHODS:
    raise ValueError(f'method = {method!r}; use one of {ROOT_METHODS}.')
  matrix = tf.cast(matrix, tf.float32)
  size = matrix.shape[-1]
  identity = tf.eye(size, dtype=tf.float32)
  if method == 'eigh':
    eigenvalues, eigenvectors = tf.linalg.eigh(matrix)
    ridge = ridge_epsilon * tf.maximum(tf.reduce_max(eigenvalues), 1e-6)
    # Rounding leaves tiny negative eigenvalues on singular statistics.
    powers = tf.pow(tf.maximum(eigenvalues, 0.0) + ridge, -1.0 / p)
    root = tf.matmul(eigenvectors * powers, eigenvectors, transpose_b=True)
    return root, tf.constant(0.0)

  ridge = ridge_epsilon * tf.maximum(largest_eigenvalue(matrix), 1e-6)
  damped = matrix + ridge * identity
  if size == 1:
    return tf.pow(damped, -1.0 / p), tf.constant(0.0)
  alpha = -1.0 / p
  # Scaled so that the spectrum of M0 lies in (0, (p + 1) / 2]: the
  # iteration converges from there (Higham, Theorem 7.12).
  z = (1.0 + p) / (2.0 * tf.norm(damped))
  m0 = damped * z
  h0 = identity * tf.pow(z, 1.0 / p)
  error0 = tf.reduce_max(tf.abs(m0 - identity))

  def keep_going(i, unused_m, unused_h, unused_old_h, error, ratio):
    return tf.logical_and(i < num_iters, tf.logical_and(
        error > error_tolerance, ratio < _MAX_ERROR_RATIO))

  def step(i, m, h, unused_old_h, error, unused_ratio):
    m_i = (1.0 - alpha) * identity + alpha * m
    new_m = tf.matmul(_matrix_power(m_i, p), m)
    new_h = tf.matmul(h, m_i)
    new_error = tf.reduce_max(tf.abs(new_m - identity))
    ratio = tf.where(error < _GUARDED_ERROR, new_error / error, 1.0)
    return i + 1, new_m, new_h, h, new_error, ratio

  _, m, h, old_h, _, ratio = tf.while_loop(
      keep_going, step, (tf.constant(0), m0, h0, h0, error0, tf.constant(1.0)))
  root = tf.where(ratio < _MAX_ERROR_RATIO, h, old_h)
  return root, tf.reduce_max(tf.abs(m - identity))
