"""Hyperparameter search over fmx runs with Keras Tuner's oracles (`fmx tune`).

    result = fmx.tuning.tune(['experiments/tune_demo_teacher.gin'], 'runs/tune')
    result.best.values, result.best_bindings

See fmx.tuning.search for the layout of a search's folder and
fmx.tuning.space for the `Tune.space` syntax.
"""

from fmx.tuning.search import Trial, TuneResult, format_result, tune  # noqa: F401
