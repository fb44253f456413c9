"""fmx: knowledge distillation by function matching on TF Model Garden + Orbit.

Data flow: gin files -> registries (datasets, backbones, augmentations,
losses, tasks) -> Model Garden Task -> Orbit loop -> checkpoints, TensorBoard,
results.json.

From Python (fmx.api): fmx.run, fmx.load_run, fmx.run_grid, fmx.tune,
fmx.inspect_batch. They load on first use, so `import fmx` (and the `fmx`
command's start) stays free of TensorFlow.
"""

__version__ = '0.1.0'

API = ('run', 'load_run', 'Run', 'run_grid', 'tune', 'inspect_batch')


def __getattr__(name):
  if name in API:
    from fmx import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(API))
