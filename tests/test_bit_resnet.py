"""BiT ResNet-V2: published sizes, official .npz weights, layers, serialisation.

The official-weights tests write a random checkpoint in the official layout
(google-research/big_transfer's variable names, spelt out here independently
of fmx.backbones.bit_weights), load it, and compare the logits with a plain
TensorFlow re-implementation of BiT's forward pass that reads the same arrays
and preprocesses uint8 pixels itself as big_transfer does ((x - 127.5) /
127.5, i.e. [-1, 1]), while fmx's model gets the pipeline's images
(Data.value_range). They use R26x1 at 64 px, which has every kind of unit and
costs ~1 s to build.
"""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from fmx.backbones import bit_resnet, bit_weights
from fmx.errors import UserError
from fmx.registry import BACKBONES
from fmx.tasks import teacher_run

CLASSES_IN_FILE = 10
SIZE = 64


@pytest.mark.parametrize('name,published', [
    ('bit_r50x1', 25_550_000),
    ('bit_r152x2', 236_340_000),
    ('bit_r101x3', 387_930_000),
])
def test_parameter_counts_match_published(name, published):
  # Built once in a throwaway graph and never run: the variables are declared
  # but not initialised, so R101x3's 1.5 GB of weights are never allocated
  # (8 s and 0.9 GB peak here, instead of 13 s and 2.4 GB eagerly).
  with tf.Graph().as_default():
    count = BACKBONES.get(name)(num_classes=1000,
                                input_shape=(64, 64, 3)).count_params()
  assert round(count, -4) == published, count


def test_unknown_depth_or_width_is_a_user_error():
  with pytest.raises(UserError, match=r'depth 34 .*\[26, 50, 101, 152\]'):
    bit_resnet.build(10, (32, 32, 3), depth=34, width=1)
  with pytest.raises(UserError, match='width 5 '):
    bit_resnet.build(10, (32, 32, 3), depth=26, width=5)


def test_standardized_conv_standardises_kernel_per_output_channel():
  rng = np.random.RandomState(0)
  images = tf.constant(rng.normal(size=(2, 9, 9, 4)), tf.float32)
  conv = bit_resnet.StandardizedConv2D(6, 3, strides=2, use_bias=False)
  conv.build(images.shape)
  kernel = rng.normal(2.0, 3.0, size=(3, 3, 4, 6)).astype(np.float32)
  conv.kernel.assign(kernel)
  standardised = (kernel - kernel.mean((0, 1, 2))) / kernel.std((0, 1, 2))
  expected = tf.nn.conv2d(images, standardised, 2, 'VALID')
  np.testing.assert_allclose(conv(images), expected, rtol=1e-4, atol=1e-4)
  # Invariant: an affine change of an output channel's kernel changes nothing.
  conv.kernel.assign(kernel * np.arange(1, 7) + np.arange(6) * 5.0)
  np.testing.assert_allclose(conv(images), expected, rtol=1e-4, atol=1e-4)


def test_folding_a_frozen_model_keeps_its_outputs_exactly():
  # A frozen teacher's standardised kernels are computed once
  # (teacher_run.load_teacher), not at every step: same logits, bit for bit.
  tf_keras.utils.set_random_seed(0)
  model = bit_resnet.build(CLASSES_IN_FILE, (32, 32, 3), depth=26, width=1)
  head = model.get_layer('head')
  head.kernel.assign(tf.random.normal(head.kernel.shape))
  images = tf.random.uniform((2, 32, 32, 3))
  before = model(images).numpy()
  assert bit_resnet.fold_weight_standardization(model) == 29
  np.testing.assert_array_equal(model(images).numpy(), before)
  assert 'folded' not in model.to_json()  # model.json stays the architecture


def test_a_bit_teacher_run_is_loaded_folded_with_its_outputs(tmp_path):
  tf_keras.utils.set_random_seed(1)
  model = bit_resnet.build(CLASSES_IN_FILE, (32, 32, 3), depth=26, width=1)
  head = model.get_layer('head')
  head.kernel.assign(tf.random.normal(head.kernel.shape))
  run_dir = str(tmp_path / 'teacher')
  teacher_run.write_architecture(model, run_dir)
  tf.train.Checkpoint(model=model).save(f'{run_dir}/ckpt')
  (tmp_path / 'teacher' / teacher_run.RESULTS_FILE).write_text('{}')
  teacher = teacher_run.load_teacher(run_dir)
  convs = [m for m in teacher.submodules
           if isinstance(m, bit_resnet.StandardizedConv2D)]
  assert len(convs) == 29 and all(conv.folded for conv in convs)
  images = tf.random.uniform((2, 32, 32, 3))
  np.testing.assert_array_equal(teacher(images).numpy(), model(images).numpy())


