"""The frozen teacher's precision: bfloat16 where the device computes it natively.

A function-matching step is mostly the teacher's forward pass, and a frozen
teacher needs no gradients, loss scaling or float32 master weights, so it
can run in 16 bits whatever precision the student trains in
(`distillation.teacher_precision`, independent of `Runtime.mixed_precision`).
'auto' picks bfloat16 where the device has bfloat16 arithmetic (TPUs, GPUs
of compute capability 8.0 or more, CPUs with AVX512-BF16 or AMX-BF16 and
oneDNN), else float32. The teacher's logits are cast to float32 before the
loss either way (see DistillationTask.teacher_logits).

How a teacher is converted depends on what it is:

- a SavedModel / TF-Hub teacher is a fixed float32 graph: its graph, with
  the weights frozen in, is rewritten by grappler's auto mixed precision
  (oneDNN bfloat16 on CPUs, float16 on GPUs), for the teacher's function
  alone, so the student's graph is left as configured;
- a Keras teacher (an fmx teacher run, BiT included) takes the same graph
  rewrite on CPUs, where oneDNN's rewritten graph was measured faster than
  16-bit Keras layers (run_teacher); on TPUs and GPUs it is cloned with
  16-bit layers and its float32 weights cast once into them; normalisation
  layers keep float32 weights and statistics (Keras' mixed policy, and
  fmx.backbones.bit_resnet.GroupNormalization computes its moments in
  float32), and the output layer stays float32.

A teacher that cannot be converted runs in float32, after one message.
"""

import os
from typing import Callable, Optional, Sequence

import tensorflow as tf
import tf_keras
from absl import logging

from fmx.errors import UserError

PRECISIONS = ('auto', 'float32', 'bfloat16', 'float16')
# CPU flags (/proc/cpuinfo) of bfloat16 arithmetic that oneDNN uses.
BFLOAT16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')
# Ampere and later have bfloat16 tensor cores.
BFLOAT16_GPU_CAPABILITY = (8, 0)
_NORMALIZATIONS = (tf_keras.layers.BatchNormalization,
                   tf_keras.layers.GroupNormalization,
                   tf_keras.layers.LayerNormalization)
# Grappler's graph rewrites of a float32 graph into 16-bit compute.
_GRAPH_REWRITES = {('cpu', 'bfloat16'): 'auto_mixed_precision_onednn_bfloat16',
                   ('gpu', 'float16'): 'auto_mixed_precision',
                   # Only float16 is in grappler's GPU rewrite; on GPUs of
                   # capability 7.0 or more it is as fast as bfloat16.
                   ('gpu', 'bfloat16'): 'auto_mixed_precision'}


def check(setting: str) -> str:
  if setting not in PRECISIONS:
    raise UserError(f'distillation.teacher_precision = {setting!r}; use one of '
                    f'{list(PRECISIONS)} (\'auto\': bfloat16 where the device '
                    'computes it natively, else float32).')
  return setting


def device_kind() -> str:
  """'tpu', 'gpu' or 'cpu': where this process's models compute."""
  if tf.config.list_logical_devices('TPU'):
    return 'tpu'
  return 'gpu' if tf.config.list_physical_devices('GPU') else 'cpu'


