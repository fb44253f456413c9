"""`fmx inspect-data`: the grid, and statistics checked against the pixels."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from matplotlib import image as matplotlib_image

from conftest import REPO, write
from fmx import cli, inspect_data

HEIGHT, WIDTH = 48, 64
ROW_STEP, COLUMN_STEP = 5, 4  # coordinate images: red = 5 x row, green = 4 x col


def _png(image) -> bytes:
  return tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()


@pytest.fixture(scope='module')
def coordinate_folder(tmp_path_factory):
  """Identical images whose pixels hold their own coordinates (lossless PNG)."""
  root = tmp_path_factory.mktemp('coordinates')
  rows, columns = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing='ij')
  image = np.stack([rows * ROW_STEP, columns * COLUMN_STEP,
                    np.zeros_like(rows)], -1)
  for name in ('a', 'b'):
    (root / name).mkdir()
    for k in range(4):
      (root / name / f'{k}.png').write_bytes(_png(image))
  return str(root)


@pytest.fixture(scope='module')
def colour_folder(tmp_path_factory):
  """Eight images, each of its own random texture."""
  root = tmp_path_factory.mktemp('colours')
  random = np.random.RandomState(0)
  for name in ('a', 'b'):
    (root / name).mkdir()
    for k in range(4):
      (root / name / f'{k}.png').write_bytes(
          _png(random.randint(0, 256, (HEIGHT, WIDTH, 3))))
  return str(root)


def _gin(tmp_path, root: str, extra: str = '') -> str:
  return write(tmp_path / 'inspect.gin', f"""
Data.train_dataset = 'image_folder'
Data.eval_dataset = 'image_folder'
image_folder.root = '{root}'
Data.image_size = {WIDTH}
Data.train_augmentations = ['inception_crop', 'random_flip']
Data.shuffle_buffer = 8
Training.global_batch_size = 8
Training.seed = 3
{extra}
""")


def test_crop_areas_are_the_crops_in_the_batch(tmp_path, coordinate_folder):
  gin_file = _gin(tmp_path, coordinate_folder, 'Data.mixup = None')
  stats = inspect_data.inspect_data([gin_file], out=str(tmp_path / 'grid.png'))
  images = np.round(stats['images'] * 255).astype(int)
  assert images.shape == (8, WIDTH, WIDTH, 3)
  assert len(stats['crop_areas']) == 8
  for image, area in zip(images, stats['crop_areas']):
    # The crop is never downscaled (crops <= 64 px, output 64 px), so its
    # first and last rows and columns survive the resize exactly.
    rows = image[..., 0] // ROW_STEP
    columns = image[..., 1] // COLUMN_STEP
    crop_height = rows.max() - rows.min() + 1
    crop_width = columns.max() - columns.min() + 1
    assert area == pytest.approx(crop_height * crop_width / (HEIGHT * WIDTH))
  assert min(stats['crop_areas']) < 0.5, 'inception crops vary in size'
  assert stats['mixup'] is None and stats['distinct_pairs'] is None


@pytest.mark.parametrize('mixup,expected_pairs', [('mixup_roll', 8),
                                                  ('mixup_permute', None)])
def test_mixup_statistics_reproduce_the_batch(tmp_path, colour_folder, mixup,
                                              expected_pairs):
  mixed = inspect_data.inspect_data(
      [_gin(tmp_path, colour_folder, f"Data.mixup = '{mixup}'")],
      out=str(tmp_path / 'mixed.png'))
  # Same seed without MixUp: the very images the batch was mixed from.
  unmixed = inspect_data.inspect_data(
      [_gin(tmp_path, colour_folder, 'Data.mixup = None')],
      out=str(tmp_path / 'unmixed.png'))['images']
  a, partners = mixed['coefficient'], mixed['partners']
  np.testing.assert_allclose(mixed['images'], a * unmixed + (1 - a) * unmixed[partners],
                             atol=1e-5)
  pairs = {frozenset((i, int(p))) for i, p in enumerate(partners) if i != p}
  assert mixed['distinct_pairs'] == len(pairs)
  if expected_pairs is not None:
    assert len(pairs) == expected_pairs
  assert mixed['coefficient_kind'] == 'uniform'


def test_cli_writes_a_png_grid_and_prints_the_statistics(tmp_path, colour_folder,
                                                         capsys):
  gin_file = _gin(tmp_path, colour_folder, "Data.mixup = 'mixup_reverse'\n"
                  "augmentations.mixup_reverse.coefficient = 'beta'")
  out = str(tmp_path / 'grid.png')
  assert cli.main(['inspect-data', '--gin', gin_file, '--out', out,
                   '--bind', 'Training.global_batch_size = 6']) == 0
  printed = capsys.readouterr().out
  assert 'batch: 6 images of 64x64x3 from image_folder:train' in printed
  assert 'drawn from its 8 images' in printed and 'grid shows 6 of the 6' in printed
  assert 'mixup: mixup_reverse' in printed and '(beta)' in printed
  assert '3 distinct pairs in 6 images' in printed
  assert 'inception_crop areas: min' in printed
  grid = matplotlib_image.imread(out)
  assert grid.ndim == 3 and grid.shape[0] > 200 and grid.shape[1] > 200
  assert grid[..., :3].std() > 0.05, 'the grid shows images, not a blank page'


def test_cli_names_a_corrupt_image(tmp_path, colour_folder, capsys):
  root = tmp_path / 'data'
  os.makedirs(root / 'a')
  for k in range(3):
    (root / 'a' / f'{k}.png').write_bytes(_png(np.zeros((8, 8, 3))))
  (root / 'a' / 'bad.png').write_bytes(b'\x89PNG not really')
  gin_file = _gin(tmp_path, str(root), 'Data.mixup = None')
  code = cli.main(['inspect-data', '--gin', gin_file, '--out',
                   str(tmp_path / 'x.png')])
  assert code == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert f'cannot read or decode {root / "a" / "bad.png"}' in err
  assert not os.path.exists(tmp_path / 'x.png')


def test_dry_run_draws_an_experiments_crops_offline(capsys):
  # pets_fast follows big_vision: crops down to 5% of the image, ~13% of them
  # under 10%; the original recipe's floor is 10% (tests/test_augmentations.py).
  assert cli.main(['inspect-data', '--gin', os.path.join(REPO, 'experiments', 'pets_fast.gin'),
                   '--dry_run', '--crops', '2000', '--batch_size', '4',
                   '--out', os.devnull]) == 0
  line = [l for l in capsys.readouterr().out.splitlines()
          if l.startswith('crop area:')]
  assert len(line) == 1 and line[0].endswith('(2000 crops)'), line
  values = dict(re.findall(r'(min|p10|median|max) ([\d.]+)', line[0]))
  assert 0.05 <= float(values['min']) < 0.06
  assert float(values['p10']) < 0.1 < float(values['median']) < 0.5
  assert float(values['max']) == 1.0
