"""The reproduction study's data: scikit-learn's digits and the held-out check.

No held-out test image may appear in a split a run learns from; the check
compares pixels, so it is tested with splits that overlap by content, and the
real splits are checked against an independent comparison of their images.
"""

import os

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from fmx.data import held_out
from fmx.errors import UserError
from fmx.registry import DATASETS
from fmx.training import run


def _images(source):
  return next(source.dataset.batch(10_000).as_numpy_iterator())['image']


def _labels(source):
  return next(source.dataset.batch(10_000).as_numpy_iterator())['label']


def _byte_set(images):
  return {image.tobytes() for image in images}


def test_sklearn_digits_are_the_real_digits_laid_out_like_mnist():
  entry = DATASETS.get('sklearn_digits')
  train, test = entry(split='train'), entry(split='test')
  assert (train.num_examples, test.num_examples) == (1297, 500)
  images = np.concatenate([_images(train), _images(test)])
  labels = np.concatenate([_labels(train), _labels(test)])
  assert images.shape == (1797, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels[1297:]), [50] * 10)
  # MNIST's layout: a 20x20 digit centred on a black 28x28 canvas.
  border = np.ones((28, 28), bool)
  border[4:24, 4:24] = False
  assert not images[:, border].any()
  # Each image, box-averaged back to 8x8 by PIL, is nearest to the sklearn
  # digit of its own label, grey levels 0..16 scaled to 0..255.
  small = np.stack([np.asarray(Image.fromarray(image[4:24, 4:24, 0]).resize(
      (8, 8), Image.BOX), np.float32).ravel() for image in images])
  digits = load_digits()
  reference = digits.images.reshape(-1, 64).astype(np.float32) * 255 / 16
  distances = ((small ** 2).sum(1)[:, None] + (reference ** 2).sum(1)[None]
               - 2 * small @ reference.T)
  nearest = distances.argmin(1)
  np.testing.assert_array_equal(digits.target[nearest], labels)
  assert len(set(nearest)) > 1700  # (a few near-twins of one class swap)
  assert abs(small.mean() - reference.mean()) < 2  # same grey levels
  unlabeled = entry(split='train[:10]', labeled=False)
  assert not unlabeled.labeled
  assert list(_labels(unlabeled)) == [-1] * 10


@pytest.mark.parametrize('train, test', [
    (('mnist_embedded', 'train'), ('mnist_embedded', 'test')),
    (('sklearn_digits', 'train'), ('sklearn_digits', 'test')),
    (('sklearn_digits', 'train'), ('mnist_embedded', 'test')),  # study 5
])
def test_shipped_splits_hold_out_their_test_images(train, test):
  sources = {'train': DATASETS.get(train[0])(split=train[1]),
             'eval': DATASETS.get(test[0])(split='train[90%:]'),
             'test': DATASETS.get(test[0])(split=test[1])}
  train_images, test_images = _images(sources['train']), _images(sources['test'])
  assert not _byte_set(train_images) & _byte_set(test_images)
  held_out.check_held_out(sources)  # and the check agrees: no error


def test_a_test_image_in_training_is_refused_by_content():
  mnist = DATASETS.get('mnist_embedded')
  # Different slices of different splits, three images in common by content.
  train = mnist(split='train[:20]')
  test = mnist(split='test[:30]')
  leaked = train.dataset.concatenate(test.dataset.skip(5).take(3))
  sources = {'train': train.__class__(**{**train.__dict__, 'dataset': leaked,
                                         'num_examples': 23}),
             'eval': mnist(split='train[90%:]'), 'test': test}
  with pytest.raises(UserError, match=r"3 held-out test image\(s\) of "
                     r"'mnist_embedded:test\[:30\]'.*training.*train #20 = "
                     r'test #5'):
    held_out.check_held_out(sources)
  assert held_out.shared_images(sources['train'], test) == [(20, 5), (21, 6), (22, 7)]


def test_a_run_whose_splits_overlap_stops_before_training(tmp_path, monkeypatch):
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(REPO)
  with pytest.raises(UserError, match='validation split'):
    run.run(['gin/reproduce/labels_only.gin'],
            ["Data.eval_split = 'test[:50]'"], model_dir=str(tmp_path / 'run'),
            dry_run=True, dry_run_root=str(tmp_path))
  assert not os.path.exists(tmp_path / 'run')
