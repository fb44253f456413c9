"""Loads the official BiT checkpoints (`BiT-M-R101x3.npz`, ...) into fmx's BiT.

The files (https://storage.googleapis.com/bit_models/<name>.npz, from
google-research/big_transfer) are numpy archives of float32 arrays named like
the TF variables of big_transfer's ResNet-V2; this module relies on exactly
this layout (units are numbered from 01 within each block):

    resnet/root_block/standardized_conv2d/kernel         [7, 7, 3, 64w]
    resnet/block{b}/unit{uu}/{a,b,c}/group_norm/{gamma,beta}
    resnet/block{b}/unit{uu}/{a,b,c}/standardized_conv2d/kernel   HWIO
    resnet/block{b}/unit{uu}/a/proj/standardized_conv2d/kernel   (units whose
                                   shape changes: unit01 of every block)
    resnet/group_norm/{gamma,beta}                       the final GN
    resnet/head/conv2d/{kernel,bias}                     head as a 1x1 conv,
                                   kernel [1, 1, C, classes]

Some files name a convolution `standardized_conv2d_<n>`; those are read as
`standardized_conv2d` (big_vision does the same). Convolution kernels are HWIO
like Keras', so they load unchanged; the head kernel is reshaped to Dense's
[C, classes]. The head is loaded only when its class count is the model's;
otherwise the model keeps its zero-initialised head, as BiT fine-tuning does.
"""

import io
import os
import re
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from fmx.errors import UserError

BIT_MODELS_URL = 'https://storage.googleapis.com/bit_models/'
# `weights = 'BiT-M-R50x1'` is short for that file at BIT_MODELS_URL.
_SHORT_NAME = re.compile(r'^BiT-[SM]-R\d+x\d+(-ILSVRC2012)?$')
_NUMBERED_CONV = re.compile(r'/standardized_conv2d_\d+/')
# fmx layer name -> official variable scope (see fmx.backbones.bit_resnet).
_UNIT_LAYER = re.compile(r'^(block\d)_(unit\d\d)_([abc])_(gn|conv|proj)$')
_UNIT_PART = {'gn': 'group_norm', 'conv': 'standardized_conv2d',
              'proj': 'proj/standardized_conv2d'}
_FIXED_LAYERS = {'root_conv': 'resnet/root_block/standardized_conv2d',
                 'final_gn': 'resnet/group_norm',
                 'head': 'resnet/head/conv2d'}
HEAD_KERNEL = 'resnet/head/conv2d/kernel'
HEAD_BIAS = 'resnet/head/conv2d/bias'


def official_scope(layer_name: str):
  """The official variable scope of an fmx BiT layer; None if it has none."""
  if layer_name in _FIXED_LAYERS:
    return _FIXED_LAYERS[layer_name]
  match = _UNIT_LAYER.match(layer_name)
  if not match:
    return None
  block, unit, part, kind = match.groups()
  return f'resnet/{block}/{unit}/{part}/{_UNIT_PART[kind]}'


def read_npz(path_or_url: str) -> Dict[str, np.ndarray]:
  """The arrays of an official BiT file: local path, URL, gs:// or short name."""
  if _SHORT_NAME.match(path_or_url):
    path_or_url = f'{BIT_MODELS_URL}{path_or_url}.npz'
  try:
    if path_or_url.startswith(('http://', 'https://')):
      arrays = np.load(tf_keras.utils.get_file(
          os.path.basename(path_or_url), path_or_url, cache_subdir='bit_models'))
    elif os.path.isfile(path_or_url):
      arrays = np.load(path_or_url)  # read array by array, no copy of the file
    elif tf.io.gfile.exists(path_or_url):  # gs:// and other TF filesystems
      with tf.io.gfile.GFile(path_or_url, 'rb') as f:
        arrays = np.load(io.BytesIO(f.read()))
    else:
      raise UserError(
          f'BiT weights file {path_or_url!r} does not exist. Pass the path '
          f'of an official BiT .npz file (e.g. BiT-M-R50x1.npz from '
          f'{BIT_MODELS_URL}), its URL, or None for a random init.')
    return {_NUMBERED_CONV.sub('/standardized_conv2d/', k): arrays[k]
            for k in arrays.files}
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Downloads, gfile and numpy fail with many types; all mean "not usable".
    raise UserError(
        f'could not read BiT weights from {path_or_url!r} ({type(e).__name__}: '
        f'{e}). It must be an official BiT .npz file (numpy archive); check '
        'the path or URL, or download the file and pass its local path.') from e


def load_bit_weights(model: tf_keras.Model, path_or_url: str) -> None:
  """Sets `model`'s weights from an official BiT .npz; UserError on mismatch."""
  arrays = read_npz(path_or_url)
  num_classes = model.get_layer('head').units
  head_classes = arrays[HEAD_KERNEL].shape[-1] if HEAD_KERNEL in arrays else None
  keep_zero_head = head_classes != num_classes
  if keep_zero_head:
    logging.info('BiT weights %s have a %s-class head and the model %d classes:'
                 ' keeping the zero-initialised head.', path_or_url,
                 head_classes, num_classes)
  assignments: List[Tuple[tf.Variable, np.ndarray]] = []
  missing, used = [], set()
  for layer in model.layers:
    scope = official_scope(layer.name)
    if scope is None or (keep_zero_head and layer.name == 'head'):
      continue
    for weight in layer.weights:
      key = f'{scope}/{_weight_name(weight)}'
      if key not in arrays:
        missing.append(key)
        continue
      used.add(key)
      value = arrays[key]
      if layer.name == 'head' and value.ndim == 4:
        value = value.reshape(value.shape[2:])  # 1x1 conv -> Dense kernel
      if tuple(weight.shape) != value.shape:
        raise UserError(
            f'BiT weights {path_or_url!r} do not fit the model {model.name!r}: '
            f'layer {layer.name!r} ({key}) has shape {tuple(weight.shape)} in '
            f'the model but {value.shape} in the file. The file is for another'
            ' BiT depth or width: use the entry that matches it (e.g. '
            'BiT-M-R101x3.npz with bit_r101x3).')
      assignments.append((weight, value))
  replaced_head = {HEAD_KERNEL, HEAD_BIAS} if keep_zero_head else set()
  unused = sorted(set(arrays) - used - replaced_head)
  problems = []
  if missing:
    problems.append(f'{len(missing)} of the model\'s variables are not in the '
                    f'file (e.g. {missing[:3]})')
  if unused:
    problems.append(f'{len(unused)} of the file\'s arrays are not in the '
                    f'model (e.g. {unused[:3]})')
  if problems:
    raise UserError(
        f'BiT weights {path_or_url!r} do not fit the model {model.name!r}: '
        f'{" and ".join(problems)}. The file is for another BiT depth, or is '
        'not a BiT checkpoint: use the entry that matches it (e.g. '
        'BiT-M-R50x1.npz with bit_r50x1).')
  tf_keras.backend.batch_set_value(assignments)


def _weight_name(weight) -> str:
  # 'block1_unit01_a_gn/gamma:0' -> 'gamma'
  return weight.name.split('/')[-1].split(':')[0]