def test_group_norm_matches_tf_keras_group_norm():
  rng = np.random.RandomState(1)
  inputs = tf.constant(rng.normal(1.0, 4.0, size=(3, 5, 5, 64)), tf.float32)
  gamma, beta = rng.normal(size=64), rng.normal(size=64)
  ours = bit_resnet.GroupNormalization(32, epsilon=1e-5)
  stock = tf_keras.layers.GroupNormalization(32, epsilon=1e-5)
  for layer in (ours, stock):
    layer.build(inputs.shape)
    layer.set_weights([gamma, beta])
  np.testing.assert_allclose(ours(inputs), stock(inputs), rtol=1e-4, atol=1e-4)
  # And it does normalise: per example and group, mean 0 and variance 1.
  plain = bit_resnet.GroupNormalization(32, epsilon=1e-5)
  grouped = tf.reshape(plain(inputs), [3, 5, 5, 32, 2])
  mean, variance = tf.nn.moments(grouped, [1, 2, 4])
  np.testing.assert_allclose(mean, 0.0, atol=1e-4)
  np.testing.assert_allclose(variance, 1.0, atol=1e-3)


# ---------------------------------------------------------------- official weights


def official_random_weights(depth_units=(2, 2, 2, 2), width=1, classes=10):
  """A BiT checkpoint's arrays, random, named and shaped as the official files."""
  rng = np.random.RandomState(0)
  arrays = {}

  def conv(key, shape):
    arrays[f'{key}/standardized_conv2d/kernel'] = rng.normal(
        size=shape).astype(np.float32)

  def norm(key, channels):
    arrays[f'{key}/group_norm/gamma'] = (
        1.0 + 0.2 * rng.normal(size=channels)).astype(np.float32)
    arrays[f'{key}/group_norm/beta'] = (
        0.2 * rng.normal(size=channels)).astype(np.float32)

  conv('resnet/root_block', (7, 7, 3, 64 * width))
  channels = 64 * width
  for block, units in enumerate(depth_units, 1):
    mid = 64 * width * 2 ** (block - 1)
    for unit in range(1, units + 1):
      scope = f'resnet/block{block}/unit{unit:02d}'
      norm(f'{scope}/a', channels)
      if unit == 1:
        conv(f'{scope}/a/proj', (1, 1, channels, 4 * mid))
      conv(f'{scope}/a', (1, 1, channels, mid))
      norm(f'{scope}/b', mid)
      conv(f'{scope}/b', (3, 3, mid, mid))
      norm(f'{scope}/c', mid)
      conv(f'{scope}/c', (1, 1, mid, 4 * mid))
      channels = 4 * mid
  norm('resnet', channels)
  arrays['resnet/head/conv2d/kernel'] = (
      0.05 * rng.normal(size=(1, 1, channels, classes))).astype(np.float32)
  arrays['resnet/head/conv2d/bias'] = rng.normal(size=classes).astype(np.float32)
  return arrays


