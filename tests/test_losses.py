"""Losses against scipy/numpy references, including extreme logits."""

import numpy as np
import pytest
from scipy import special, stats

from fmx.registry import LOSSES

DISTILLATION_LOSSES = [n for n in LOSSES.names()
                       if not getattr(LOSSES.get(n), 'takes_labels', False)]
SUPERVISED_LOSSES = [n for n in LOSSES.names() if n not in DISTILLATION_LOSSES]


def _logits(scale=3.0, shape=(16, 10), seed=0):
  return (np.random.RandomState(seed).randn(*shape) * scale).astype(np.float32)


@pytest.mark.parametrize('temperature', [1.0, 2.0, 10.0])
@pytest.mark.parametrize('scaled', [False, True])
def test_kl_matches_scipy(temperature, scaled):
  teacher, student = _logits(seed=0), _logits(seed=1)
  p = special.softmax(teacher.astype(np.float64) / temperature, axis=-1)
  q = special.softmax(student.astype(np.float64) / temperature, axis=-1)
  expected = special.rel_entr(p, q).sum(-1) * (temperature ** 2 if scaled else 1)
  got = LOSSES.get('kl')(teacher, student, temperature=temperature,
                         scale_by_temperature_squared=scaled).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def _softmax(logits, temperature=1.0):
  return special.softmax(logits.astype(np.float64) / temperature, axis=-1)


def _log_softmax(logits, temperature=1.0):
  return special.log_softmax(logits.astype(np.float64) / temperature, axis=-1)


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_soft_cross_entropy_matches_scipy_entropy_plus_kl(temperature):
  teacher, student = _logits(seed=2), _logits(seed=3)
  p, q = _softmax(teacher, temperature), _softmax(student, temperature)
  # H(p, q) = H(p) + KL(p || q), computed by scipy independently.
  expected = stats.entropy(p, axis=-1) + stats.entropy(p, q, axis=-1)
  got = LOSSES.get('soft_cross_entropy')(teacher, student,
                                         temperature=temperature).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_hard_is_cross_entropy_on_teacher_argmax(smoothing):
  teacher, student = _logits(seed=4), _logits(seed=5)
  # big_vision's smoothing: 1 - ls on the target, ls / (K - 1) on the others.
  one_hot = np.eye(10)[teacher.argmax(-1)]
  targets = np.where(one_hot == 1, 1 - smoothing, smoothing / 9)
  np.testing.assert_allclose(targets.sum(-1), 1.0)
  expected = -(targets * _log_softmax(student)).sum(-1)
  got = LOSSES.get('hard')(teacher, student, label_smoothing=smoothing).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_mse_losses_match_numpy():
  teacher, student = _logits(seed=6), _logits(seed=7)
  np.testing.assert_allclose(LOSSES.get('mse_logits')(teacher, student).numpy(),
                             ((student - teacher) ** 2).mean(-1), rtol=1e-5)
  np.testing.assert_allclose(
      LOSSES.get('mse_log_softmax')(teacher, student).numpy(),
      ((_log_softmax(student) - _log_softmax(teacher)) ** 2).mean(-1), rtol=1e-4)


@pytest.mark.parametrize('name', DISTILLATION_LOSSES)
def test_distillation_loss_is_minimal_when_student_matches_teacher(name):
  if name == 'hard':
    pytest.skip('hard targets reward a student sharper than the teacher')
  teacher, other = _logits(seed=8), _logits(seed=9)
  loss = LOSSES.get(name)
  assert np.all(loss(teacher, teacher).numpy() <= loss(teacher, other).numpy() + 1e-6)


def test_kl_is_zero_for_identical_outputs():
  logits = _logits()
  np.testing.assert_allclose(LOSSES.get('kl')(logits, logits).numpy(), 0, atol=1e-6)


def test_cross_entropy_matches_numpy():
  logits = _logits(seed=3)
  labels = np.random.RandomState(4).randint(0, 10, size=16)
  expected = -special.log_softmax(logits.astype(np.float64), -1)[np.arange(16), labels]
  got = LOSSES.get('cross_entropy')(labels, logits).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize('name', DISTILLATION_LOSSES)
def test_distillation_losses_finite_on_extreme_logits(name):
  teacher, student = _logits(scale=1e4, seed=5), _logits(scale=1e4, seed=6)
  value = LOSSES.get(name)(teacher, student).numpy()
  assert value.shape == (16,) and np.all(np.isfinite(value)) and np.all(value >= 0)


@pytest.mark.parametrize('name', SUPERVISED_LOSSES)
def test_supervised_losses_finite_on_extreme_logits(name):
  logits = _logits(scale=1e4, seed=7)
  value = LOSSES.get(name)(np.zeros(16, np.int64), logits).numpy()
  assert value.shape == (16,) and np.all(np.isfinite(value))