def cpu_flags() -> Sequence[str]:
  """The CPU's feature flags (Linux /proc/cpuinfo); empty where unknown."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          return line.split(':', 1)[1].split()
  except OSError:
    pass
  return ()


def gpu_capabilities() -> Sequence[tuple]:
  return [tuple(tf.config.experimental.get_device_details(gpu).get(
      'compute_capability', (0, 0)))
          for gpu in tf.config.list_physical_devices('GPU')]


def onednn_enabled() -> bool:
  # Without oneDNN, TensorFlow's CPU kernels emulate bfloat16 (slower).
  if os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1').strip().lower() in ('0', 'false'):
    return False
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  return _pywrap_util_port.IsMklEnabled()


def resolve(setting: str, device: Optional[str] = None,
            flags: Optional[Sequence[str]] = None,
            capabilities: Optional[Sequence[tuple]] = None) -> str:
  """The precision `setting` means on `device` (default: this process's)."""
  if check(setting) != 'auto':
    return setting
  device = device or device_kind()
  if device == 'tpu':
    native = True
  elif device == 'gpu':
    capabilities = gpu_capabilities() if capabilities is None else capabilities
    native = bool(capabilities) and all(
        tuple(c) >= BFLOAT16_GPU_CAPABILITY for c in capabilities)
  else:
    flags = cpu_flags() if flags is None else flags
    native = any(f in flags for f in BFLOAT16_CPU_FLAGS) and onednn_enabled()
  return 'bfloat16' if native else 'float32'


def note(message: str) -> None:
  """A start-up message that is not an error (said once, by the caller)."""
  logging.warning(message)
  print(f'fmx: note: {message}', flush=True)


# --------------------------------------------------------------- Keras teachers


def keras_teacher(teacher: tf_keras.Model, precision: str) -> tf_keras.Model:
  """`teacher` rebuilt in `precision`, its weights cast once; or itself.

  Returns the float32 teacher unchanged (after a note) if it cannot be
  cloned layer by layer (a subclassed model) or its weights do not line up.
  """
  if precision == 'float32':
    return teacher
  outputs = set(teacher.output_names or ())  # None: a subclassed model
  # 16-bit weights, cast once here; but multi-worker strategies broadcast
  # new variables with collectives that have no bfloat16 kernel: there the
  # weights stay float32 and are cast at each call (same rounding).
  weights = (f'mixed_{precision}' if precision == 'bfloat16' and isinstance(
      tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy)
             else precision)

  def policy(layer) -> str:
    if layer.name in outputs or _is_fixed_graph(layer):
      return layer.dtype_policy.name  # exact logits; traced float32 graphs
    if isinstance(layer, _NORMALIZATIONS):
      return f'mixed_{precision}'  # float32 weights and statistics
    return weights

  def clone_layer(layer):
    if isinstance(layer, tf_keras.Model):
      return tf_keras.models.clone_model(layer, clone_function=clone_layer)
    config = layer.get_config()
    config['dtype'] = policy(layer)
    return layer.__class__.from_config(config)

  try:
    clone = tf_keras.models.clone_model(teacher, clone_function=clone_layer)
    if [w.shape for w in clone.weights] != [w.shape for w in teacher.weights]:
      raise ValueError('the clone has other weights')
  except (ValueError, TypeError, NotImplementedError) as e:
    note(f'distillation.teacher_precision = {precision!r}: the teacher '
         f'{teacher.name!r} could not be rebuilt in {precision} '
         f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); '
         'it runs in float32.')
    return teacher
  for source, target in zip(teacher.weights, clone.weights):
    target.assign(tf.cast(source, target.dtype))
  _copy_folded(teacher, clone)
  clone.trainable = False
  return clone


def _is_fixed_graph(layer) -> bool:
  # A hub.KerasLayer's SavedModel functions were traced for float32 inputs.
  return type(layer).__name__ == 'KerasLayer'


def _copy_folded(source, target) -> None:
  """Marks the clone's BiT convolutions folded where the source's were.

  Folding (fmx.backbones.bit_resnet) is state of the layer object, not of
  its config: the clone holds the already standardised kernels.
  """
  for a, b in zip(_layers(source), _layers(target)):
    if getattr(a, 'folded', False):
      b.folded = True


def _layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, tf_keras.Model):
      yield from _layers(layer)


# ------------------------------------------- graph rewrites (SavedModels, CPUs)


def run_teacher(teacher: tf_keras.Model, precision: str,
                device: Optional[str] = None):
  """(model, graph) of an fmx teacher run (a Keras model) in `precision`.

  On CPUs, the float32 teacher's frozen graph rewritten by grappler, as for
  SavedModel teachers (`graph`; `model` stays the float32 teacher, for
  exports): oneDNN's rewrite ran a BiT-R50x1 forward in 0.8x the time of
  the teacher cloned into bfloat16 layers (96 px, batch 16;
  docs/performance.md). Elsewhere, or where the rewrite converts nothing,
  the teacher cloned into `precision` (keras_teacher) and no graph.
  """
  device = device or device_kind()
  if precision != 'float32' and device == 'cpu':
    graph = graph_teacher(teacher, precision, device, quiet=True)
    if graph is not None:
      return teacher, graph
  return keras_teacher(teacher, precision), None


