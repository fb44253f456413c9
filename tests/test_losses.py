"""Losses against scipy/numpy references, including extreme logits."""

import numpy as np
import pytest
from scipy import special

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
