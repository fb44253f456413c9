"""Keras Tuner oracles, kept in ROOT/oracle and written so a kill loses nothing.

Keras Tuner's `Tuner` refuses tf_keras models (keras-tuner issue #1039), but
its oracles need no model: fmx asks one for trials (`create_trial`) and
reports each trial's objective (`update_trial`, `end_trial`). The oracle's
state is ROOT/oracle/oracle.json plus ROOT/oracle/trial_<id>/trial.json per
trial, Keras Tuner's own layout; `reload` brings back a search, and puts the
trials that were running when it stopped first in line again.
"""

import inspect
import json
import os
from typing import Any, Dict, Optional

from fmx.errors import UserError
from fmx.training.run_dir import write_text

_CLASSES = {'random': 'RandomSearchOracle',
            'bayesian': 'BayesianOptimizationOracle',
            'hyperband': 'HyperbandOracle',
            'grid': 'GridSearchOracle'}
PROJECT = 'oracle'  # ROOT/oracle


class _AtomicSaves:
  """Keras Tuner writes its JSON in place; a kill mid-write would leave a
  file that no rerun can reload. These write a temporary file and rename it.
  """

  def save(self):
    write_text(self._get_oracle_fname(), json.dumps(self.get_state()))

  def _save_trial(self, trial):
    write_text(os.path.join(self._get_trial_dir(trial.trial_id), 'trial.json'),
               json.dumps(trial.get_state()))


def build(name: str, objective: str, direction: str, dimensions,
          max_trials: Optional[int], options: Dict[str, Any], seed: int,
          root: str):
  """The oracle searching `dimensions`, reloaded from ROOT/oracle if there."""
  import keras_tuner  # pylint: disable=g-import-not-at-top
  base = getattr(keras_tuner.oracles, _CLASSES[name])
  accepted = set(inspect.signature(base.__init__).parameters) - {
      'self', 'objective', 'hyperparameters', 'allow_new_entries',
      'tune_new_entries', 'seed', 'max_trials'}
  unknown = sorted(set(options) - accepted)
  if unknown:
    raise UserError(f'Tune.oracle_options has {", ".join(map(repr, unknown))}, '
                    f'which the {name} oracle ({base.__name__}) does not take; '
                    f'its options are {", ".join(sorted(accepted))}.')
  hyperparameters = keras_tuner.HyperParameters()
  for dimension in dimensions:
    try:
      dimension.add_to(hyperparameters)
    except (ValueError, TypeError) as e:
      raise UserError(f'Tune.space[{dimension.key!r}] cannot be searched: '
                      f'{e}') from None
  oracle_class = type(f'Fmx{base.__name__}', (_AtomicSaves, base), {})
  kwargs = dict(objective=keras_tuner.Objective(objective, direction),
                hyperparameters=hyperparameters, allow_new_entries=False,
                tune_new_entries=False, seed=seed,
                # fmx reports failed trials and goes on; a broken base
                # config fails every trial within seconds of its start.
                max_consecutive_failed_trials=None, **options)
  try:
    oracle = oracle_class(**kwargs)
  except (ValueError, TypeError) as e:
    raise UserError(f'the {name} oracle cannot be built with Tune.oracle_options '
                    f'{options}: {e}') from None
  if max_trials is not None:
    # Set, not passed: hyperband takes no max_trials argument, and None
    # would replace the others' defaults (10) by 'no limit'.
    oracle.max_trials = max_trials
  oracle.verbose = 0  # fmx prints its own lines
  oracle._set_project_dir(root, PROJECT)  # pylint: disable=protected-access
  if os.path.exists(os.path.join(root, PROJECT, 'oracle.json')):
    oracle.reload()
  return oracle
