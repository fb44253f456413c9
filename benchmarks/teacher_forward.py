"""Where a frozen teacher's forward pass spends its time, and what helps.

    python benchmarks/teacher_forward.py                        # ~2 minutes
    python benchmarks/teacher_forward.py --teacher mobilenetv3large
    python benchmarks/teacher_forward.py --image_size 128 --batch_size 32

Times, in interleaved rounds (benchmarks/measure.py), one batch through the
teacher of benchmarks/workload.py (BiT-R50x1 by default) in inference mode:

- as built: what a plain Keras model computes at every call, including
  BiT's weight standardisation of every kernel;
- under XLA (`jit_compile=True`, the forward pass alone);
- without GroupNorm and without weight standardisation: ablations with
  wrong outputs, to show what each costs;
- folded: weight standardisation computed once, if fmx has
  `bit_resnet.fold_weight_standardization` (what a frozen teacher can do);
- bfloat16 (on a CPU with bfloat16 arithmetic), after the above (so a BiT
  teacher is folded): cloned into bfloat16 layers, and its frozen graph
  rewritten by grappler (how fmx runs a teacher on CPUs).

Reports milliseconds per batch and CPU-milliseconds (steadier on a shared
machine), and each variant's arithmetic rate (the as-built forward's
floating-point operations, counted by TensorFlow's profiler, per second:
the same work for every variant, so ablations and folded ones, which skip
some, show as faster) beside the rate of one large matmul in float32 and in
bfloat16: how close a forward is to what this machine computes at best.
"""

import argparse
import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

import measure  # noqa: E402
import workload as workload_lib  # noqa: E402


def cpu_and_wall_rounds(functions, rounds: int) -> dict:
  """Like measure.time_rounds, with CPU time too (mean over rounds)."""
  for function in functions.values():
    measure.wait(function())
  totals = {name: [0.0, 0.0] for name in functions}
  for _ in range(rounds):
    for name, function in functions.items():
      wall, cpu = time.perf_counter(), time.process_time()
      measure.wait(function())
      totals[name][0] += time.perf_counter() - wall
      totals[name][1] += time.process_time() - cpu
  return {name: {'ms': 1000 * wall / rounds, 'cpu_ms': 1000 * cpu / rounds}
          for name, (wall, cpu) in totals.items()}


def forward_gflop(teacher: tf_keras.Model, images) -> float:
  """Billions of floating-point operations of one forward pass on `images`
  (a multiply-add is 2), counted by TensorFlow's profiler on the frozen graph."""
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top
  forward = tf.function(lambda x: teacher(x, training=False))
  frozen = convert_to_constants.convert_variables_to_constants_v2(
      forward.get_concrete_function(tf.TensorSpec(images.shape, images.dtype)))
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  return tf.compat.v1.profiler.profile(
      graph=frozen.graph, options=options).total_float_ops / 1e9


def matmul_gflops(dtype: tf.DType, size: int = 2048, calls: int = 20) -> float:
  """This machine's rate for a size x size matmul in `dtype`, GFLOP/s."""
  a = tf.cast(tf.random.uniform((size, size)), dtype)
  matmul = tf.function(lambda: tf.matmul(a, a))
  measure.wait(matmul())
  start = time.perf_counter()
  for _ in range(calls):
    result = matmul()
  measure.wait(result)
  return 2 * size ** 3 * calls / (time.perf_counter() - start) / 1e9


def _no_group_norm(self, inputs):
  del self
  return inputs


def _no_standardisation(self, inputs, kernel):
  return tf_keras.layers.Conv2D.convolution_op(self, inputs, kernel)


def variants(teacher: tf_keras.Model, images) -> dict:
  """name -> argument-less function, each traced with its own layer code."""
  from fmx.backbones import bit_resnet  # pylint: disable=g-import-not-at-top
  functions = {}

  def add(name, jit=False):
    function = tf.function(lambda: teacher(images, training=False),
                           jit_compile=jit)
    measure.wait(function())  # traced now, with the layer code of now
    functions[name] = function

  add('as built')
  add('as built, XLA', jit=True)
  is_bit = any(isinstance(m, bit_resnet.StandardizedConv2D)
               for m in teacher.submodules)
  if is_bit:
    add_bit_ablations(teacher, add)
  add_bfloat16(teacher, images, functions)
  return functions


