"""The search of `fmx tune`, declared in gin: `Tune.space` and its options.

    Tune.space = {
        # a list: one of these values
        'Optimizer.learning_rate': [3e-3, 1e-4, 1e-5, 5e-5],
        # ('float', low, high): uniform in [low, high]; 'log': log-uniform
        'losses.kl.temperature': ('float', 1.0, 10.0, 'log'),
        # ('int', low, high[, step]): whole numbers, both ends included
        'Training.evals': ('int', 2, 8, 2),
    }

Each key is a gin parameter named exactly as a binding would name it; a
trial binds `KEY = value` after the gin files. A range may add a sampling
('linear', 'log' or 'reverse_log') and a step, in any order after its
bounds: ('float', 0.0, 0.5, 0.1) is 0, 0.1, ..., 0.5; on a log range the
step multiplies: ('float', 1e-4, 1e-2, 'log', 10) is 1e-4, 1e-3, 1e-2. The
grid oracle needs a step on every range. Choices that are not all numbers or all
strings (None, tuples, booleans) are offered by their gin text.

The dimensions become Keras Tuner hyperparameters (Choice, Float, Int), the
search space its oracles sample, and TensorBoard HParams domains.
"""

import ast
import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import gin

from fmx.errors import UserError

SAMPLINGS = ('linear', 'log', 'reverse_log')
ORACLES = ('random', 'bayesian', 'hyperband', 'grid')
_SYNTAX = ("use a list of values, ('float', low, high[, 'log']) or "
           "('int', low, high[, step]); see docs/tune.md")


@gin.configurable
class Tune:
  """What `fmx tune` searches; the command line's options win over these.

  `objective`: 'auto' (the task's main metric: validation/top1 for a
  teacher, validation/student_top1 for a student) or 'validation/<metric>'.
  `max_trials`: None takes Keras Tuner's default (10 for random and
  bayesian; hyperband and grid end by themselves). `oracle_options`: further
  keyword arguments of the Keras Tuner oracle, e.g. {'factor': 3,
  'max_epochs': 27} for hyperband (whose max_epochs defaults to the base
  config's Training.epochs) or {'num_initial_points': 3} for bayesian.
  `seed` seeds the oracle (Keras Tuner takes 0 for 'no seed').

  Args:
    space: gin key -> a list of choices, ('float', low, high[, 'log']) or
      ('int', low, high[, step]); see this module's docstring.
    oracle: 'random', 'bayesian', 'hyperband' or 'grid'.
    max_trials: trials to run; None: the oracle's default.
    executions_per_trial: runs (seeds) per trial, whose objectives are averaged.
    objective: 'auto' or 'validation/<metric>', maximised.
    oracle_options: further keyword arguments of the Keras Tuner oracle.
    seed: the oracle's seed.
  """

  def __init__(self, space: Optional[Dict[str, Any]] = None,
               oracle: str = 'random', max_trials: Optional[int] = None,
               executions_per_trial: int = 1, objective: str = 'auto',
               oracle_options: Optional[Dict[str, Any]] = None, seed: int = 1):
    self.space = dict(space or {})
    self.oracle, self.max_trials = oracle, max_trials
    self.executions_per_trial, self.objective = executions_per_trial, objective
    self.oracle_options = dict(oracle_options or {})
    self.seed = seed


@dataclasses.dataclass(frozen=True)
class Dimension:
  """One gin key of the space and the values it may take."""
  key: str
  kind: str  # 'choice', 'float' or 'int'
  values: tuple = ()  # a choice's values (gin texts when `as_text`)
  as_text: bool = False
  low: Any = None
  high: Any = None
  step: Any = None
  sampling: str = 'linear'

  def add_to(self, hyperparameters) -> None:
    """Registers this dimension on a keras_tuner.HyperParameters."""
    if self.kind == 'choice':
      hyperparameters.Choice(self.key, list(self.values), ordered=False)
    elif self.kind == 'float':
      hyperparameters.Float(self.key, self.low, self.high, step=self.step,
                            sampling=self.sampling)
    else:
      hyperparameters.Int(self.key, self.low, self.high, step=self.step,
                          sampling=self.sampling)

  def value(self, sampled) -> Any:
    """The Python value of a sampled value (the gin text parsed back)."""
    if self.as_text:
      return ast.literal_eval(sampled)
    if self.kind == 'float':
      return float(sampled)  # numpy floats print as np.float64(...)
    if self.kind == 'int':
      return int(sampled)
    return sampled

  def binding(self, sampled) -> str:
    return f'{self.key} = {sampled if self.as_text else repr(self.value(sampled))}'

  def example(self):
    """A value of this dimension (its first choice, or its low end)."""
    return self.values[0] if self.kind == 'choice' else self.low

  def hparams_domain(self):
    from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
    if self.kind == 'choice':
      return hp.Discrete(list(self.values))
    if self.kind == 'float':
      return hp.RealInterval(float(self.low), float(self.high))
    return hp.IntInterval(int(self.low), int(self.high))


