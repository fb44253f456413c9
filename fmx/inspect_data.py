"""`fmx inspect-data`: one augmented training batch, as the model sees it.

Writes a PNG grid of the first training batch the gin config produces and
prints what is hard to see in it: how many distinct MixUp pairs it holds, its
MixUp coefficient, and the area of every inception crop. The crop areas are
recomputed by re-running the crop's sampler with the very stateless seeds the
pipeline used (fmx.data.pipeline.Data.image_seed / op_seed), so they are the
crops in the picture, not a fresh draw.

MixUp runs per replica (the default scope): the batch shown is the
batch of one input pipeline, `Training.global_batch_size` unless
--batch_size gives a replica's share.

`--dry_run` reads mock data offline (like `fmx run --dry_run`), so any
experiment can be inspected without its dataset; `--crops N` draws N more
inception crops with the experiment's settings and prints their area
distribution in one line (min, p10, median, max).
"""

import contextlib
import inspect
import math
from typing import List, Optional, Sequence

import gin
import numpy as np
import tensorflow as tf

from fmx import gin_config
from fmx.augmentations import crops
from fmx.augmentations import mixup as mixup_lib
from fmx.data import decoding
from fmx.data.pipeline import Data
from fmx.registry import AUGMENTATIONS
from fmx.training import dry_run as dry_run_lib

DEFAULT_BATCH_SIZE = 32
MAX_SHOWN = 64  # images in the grid; statistics cover the whole batch
_CROP_OP = 'inception_crop'


def bound_value(configurable: str, parameter: str, default):
  """The gin value of `configurable.parameter`, else `default`."""
  try:
    return gin.query_parameter(f'{configurable}.{parameter}')
  except ValueError:
    return default


def _op_parameter(op_name: str, parameter: str):
  signature = inspect.signature(AUGMENTATIONS.get(op_name))
  return bound_value(f'augmentations.{op_name}', parameter,
                     signature.parameters[parameter].default)


def inception_crop_area(image_shape, seed):
  """Area fraction `inception_crop` keeps of an image, for this seed (a tensor).

  Re-runs the op's sampler with its gin parameters: the sampler depends only
  on the image's shape and the seed, so this is the crop the op took.
  """
  parameters = inspect.signature(crops.inception_crop_window).parameters
  names = [n for n in parameters if n not in ('image_shape', 'seed')]
  _, crop_size = crops.inception_crop_window(
      image_shape, seed, **{n: _op_parameter(_CROP_OP, n) for n in names})
  crop_pixels = tf.cast(crop_size[0] * crop_size[1], tf.float64)
  return crop_pixels / tf.cast(image_shape[0] * image_shape[1], tf.float64)


def crop_area_sample(data: Data, seed: int, count: int, image_shape) -> np.ndarray:
  """The areas of the inception crops of stream positions 0 .. count - 1.

  Each with the seed the pipeline gives that position's crop, on an image of
  `image_shape` (the area fraction hardly depends on the image's size).
  """
  index = data.train_augmentations.index(_CROP_OP)
  shape = tf.constant(image_shape, tf.int32)

  def area(position):
    return inception_crop_area(
        shape, data.op_seed(data.image_seed(seed, position), index))

  batches = tf.data.Dataset.range(count).map(area).batch(1024)
  return np.concatenate(list(batches.as_numpy_iterator()))


def describe_crop_areas(areas: np.ndarray) -> str:
  """The one line `--crops N` prints."""
  return (f'crop area: min {areas.min():.3f}, p10 {np.quantile(areas, 0.1):.3f}, '
          f'median {np.median(areas):.3f}, max {areas.max():.3f} '
          f'({len(areas)} crops)')


