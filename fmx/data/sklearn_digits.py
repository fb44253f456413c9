"""scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), offline.

`sklearn.datasets.load_digits` ships them inside the scikit-learn wheel. They
are drawn like MNIST's digits but by other writers and scanned otherwise, so
besides a small labelled dataset they are *out-of-domain* distillation data
for an MNIST teacher (the paper's out-of-domain study). To be fed to such a
teacher they are laid out like MNIST: grey levels 0..16 scaled to 0..255, the
8x8 digit resized to MNIST's 20x20 box and centred on a 28x28 black canvas
(MNIST centres its 20x20 digits in 28x28 images).

Splits: 'train' (1,297 images) and 'test' (500, 50 per class), stratified and
fixed like mnist_embedded's. `labeled = False` hands the images over without
labels (label -1), as distillation data that no label can leak from:

    train/datasets.sklearn_digits.labeled = False
"""

import functools

import numpy as np
import tensorflow as tf

from fmx.data.source import UNLABELED, Source, slice_bounds, stratified_split
from fmx.registry import DATASETS

_TEST_PER_CLASS = 50
_LEVELS = 16  # load_digits' grey levels are 0..16
_CANVAS, _DIGIT_BOX = 28, 20  # MNIST's layout


def mnist_layout(images: np.ndarray) -> np.ndarray:
  """[N, 8, 8] grey levels 0..16 -> uint8 [N, 28, 28, 1] laid out like MNIST."""
  scaled = images.astype(np.float32)[..., None] * (255.0 / _LEVELS)
  digits = tf.image.resize(scaled, (_DIGIT_BOX, _DIGIT_BOX), method='bilinear',
                           antialias=True).numpy()
  margin = (_CANVAS - _DIGIT_BOX) // 2
  canvas = np.zeros((len(images), _CANVAS, _CANVAS, 1), np.float32)
  canvas[:, margin:margin + _DIGIT_BOX, margin:margin + _DIGIT_BOX] = digits
  return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _load_arrays():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images, labels = mnist_layout(digits.images), digits.target.astype(np.int64)
  return images, labels, stratified_split(labels, _TEST_PER_CLASS)


@DATASETS.register(denylist=('split',))
def sklearn_digits(split: str, labeled: bool = True) -> Source:
  """scikit-learn's digits as 28x28 MNIST-like images: 1,297 train / 500 test.

  Args:
    split: 'train' or 'test', sliceable ('train[:200]').
    labeled: False serves the images with label -1, as unlabeled
      (out-of-domain) distillation data.
  """
  images, labels, indices = _load_arrays()
  base, start, stop = slice_bounds(split, {k: len(v) for k, v in indices.items()})
  chosen = indices[base][start:stop]
  chosen_labels = (labels[chosen] if labeled
                   else np.full(len(chosen), UNLABELED, np.int64))
  dataset = tf.data.Dataset.from_tensor_slices(
      {'image': images[chosen], 'label': chosen_labels})
  return Source(name=f'sklearn_digits:{split}', dataset=dataset,
                num_examples=len(chosen), num_classes=10, channels=1,
                labeled=labeled)