def add_bfloat16(teacher: tf_keras.Model, images, functions: dict) -> None:
  """The two ways fmx runs a teacher in bfloat16 (distillation.teacher_precision):
  cloned into bfloat16 layers (TPUs, GPUs) and the frozen float32 graph
  rewritten by grappler's oneDNN pass (CPUs), where this CPU has bfloat16."""
  from fmx.tasks import teacher_precision  # pylint: disable=g-import-not-at-top
  if teacher_precision.resolve('auto', 'cpu') != 'bfloat16':
    return  # no bfloat16 arithmetic here: both would be emulated
  clone = teacher_precision.keras_teacher(teacher, 'bfloat16')
  graph = teacher_precision.graph_teacher(teacher, 'bfloat16', 'cpu')
  candidates = {'bfloat16, cloned layers': lambda: clone(images, training=False)}
  if graph is not None:
    candidates['bfloat16, graph rewrite (fmx on CPUs)'] = lambda: graph(images)
  for name, forward in candidates.items():
    function = tf.function(forward)
    measure.wait(function())
    functions[name] = function


def add_bit_ablations(teacher: tf_keras.Model, add) -> None:
  """BiT's GroupNorm and weight standardisation: without, and folded."""
  from fmx.backbones import bit_resnet  # pylint: disable=g-import-not-at-top
  norm_call = bit_resnet.GroupNormalization.call
  conv_op = bit_resnet.StandardizedConv2D.convolution_op
  try:
    bit_resnet.GroupNormalization.call = _no_group_norm
    add('ablation: no GroupNorm')
    bit_resnet.GroupNormalization.call = norm_call
    bit_resnet.StandardizedConv2D.convolution_op = _no_standardisation
    add('ablation: no weight standardisation')
  finally:
    bit_resnet.GroupNormalization.call = norm_call
    bit_resnet.StandardizedConv2D.convolution_op = conv_op
  fold = getattr(bit_resnet, 'fold_weight_standardization', None)
  if fold is not None:
    fold(teacher)
    add('folded')
    add('folded, XLA', jit=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--teacher', default=workload_lib.DEFAULT.teacher)
  parser.add_argument('--teacher_params', type=json.loads, default=None,
                      help='JSON, e.g. \'{"depth": 50, "width": 1}\'')
  parser.add_argument('--image_size', type=int,
                      default=workload_lib.DEFAULT.image_size)
  parser.add_argument('--batch_size', type=int,
                      default=workload_lib.DEFAULT.batch_size)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  params = args.teacher_params
  if params is None:
    params = (workload_lib.DEFAULT.teacher_params
              if args.teacher == workload_lib.DEFAULT.teacher else {})
  tf_keras.utils.set_random_seed(0)
  teacher = workload_lib.build_backbone(args.teacher, params, args.image_size)
  teacher.trainable = False
  images = tf.random.uniform((args.batch_size, args.image_size,
                              args.image_size, 3))
  gflop = forward_gflop(teacher, images)
  timings = cpu_and_wall_rounds(variants(teacher, images), args.rounds)
  machine = measure.machine()
  print(f'{args.teacher}{params or ""} forward, batch {args.batch_size}, '
        f'{args.image_size} px, {gflop:.1f} GFLOP; {machine["cpu"]}, '
        f'{machine["cores"]} cores, TensorFlow {machine["tensorflow"]}, load '
        f'average {machine["load_average"][0]}')
  reference = timings['as built']['cpu_ms']
  width = max(len(name) for name in timings)
  for name, timing in timings.items():
    print(f'  {name:<{width}}  {timing["ms"]:7.0f} ms  {timing["cpu_ms"]:7.0f} '
          f'CPU-ms  ({timing["cpu_ms"] / reference:.2f}x the CPU time as built)'
          f'  {gflop / timing["ms"] * 1000:5.0f} GFLOP/s')
  for dtype in (tf.float32, tf.bfloat16):
    print(f'  reference: one 2048x2048 matmul in {dtype.name}: '
          f'{matmul_gflops(dtype):.0f} GFLOP/s')


if __name__ == '__main__':
  main()
