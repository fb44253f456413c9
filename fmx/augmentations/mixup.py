"""Batch MixUp: every image is blended with a partner image of the same batch.

All variants use one coefficient `a` per batch and return `a * x + (1 - a) *
x[partner]`. They differ in who the partner is, which decides how many
*distinct* image pairs a batch of n holds:

- `mixup_roll`:    partner of i is i-1 (cyclic): n distinct pairs. The fix.
- `mixup_reverse`: partner of i is n-1-i: i and n-1-i mix with each other, so
  an even batch holds only n/2 distinct pairs, each twice (mirrored). The
  original implementation's pairing, kept to reproduce its numbers.

The coefficient is `uniform` on [0, 1] (the original implementation) or
`beta` with parameter p, folded to max(a, 1 - a) (the official one).
Labels are never mixed: distillation does not use them.
"""

import tensorflow as tf

from fmx.errors import UserError
from fmx.registry import AUGMENTATIONS

_FRAMEWORK_ARGS = ('images', 'seed')


def mixup_coefficient(seed, coefficient: str = 'uniform', p: float = 1.0):
  """One mixing coefficient for a batch, as a float32 scalar."""
  if coefficient == 'uniform':
    return tf.random.stateless_uniform([], seed)
  if coefficient == 'beta':
    # Beta(p, p) as G1 / (G1 + G2) with G ~ Gamma(p): stateless and exact.
    gammas = tf.random.stateless_gamma([2], seed, alpha=p)
    a = gammas[0] / (gammas[0] + gammas[1])
    return tf.maximum(a, 1.0 - a)
  raise UserError(f"unknown MixUp coefficient {coefficient!r}; use 'uniform' "
                  "or 'beta' (with p).")


def _blend(images, partner_index, seed, coefficient, p):
  a = mixup_coefficient(seed, coefficient, p)
  mixed = a * images + (1.0 - a) * tf.gather(images, partner_index)
  return mixed, a


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def mixup_roll(images, seed, coefficient: str = 'uniform', p: float = 1.0):
  """MixUp with partner i-1 (roll by one): n distinct pairs in a batch of n."""
  n = tf.shape(images)[0]
  return _blend(images, tf.math.floormod(tf.range(n) - 1, n), seed,
                coefficient, p)


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def mixup_reverse(images, seed, coefficient: str = 'uniform', p: float = 1.0):
  """MixUp with partner n-1-i (original, flawed): n/2 distinct pairs of n."""
  n = tf.shape(images)[0]
  return _blend(images, tf.range(n - 1, -1, -1), seed, coefficient, p)


MIXUPS = ('mixup_roll', 'mixup_reverse')
