"""Hyperparameter search over fmx runs with Keras Tuner's oracles (`fmx tune`).

    result = fmx.tuning.tune(['experiments/tune_demo_teacher.gin'], 'runs/tune')
    result.best.values, result.best_bindings

See fmx.tuning.search for the layout of a search's folder and
fmx.tuning.space for the `Tune.space` syntax.
"""

from fmx.tuning import space  # noqa: F401  (the Tune gin configurable)

_SEARCH_NAMES = ('tune', 'TuneResult', 'Trial', 'format_result')


def __getattr__(name):
  # Imported on first use: gin loads fmx.tuning.space (the Tune configurable)
  # before parsing any file, and must not pull in the search (and Keras
  # Tuner) with it.
  if name in _SEARCH_NAMES:
    from fmx.tuning import search  # pylint: disable=g-import-not-at-top
    return getattr(search, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