def crop_areas(data: Data, seed: int, positions, raw_images) -> List[float]:
  """The inception crop areas of a batch's images (one per crop op and image)."""
  areas = []
  for position, image in zip(positions, raw_images):
    image_seed = data.image_seed(seed, position)
    image = tf.image.convert_image_dtype(image, tf.float32)
    for index, (name, op) in enumerate(zip(data.train_augmentations,
                                           data.train_ops)):
      op_seed = data.op_seed(image_seed, index)
      if name == _CROP_OP:
        areas.append(float(inception_crop_area(tf.shape(image), op_seed)))
      image = op(image, op_seed, size=data.image_size)
  return areas


def batch_statistics(data: Data, seed: int, batch_size: int) -> dict:
  """The first training batch and what it holds (see the module docstring)."""
  source = data.source('train')
  batch = next(iter(data.train_dataset_fn(batch_size, seed, source=source)))
  raw = list(data.train_examples(seed, source=source).take(batch_size))
  positions = [int(position) for position, _ in raw]
  stats = {
      'source': source.name, 'images': batch['image'].numpy(),
      'num_examples': source.num_examples,
      'class_names': source.label_names() if source.labeled else None,
      'labels': batch['label'].numpy(), 'batch_size': batch_size,
      'seed': seed, 'image_shape': tuple(batch['image'].shape[1:]),
      'raw_shape': tuple(int(d) for d in tf.shape(raw[0][1]['image'])),
      'crop_areas': crop_areas(data, seed, positions,
                               [example['image'] for _, example in raw]),
      'mixup': data.mixup_name, 'partners': None, 'distinct_pairs': None,
      'coefficient': None, 'coefficient_kind': None,
  }
  if data.mixup is not None:
    mixup_seed = data.mixup_seed(seed, 0)
    partners = mixup_lib.PARTNERS[data.mixup_name](batch_size, mixup_seed)
    # The same call as the pipeline's, on the same batch before MixUp, to read
    # the coefficient the batch was mixed with.
    unmixed = tf.stack([data.augment_example(seed, position, example)["image"]
                        for position, example in raw])
    _, coefficient = data.mixup(unmixed, mixup_seed)
    stats.update(
        partners=partners.numpy(), coefficient=float(coefficient),
        distinct_pairs=mixup_lib.distinct_pairs(partners.numpy()),
        coefficient_kind=bound_value(
            f'augmentations.{data.mixup_name}', 'coefficient', 'uniform'))
  return stats


def describe(stats: dict) -> str:
  """The lines `fmx inspect-data` prints."""
  images, n = stats['images'], stats['batch_size']
  lines = [f'batch: {n} images of {"x".join(map(str, stats["image_shape"]))} '
           f'from {stats["source"]}, drawn from its {stats["num_examples"]:,} '
           f'images (seed {stats["seed"]}, first batch, one input pipeline: '
           f'MixUp runs per replica); the grid shows {min(n, MAX_SHOWN)} of '
           f'the {n}',
           f'pixels: min {images.min():.3f}  mean {images.mean():.3f}  '
           f'max {images.max():.3f}',
           f'labels: {len(set(stats["labels"].tolist()))} distinct']
  if stats['mixup']:
    lines.append(f'mixup: {stats["mixup"]}, coefficient a = '
                 f'{stats["coefficient"]:.4f} ({stats["coefficient_kind"]}); '
                 f'{stats["distinct_pairs"]} distinct pairs in {n} images')
  else:
    lines.append('mixup: none')
  areas = np.array(stats['crop_areas'])
  if areas.size:
    lines.append(f'{_CROP_OP} areas: min {areas.min():.1%}  median '
                 f'{np.median(areas):.1%}  max {areas.max():.1%}  '
                 f'({np.mean(areas >= 0.999):.0%} whole images)')
  else:
    lines.append(f'{_CROP_OP}: not in Data.train_augmentations')
  if stats.get('crop_area_sample') is not None:
    lines.append(describe_crop_areas(stats['crop_area_sample']))
  elif stats.get('crops_requested'):
    lines.append(f'crop area: no {_CROP_OP} in Data.train_augmentations')
  return '\n'.join(lines)