def parse_space(space: Dict[str, Any]) -> List[Dimension]:
  """`Tune.space` -> Dimensions; a UserError naming the entry that is wrong."""
  if not space:
    raise UserError('Tune.space is empty: declare what to search in the gin '
                    "file, e.g. Tune.space = {'Optimizer.learning_rate': "
                    "('float', 1e-4, 1e-2, 'log')}; see docs/tune.md.")
  return [_dimension(key, spec) for key, spec in space.items()]


def _dimension(key: str, spec) -> Dimension:
  where = f'Tune.space[{key!r}] = {spec!r}'
  if not isinstance(key, str):
    raise UserError(f'{where}: keys are gin parameters as strings, e.g. '
                    "'Optimizer.learning_rate'.")
  if isinstance(spec, list) or (isinstance(spec, tuple) and spec[:1] == ('choice',)):
    values = spec if isinstance(spec, list) else (spec[1] if len(spec) == 2 else None)
    if not isinstance(values, (list, tuple)) or not values:
      raise UserError(f'{where}: a choice needs at least one value; {_SYNTAX}.')
    return _choice(key, list(values))
  if not (isinstance(spec, tuple) and len(spec) >= 3 and spec[0] in ('float', 'int')):
    raise UserError(f'{where} is not a search dimension: {_SYNTAX}.')
  kind, low, high, options = spec[0], spec[1], spec[2], spec[3:]
  number = int if kind == 'int' else (int, float)
  if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
    raise UserError(f'{where}: the bounds of a {kind!r} range must be '
                    f'{"whole numbers" if kind == "int" else "numbers"}.')
  if low >= high:
    raise UserError(f'{where}: the low bound must be below the high bound.')
  sampling, step = 'linear', None
  for option in options:
    if option in SAMPLINGS:
      sampling = option
    elif isinstance(option, number) and not isinstance(option, bool) and option > 0:
      step = option
    else:
      raise UserError(f'{where}: {option!r} is neither a sampling '
                      f'({", ".join(SAMPLINGS)}) nor a positive step.')
  if sampling != 'linear' and low <= 0:
    raise UserError(
        f"{where}: a {sampling!r} range needs bounds above 0, and {low!r} is "
        f'not (the logarithm of {low!r} does not exist). Use a small positive '
        f"low bound, e.g. ('{kind}', {1e-5 if kind == 'float' else 1}, "
        f"{high!r}, '{sampling}'), or 'linear' sampling to include {low!r}.")
  if step is not None and sampling != 'linear' and step <= 1:
    raise UserError(f'{where}: on a {sampling!r} range the step multiplies '
                    f'(1e-4, 1e-3, 1e-2 is step 10), so it must be above 1; '
                    f'{step!r} is not.')
  return Dimension(key, kind, low=low, high=high, step=step, sampling=sampling)


def _choice(key: str, values: list) -> Dimension:
  def plain(kind):
    return all(isinstance(v, kind) and not isinstance(v, bool) for v in values)
  if plain(str) or plain(int):
    return Dimension(key, 'choice', tuple(values))
  if plain((int, float)):
    # Keras Tuner's choices hold one type: 1 and 2.5 are both floats.
    return Dimension(key, 'choice', tuple(float(v) for v in values))
  return Dimension(key, 'choice', tuple(repr(v) for v in values), as_text=True)


def describe(dimensions: Sequence[Dimension]) -> Dict[str, str]:
  """key -> a description that changes when the dimension does (tune.json)."""
  return {d.key: repr(dataclasses.astuple(d)[1:]) for d in dimensions}