def reference_forward(w, pixels, depth_units=(2, 2, 2, 2)):
  """(features, logits) of BiT as big_transfer computes them, from raw arrays
  and uint8 pixels, preprocessed as its input pipeline does."""
  images = (tf.cast(pixels, tf.float32) - 127.5) / 127.5

  def conv(x, scope, stride=1, pad=0):
    kernel = w[f'{scope}/standardized_conv2d/kernel']
    kernel = (kernel - kernel.mean((0, 1, 2))) / np.sqrt(
        kernel.var((0, 1, 2)) + 1e-10)
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return tf.nn.conv2d(x, kernel, stride, 'VALID')

  def norm_relu(x, scope):
    n, h, wd, c = x.shape
    grouped = tf.reshape(x, [n, h, wd, 32, c // 32])
    mean, variance = tf.nn.moments(grouped, [1, 2, 4], keepdims=True)
    x = tf.reshape((grouped - mean) / tf.sqrt(variance + 1e-5), [n, h, wd, c])
    return tf.nn.relu(x * w[f'{scope}/group_norm/gamma'] +
                      w[f'{scope}/group_norm/beta'])

  x = conv(images, 'resnet/root_block', stride=2, pad=3)
  x = tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, 2, 'VALID')
  for block, units in enumerate(depth_units, 1):
    for unit in range(1, units + 1):
      scope = f'resnet/block{block}/unit{unit:02d}'
      stride = 2 if block > 1 and unit == 1 else 1
      preact = norm_relu(x, f'{scope}/a')
      shortcut = conv(preact, f'{scope}/a/proj', stride) if unit == 1 else x
      y = conv(preact, f'{scope}/a')
      y = conv(norm_relu(y, f'{scope}/b'), f'{scope}/b', stride, pad=1)
      y = conv(norm_relu(y, f'{scope}/c'), f'{scope}/c')
      x = shortcut + y
  features = tf.reduce_mean(norm_relu(x, 'resnet'), [1, 2])
  logits = (features @ w['resnet/head/conv2d/kernel'][0, 0] +
            w['resnet/head/conv2d/bias'])
  return features.numpy(), logits.numpy()


@pytest.fixture(scope='module')
def official(tmp_path_factory):
  """(arrays, npz path, images in [0, 1], reference features and logits)."""
  arrays = official_random_weights(classes=CLASSES_IN_FILE)
  path = str(tmp_path_factory.mktemp('bit') / 'BiT-M-R26x1.npz')
  # Some official files number a conv scope; the loader must accept that.
  renamed = dict(arrays)
  key = 'resnet/block3/unit02/b/standardized_conv2d/kernel'
  renamed[key.replace('conv2d/', 'conv2d_7/')] = renamed.pop(key)
  np.savez(path, **renamed)
  pixels = tf.random.stateless_uniform([2, SIZE, SIZE, 3], seed=(1, 2),
                                       minval=0, maxval=256, dtype=tf.int32)
  features, logits = reference_forward(arrays, pixels)
  images = tf.cast(pixels, tf.float32) / 255.0  # the pipeline's [0, 1]
  return arrays, path, images, features, logits


@pytest.fixture(scope='module')
def loaded(official):
  """The registry's bit_resnet (R26x1) with the official-layout file loaded."""
  return BACKBONES.get('bit_resnet')(num_classes=CLASSES_IN_FILE,
                                     input_shape=(SIZE, SIZE, 3), depth=26,
                                     weights=official[1])


def _features(model, images):
  return tf_keras.Model(model.input, model.get_layer('pool').output)(images).numpy()


def test_official_weights_give_the_reference_logits(official, loaded):
  _, _, images, features, logits = official
  # Logits and features far from a zero or random head's: a real comparison.
  assert np.abs(logits).max() > 1.0 and features.std() > 0.1
  np.testing.assert_allclose(_features(loaded, images), features, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(loaded(images).numpy(), logits, rtol=1e-3, atol=1e-3)


def test_head_is_replaced_by_zeros_when_classes_differ(official):
  _, path, images, features, _ = official
  model = bit_resnet.build(7, (SIZE, SIZE, 3), 26, 1, weights=path)
  np.testing.assert_array_equal(model(images).numpy(), np.zeros((2, 7)))
  np.testing.assert_allclose(_features(model, images), features, rtol=1e-3, atol=1e-4)


def test_mixed_precision_keeps_float32_logits_close_to_reference(official):
  _, path, images, _, logits = official
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    model = bit_resnet.build(CLASSES_IN_FILE, (SIZE, SIZE, 3), 26, 1, weights=path)
    assert model.get_layer('block1_unit01_a_conv').compute_dtype == 'bfloat16'
    outputs = model(images)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  assert outputs.dtype == tf.float32
  scale = np.abs(logits).max()
  np.testing.assert_allclose(outputs.numpy() / scale, logits / scale, atol=0.05)


def test_shape_mismatch_names_layer_and_both_shapes(official, tmp_path):
  arrays = dict(official[0])
  key = 'resnet/block2/unit01/b/standardized_conv2d/kernel'
  arrays[key] = arrays[key][:, :, :, :64]
  path = str(tmp_path / 'bad.npz')
  np.savez(path, **arrays)
  with pytest.raises(UserError) as info:
    bit_resnet.build(CLASSES_IN_FILE, (SIZE, SIZE, 3), 26, 1, weights=path)
  message = str(info.value)
  for part in ("'block2_unit01_b_conv'", key, '(3, 3, 128, 128)', '(3, 3, 128, 64)',
               path):
    assert part in message, message


def test_unusable_files_are_user_errors_and_leave_the_model_as_it_was(
    official, loaded, tmp_path):
  deeper = dict(official[0])
  for name in list(deeper):
    if '/block3/unit02/' in name:
      deeper[name.replace('unit02', 'unit03')] = deeper[name]
  path = str(tmp_path / 'deeper.npz')
  np.savez(path, **deeper)
  with pytest.raises(UserError, match=r"9 of the file's arrays are not in the "
                     r"model \(e.g. \['resnet/block3/unit03/"):
    bit_weights.load_bit_weights(loaded, path)
  shallower = {k: v for k, v in official[0].items() if '/block4/unit02/' not in k}
  np.savez(path, **shallower)
  with pytest.raises(UserError, match=r"9 of the model's variables are not in "
                     r"the file \(e.g. \['resnet/block4/unit02/"):
    bit_weights.load_bit_weights(loaded, path)
  with pytest.raises(UserError, match='nowhere.npz.* does not exist'):
    bit_weights.load_bit_weights(loaded, str(tmp_path / 'nowhere.npz'))
  (tmp_path / 'text.npz').write_text('not numpy')
  with pytest.raises(UserError, match='(?s)text.npz.* official BiT .npz'):
    bit_weights.load_bit_weights(loaded, str(tmp_path / 'text.npz'))
  # Nothing is assigned unless the whole file fits.
  np.testing.assert_allclose(loaded(official[2]).numpy(), official[4],
                             rtol=1e-3, atol=1e-3)


def test_architecture_round_trips_through_json(official, loaded):
  _, _, images, _, logits = official
  config = loaded.to_json()
  assert 'fmx>StandardizedConv2D' in config and 'fmx>GroupNormalization' in config
  clone = tf_keras.models.model_from_json(config)
  assert [l.name for l in clone.layers] == [l.name for l in loaded.layers]
  clone.set_weights(loaded.get_weights())
  np.testing.assert_allclose(clone(images).numpy(), logits, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- input ranges


def test_official_weights_see_their_range_whatever_data_says(official):
  arrays, path, images, features, logits = official
  gin.parse_config('Data.value_range = (-1.0, 1.0)')
  model = bit_resnet.build(CLASSES_IN_FILE, (SIZE, SIZE, 3), 26, 1, weights=path)
  np.testing.assert_allclose(model(images * 2.0 - 1.0).numpy(), logits,
                             rtol=1e-3, atol=1e-3)
  gin.clear_config()
  # Feeding [0, 1] straight to the [-1, 1] weights (fmx before) is no
  # harmless shift: the pooled features move by far more than the tolerance.
  wrong, _ = reference_forward(arrays, images * 127.5 + 127.5)
  assert np.abs(wrong - features).mean() > 0.1 * np.abs(features).mean()


def test_random_init_bit_has_no_range_layer():
  model = bit_resnet.build(CLASSES_IN_FILE, (32, 32, 3), 26, 1)
  assert 'input_range' not in [layer.name for layer in model.layers]


def test_hub_module_sees_zero_to_one_whatever_data_says(tmp_path):
  # A stand-in module that outputs each image's pixel minimum and maximum.
  module = tf.Module()
  module.__call__ = tf.function(
      lambda images: tf.stack([tf.reduce_min(images, [1, 2, 3]),
                               tf.reduce_max(images, [1, 2, 3])], -1),
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / 'module'))
  gin.parse_config('Data.value_range = (-1.0, 1.0)')
  model = BACKBONES.get('hub')(num_classes=2, input_shape=(8, 8, 3),
                               handle=str(tmp_path / 'module'), head=False,
                               trainable=False)
  pixels = np.linspace(0.0, 1.0, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
  seen = model(tf.constant(pixels * 2.0 - 1.0, tf.float32)).numpy()
  np.testing.assert_allclose(seen, [[0.0, pixels[0].max()],
                                    [pixels[1].min(), 1.0]], atol=1e-6)