def image_title(stats: dict, index: int) -> str:
  """'#3 triangle +#2': the image's index, class name and MixUp partner."""
  names = stats['class_names']
  title = f'#{index} {names[int(stats["labels"][index])] if names else "unlabeled"}'
  if stats['partners'] is not None:
    title += f' +#{stats["partners"][index]}'
  return title


def grid_figure(stats: dict, data: Data):
  """A matplotlib Figure of up to MAX_SHOWN images of the batch, titled.

  A bare Figure, not pyplot's: it needs no backend, so the command line saves
  it anywhere and a notebook shows it inline without its backend changed.
  """
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  images = np.clip(data.to_unit_range(stats['images'][:MAX_SHOWN]), 0, 1)
  columns = math.ceil(math.sqrt(len(images)))
  rows = math.ceil(len(images) / columns)
  figure = figure_lib.Figure(figsize=(1.6 * columns, 1.7 * rows + 0.4))
  axes = figure.subplots(rows, columns, squeeze=False)
  for index, axis in enumerate(axes.flat):
    axis.axis('off')
    if index >= len(images):
      continue
    image = images[index]
    axis.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                cmap='gray' if image.shape[-1] == 1 else None, vmin=0, vmax=1)
    axis.set_title(image_title(stats, index), fontsize=7)
  mixing = (f'{stats["mixup"]} a={stats["coefficient"]:.2f}, '
            f'{stats["distinct_pairs"]} distinct pairs'
            if stats['mixup'] else 'no mixup')
  figure.suptitle(f'{stats["source"]}: {stats["batch_size"]} images, {mixing}',
                  fontsize=9)
  figure.tight_layout()
  return figure


def write_grid(stats: dict, data: Data, path: str) -> None:
  """Saves up to MAX_SHOWN images of the batch as a PNG grid."""
  with tf.io.gfile.GFile(path, 'wb') as f:
    grid_figure(stats, data).savefig(f, format='png', dpi=100)


def inspect_data(gin_files: Sequence[str], bindings: Sequence[str] = (),
                 out: str = 'inspect_data.png',
                 batch_size: Optional[int] = None, dry_run: bool = False,
                 crops_to_draw: int = 0) -> dict:
  """Parses the config, writes the grid to `out`, returns the statistics."""
  stats, data = first_batch(gin_files, bindings, batch_size, dry_run,
                            crops_to_draw)
  write_grid(stats, data, out)
  return stats


def first_batch(gin_files: Sequence[str], bindings: Sequence[str] = (),
                batch_size: Optional[int] = None, dry_run: bool = False,
                crops_to_draw: int = 0):
  """(statistics, Data) of the config's first training batch; writes nothing.

  `dry_run` reads mock data offline (like `fmx run --dry_run`), so any
  experiment can be inspected without its dataset; `crops_to_draw` adds
  stats['crop_area_sample'], that many crop areas drawn with its settings.
  """
  with dry_run_lib.offline_data() if dry_run else contextlib.nullcontext():
    gin_config.parse(gin_files, list(bindings) + (
        ['Data.shuffle_buffer = 8'] if dry_run else []))
    data = Data()
    batch_size = batch_size or bound_value('Training', 'global_batch_size',
                                           DEFAULT_BATCH_SIZE)
    if dry_run:  # mock splits hold 8 images
      batch_size = min(batch_size, DEFAULT_BATCH_SIZE)
    seed = bound_value('Training', 'seed', 0)
    try:
      stats = batch_statistics(data, seed, batch_size)
    except tf.errors.OpError as e:
      user_error = decoding.as_user_error(e)
      if user_error is None:
        raise
      raise user_error from None
  stats['crop_area_sample'] = None
  stats['crops_requested'] = crops_to_draw
  if crops_to_draw and _CROP_OP in data.train_augmentations:
    stats['crop_area_sample'] = crop_area_sample(data, seed, crops_to_draw,
                                                 stats['raw_shape'])
  return stats, data
