"""fmx: knowledge distillation by function matching on TF Model Garden + Orbit.

Data flow: gin files -> registries (datasets, backbones, augmentations,
losses, tasks) -> Model Garden Task -> Orbit loop -> checkpoints, TensorBoard,
results.json.
"""

__version__ = '0.1.0'