def graph_teacher(teacher: tf_keras.Model, precision: str,
                  device: Optional[str] = None, quiet: bool = False
                  ) -> Optional[Callable[[tf.Tensor], tf.Tensor]]:
  """The teacher's forward pass as a graph rewritten to `precision`, or None.

  For teachers whose graph is fixed (SavedModels, TF-Hub modules), and for
  every teacher on CPUs (run_teacher): the weights are frozen into the
  graph (the teacher never changes) and grappler's auto mixed precision
  rewrites it, for this function alone. None where no rewrite exists for
  the device or it converted nothing (after a note unless `quiet`: the
  caller has another way): the teacher then runs in float32.
  """
  if precision == 'float32':
    return None
  device = device or device_kind()
  rewrite = _GRAPH_REWRITES.get((device, precision))
  name = f'distillation.teacher_precision = {precision!r}'
  if rewrite is None:
    if quiet:
      return None
    note(f'{name}: a SavedModel teacher\'s graph has no {precision} rewrite '
         f'on a {device.upper()}; the teacher runs in float32.')
    return None
  spec = tf.TensorSpec((None, *teacher.input_shape[1:]), tf.float32)
  forward = tf.function(lambda images: teacher(images, training=False))
  try:
    function, converted = rewrite_graph(forward.get_concrete_function(spec),
                                        rewrite)
  except (ValueError, TypeError, tf.errors.OpError) as e:
    converted, reason = 0, f'{type(e).__name__}: {str(e).splitlines()[0]}'
  else:
    reason = 'grappler converted no op'
  if not converted:
    if quiet:
      return None
    note(f'{name}: the SavedModel teacher could not be converted ({rewrite}; '
         f'{reason}); it runs in float32.')
    return None
  return lambda images: tf.cast(function(images)[0], tf.float32)


def rewrite_graph(concrete, rewrite: str):
  """(function, ops converted): `concrete` frozen and rewritten by grappler."""
  # pylint: disable=g-import-not-at-top
  from tensorflow.core.framework import graph_pb2
  from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
  from tensorflow.python.framework import convert_to_constants
  from tensorflow.python.grappler import tf_optimizer
  from tensorflow.python.training import saver
  # pylint: enable=g-import-not-at-top
  frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
  graph_def = frozen.graph.as_graph_def()
  config = config_pb2.ConfigProto()
  options = config.graph_options.rewrite_options
  options.min_graph_nodes = -1  # however small the teacher
  # This rewrite alone: the step's own optimisation runs on it later.
  options.optimizers.append(rewrite)
  meta_graph = saver.export_meta_graph(graph_def=graph_def, graph=frozen.graph)
  fetch = meta_graph_pb2.CollectionDef()
  fetch.node_list.value.extend(t.name for t in frozen.outputs)
  meta_graph.collection_def['train_op'].CopyFrom(fetch)
  optimized = tf_optimizer.OptimizeGraph(config, meta_graph)
  converted = count_16bit_ops(optimized)
  # The input placeholder is replaced by the caller's tensor (input_map).
  [image] = [t.name for t in frozen.inputs]
  body = graph_pb2.GraphDef()
  body.CopyFrom(optimized)
  del body.node[:]
  body.node.extend(n for n in optimized.node if f'{n.name}:0' != image)
  outputs = [t.name for t in frozen.outputs]

  def imported(images):
    return tf.graph_util.import_graph_def(body, input_map={image: images},
                                          return_elements=outputs, name='teacher')

  spec = tf.TensorSpec(frozen.inputs[0].shape, tf.float32)
  return tf.compat.v1.wrap_function(imported, [spec]), converted


def count_16bit_ops(graph_def) -> int:
  """Ops of `graph_def` (not constants or casts) computing in 16 bits."""
  half = {tf.bfloat16.as_datatype_enum, tf.float16.as_datatype_enum}
  return sum(1 for node in graph_def.node
             if node.op not in ('Const', 'Cast') and 'T' in node.attr
             and node.attr['T'].type in half)

