"""Batch MixUp: every image is blended with a partner image of the same batch.

All variants use one coefficient `a` per batch and return `a * x + (1 - a) *
x[partner]`. They differ in who the partner is, which decides how many
*distinct* image pairs (unordered, of two different images) a batch of n
holds:

- `mixup_roll`:    partner of i is i-1 (cyclic): n distinct pairs. The fix.
- `mixup_reverse`: partner of i is n-1-i: i and n-1-i mix with each other, so
  an even batch holds only n/2 distinct pairs, each twice (mirrored). The
  original implementation's pairing, kept to reproduce its numbers.
- `mixup_permute`: partner of i is pi(i) for a random permutation pi drawn
  from the batch seed: n distinct pairs minus one per fixed point (an image
  left unmixed) and per 2-cycle (a mirrored pair); n - 1.5 on average.

The coefficient is `uniform` on [0, 1] (the original implementation) or
`beta` with parameter p, folded to max(a, 1 - a) (the official one).
Labels are never mixed: distillation does not use them.

Scope: fmx.data.pipeline applies MixUp in tf.data to the batch of one input
pipeline, i.e. the per-replica batch (`Data.mixup_scope = 'replica'`, default),
as the original implementation did on each of its 8 TPU replicas: partners
are always images of the same replica, and the counts above are per replica.
With `Data.mixup_scope = 'global'` the distillation step mixes the gathered
global batch instead (fmx.tasks.distillation), and the counts are global.
In both scopes the seed is the step's (Data.mixup_seed), so all replicas mix
with the same coefficient (and permutation pattern): one per global batch, as
the original drew it, and one per step, as big_vision's replicated RNG does.
"""

import numpy as np
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


def roll_partners(n, seed):
  """i -> i-1 (cyclic)."""
  del seed
  return tf.math.floormod(tf.range(n) - 1, n)


def reverse_partners(n, seed):
  """i -> n-1-i."""
  del seed
  return tf.range(n - 1, -1, -1)


def permute_partners(n, seed):
  """i -> pi(i), pi a uniformly random permutation drawn from `seed`."""
  # Its own stream: the coefficient draws from `seed` itself.
  keys = tf.random.stateless_uniform(
      [n], tf.random.experimental.stateless_fold_in(seed, 1))
  return tf.argsort(keys, stable=True)


def _blend(images, partner_index, seed, coefficient, p):
  a = mixup_coefficient(seed, coefficient, p)
  mixed = a * images + (1.0 - a) * tf.gather(images, partner_index)
  return mixed, a


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def mixup_roll(images, seed, coefficient: str = 'uniform', p: float = 1.0):
  """MixUp with partner i-1 (roll by one): n distinct pairs in a batch of n.

  Args:
    coefficient: 'uniform' (a ~ U(0, 1), the original's) or 'beta' (Beta(p, p), folded to a >= 1/2).
    p: the Beta distribution's parameter, with coefficient 'beta'.
  """
  return _blend(images, roll_partners(tf.shape(images)[0], seed), seed,
                coefficient, p)


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def mixup_reverse(images, seed, coefficient: str = 'uniform', p: float = 1.0):
  """MixUp with partner n-1-i (original, flawed): n/2 distinct pairs of n.

  Args:
    coefficient: 'uniform' (a ~ U(0, 1), the original's) or 'beta' (Beta(p, p), folded to a >= 1/2).
    p: the Beta distribution's parameter, with coefficient 'beta'.
  """
  return _blend(images, reverse_partners(tf.shape(images)[0], seed), seed,
                coefficient, p)


@AUGMENTATIONS.register(denylist=_FRAMEWORK_ARGS)
def mixup_permute(images, seed, coefficient: str = 'uniform', p: float = 1.0):
  """MixUp with a random permutation partner: ~n - 1.5 distinct pairs of n.

  Args:
    coefficient: 'uniform' (a ~ U(0, 1), the original's) or 'beta' (Beta(p, p), folded to a >= 1/2).
    p: the Beta distribution's parameter, with coefficient 'beta'.
  """
  return _blend(images, permute_partners(tf.shape(images)[0], seed), seed,
                coefficient, p)


# Each variant's partner function, for inspection (fmx inspect-data).
PARTNERS = {'mixup_roll': roll_partners, 'mixup_reverse': reverse_partners,
            'mixup_permute': permute_partners}
MIXUPS = tuple(PARTNERS)


def distinct_pairs(partners) -> int:
  """Unordered pairs {i, partners[i]} of two different images."""
  return len({frozenset((i, int(j))) for i, j in enumerate(np.asarray(partners))
              if i != int(j)})
