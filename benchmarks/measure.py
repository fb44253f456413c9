"""Measuring tools shared by the benchmarks: clocks, memory, FLOPs, the machine.

Every figure the benchmarks print comes from here, so each is defined once:

- `time_rounds` times interleaved rounds of several step functions, so load
  from other processes (2 cores, shared) falls on all of them alike;
- `peak_rss_mb` is the process's high-water mark of resident memory
  (VmHWM), which `reset_peak_rss` restarts;
- `forward_flops` counts a tf_keras model's forward FLOPs analytically
  (convolutions and dense layers, one multiply-add = 2 FLOPs);
- `matmul_function` is the yardstick for "achieved FLOP/s": float32
  matmuls, timed in the same rounds as the step they are compared with.
"""

import os
import platform
import statistics
import time
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras


def wait(value) -> None:
  """Blocks until `value` (any nest of tensors) is computed."""
  for tensor in tf.nest.flatten(value):
    if isinstance(tensor, tf.Tensor):
      tensor.numpy()


def time_rounds(functions: Dict[str, Callable[[], object]], rounds: int,
                calls: int) -> Dict[str, dict]:
  """Seconds per call of each function over interleaved rounds: mean and best.

  Every function is called once first (tracing, warm-up), untimed. Then each
  round calls every function `calls` times in turn, so over all rounds the
  functions share the same mix of load from other processes: their means
  compare fairly even when the load changes during the run.
  """
  for function in functions.values():
    wait(function())
  seconds = {name: [] for name in functions}
  for _ in range(rounds):
    for name, function in functions.items():
      start = time.perf_counter()
      for _ in range(calls):
        result = function()
      wait(result)
      seconds[name].append((time.perf_counter() - start) / calls)
  return {name: {'seconds_per_call': statistics.mean(values),
                 'best_seconds_per_call': min(values),
                 'rounds': [round(v, 4) for v in values]}
          for name, values in seconds.items()}


def reset_peak_rss() -> None:
  """Restarts the VmHWM high-water mark (Linux); a no-op elsewhere."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
  except OSError:
    pass


def peak_rss_mb() -> Optional[float]:
  """The process's peak resident memory since start or the last reset, in MB."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def accelerator_peak_mb() -> Optional[float]:
  """Peak memory TensorFlow allocated on GPU:0, where TF tracks it (not CPUs)."""
  if not tf.config.list_physical_devices('GPU'):
    return None
  return tf.config.experimental.get_memory_info('GPU:0')['peak'] / 2**20


def _layers(model: tf_keras.Model):
  for layer in model.layers:
    if isinstance(layer, tf_keras.Model):
      yield from _layers(layer)  # e.g. an applications model wrapped in another
    else:
      yield layer


def forward_flops(model: tf_keras.Model) -> int:
  """FLOPs of one image through `model`: convolutions and dense layers only.

  Counted from the layers' static shapes: 2 x output elements x (kernel
  height x width x input channels per group) for convolutions, 2 x inputs x
  outputs for dense layers. Normalisations, activations and pooling are a
  few percent at most and are left out, as in the usual GMAC tables.
  """
  total = 0
  for layer in _layers(model):
    if isinstance(layer, tf_keras.layers.DepthwiseConv2D):
      height, width, _, multiplier = layer.depthwise_kernel.shape
      outputs = np.prod(layer.output_shape[1:])
      total += 2 * outputs * height * width
    elif isinstance(layer, tf_keras.layers.Conv2D):
      height, width, inputs_per_group, _ = layer.kernel.shape
      outputs = np.prod(layer.output_shape[1:])
      total += 2 * outputs * height * width * inputs_per_group
    elif isinstance(layer, tf_keras.layers.Dense):
      inputs, units = layer.kernel.shape
      total += 2 * inputs * units
  return int(total)


def distillation_step_flops(teacher: tf_keras.Model,
                            student: tf_keras.Model) -> int:
  """FLOPs of one image through a distillation step.

  Teacher forward + student forward and backward, the backward counted as
  twice the forward (gradients for inputs and for weights), the usual
  convention (and the one behind the paper's "teacher ~80% of the compute").
  """
  return forward_flops(teacher) + 3 * forward_flops(student)


def matmul_function(size: int = 2048, seconds: float = 0.5):
  """(function, FLOPs per call): float32 matmuls of `size`^2, ~`seconds` a call.

  The yardstick for achieved FLOP/s: timed in the same rounds as the step it
  is compared with, so both run under the same load.
  """
  a = tf.random.uniform((size, size))
  b = tf.random.uniform((size, size))

  @tf.function
  def products(count):
    # Each product depends on the last, so none can be skipped or reordered.
    return tf.foldl(lambda x, _: tf.linalg.matmul(x, b) * (1.0 / size),
                    tf.range(count), initializer=a)

  wait(products(tf.constant(2)))
  start = time.perf_counter()
  wait(products(tf.constant(2)))
  count = max(1, int(seconds / ((time.perf_counter() - start) / 2)))
  count_tensor = tf.constant(count)
  return (lambda: products(count_tensor)), 2 * size ** 3 * count


def machine() -> dict:
  """What the figures were measured on."""
  cpu = platform.processor() or platform.machine()
  flags = []
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name') and cpu in ('', platform.machine()):
          cpu = line.split(':', 1)[1].strip()
        if line.startswith('flags') and not flags:
          flags = [flag for flag in line.split(':', 1)[1].split()
                   if flag.startswith(('avx', 'fma', 'amx'))]
  except OSError:
    pass
  memory_gb = None
  try:
    memory_gb = round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
                      / 2**30, 1)
  except (ValueError, OSError, AttributeError):
    pass
  return {'cpu': cpu, 'cpu_flags': flags, 'cores': os.cpu_count(),
          'memory_gb': memory_gb,
          'gpus': [d.name for d in tf.config.list_physical_devices('GPU')],
          'tensorflow': tf.__version__, 'tf_keras': tf_keras.__version__,
          'python': platform.python_version(),
          'load_average': [round(x, 2) for x in os.getloadavg()]}


def write_results(path: str, workload, machine_facts: dict, start: float,
                  **figures) -> None:
  """Writes a benchmark's JSON (workload, machine, figures, time) and says so."""
  import json  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump({'workload': workload.__dict__, 'machine': machine_facts,
               **figures, 'total_seconds': time.perf_counter() - start,
               'date': time.strftime('%Y-%m-%d %H:%M:%S')},
              f, indent=2, sort_keys=True, default=str)
  print(f'\n{time.perf_counter() - start:.0f} s in all; wrote {path}')
