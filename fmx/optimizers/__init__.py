"""Optimisers Model Garden does not ship, registered with its factory.

Importing `fmx.optimizers.shampoo` makes `Optimizer.name = 'shampoo'` buildable
by Model Garden's `OptimizerFactory`, so its schedules, warmup and float16 loss
scaling drive it like any built-in optimiser.
"""
