"""Images in folders: one subfolder per class, or unlabeled images anywhere.

    root/
      abyssinian/001.jpg, 002.png, ...    class 0 (sorted folder names)
      beagle/...                          class 1

`root` may hold `{split}` (e.g. '/data/pets/{split}' for train/, test/); the
classes are then the sorted union of the class folders of every split folder,
so a class missing from one split does not shift the others' indices. Without
`{split}` the folder is one split, 'train'; any other split name is an error
(it would read the training images). A class folder holding subfolders is an
error too (a root one level too high). A split
is sliced ('train[:90%]') over a stable file order: files sorted by a hash of
their path inside the split folder, which mixes the classes (a slice keeps
every class) and stays the same on every machine and listing order.

`unlabeled_image_folder` reads every image under its root, at any depth, with
label -1: distillation needs no labels, so any images can teach (e.g. images
from another domain); `num_classes` is the teacher's.
"""

import hashlib
import os
from typing import List, Optional, Sequence, Tuple

import gin
import tensorflow as tf

from fmx.data import decoding, files, network
from fmx.data.source import UNLABELED, Source, slice_bounds, split_name
from fmx.errors import UserError
from fmx.registry import DATASETS

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# A root without {split} is one split of this name, sliceable ('train[:90%]').
WHOLE_FOLDER_SPLIT = 'train'
_SIZE_SAMPLES = 8  # images decoded to estimate a split's decoded size


def _images_under(folder: str) -> List[str]:
  found = []
  for directory, _, names in tf.io.gfile.walk(folder):
    found += [os.path.join(directory, name) for name in names
              if name.lower().endswith(IMAGE_EXTENSIONS)]
  return found


def _split_root(root: str, split: str, key: str) -> str:
  if (files.SPLIT_PLACEHOLDER not in root
      and split_name(split) != WHOLE_FOLDER_SPLIT):
    # Any split name used to read the whole folder: a 'test' split then
    # silently evaluated on the training images.
    raise UserError(
        f'{key} = {root!r} has no {files.SPLIT_PLACEHOLDER}, so its only split '
        f"is '{WHOLE_FOLDER_SPLIT}' (the whole folder): split {split!r} does "
        'not exist. Either keep each split in its own folder, '
        f'root/{files.SPLIT_PLACEHOLDER}/class/image.jpg, and write '
        f"{files.SPLIT_PLACEHOLDER} in the root (e.g. "
        f"'{root.rstrip('/')}/{files.SPLIT_PLACEHOLDER}' for {root}/train, "
        f"{root}/test), or take slices of the one folder, e.g. "
        "Data.train_split = 'train[:85%]' and Data.eval_split = "
        "Data.test_split = 'train[85%:]'.")
  folder = files.for_split(root, split)
  network.require_cloud_storage(folder, key)
  if not tf.io.gfile.isdir(folder):
    raise UserError(f'{key} = {root!r}: {folder!r} (split {split!r}) is not a '
                    'folder. Check the path; {split} in it is replaced by the '
                    "split's name (e.g. train, validation, test).")
  return folder


def _class_images(class_folder: str, root: str, split: str,
                  key: str) -> List[str]:
  """The images of one class folder, which must hold no subfolders."""
  _, subfolders, names = next(iter(tf.io.gfile.walk(class_folder)))
  if subfolders:
    # Typically a root one level too high: the "classes" are train/ and
    # test/, and their class folders would be read as images of 2 classes.
    shown = ', '.join(repr(s.rstrip('/')) for s in sorted(subfolders)[:3])
    raise UserError(
        f'{key} = {root!r}: the class folder {class_folder!r} (split '
        f'{split!r}) holds subfolders ({shown}), not only images. image_folder'
        ' reads root/class/image.jpg: if those subfolders are the classes, '
        'point the root one level lower, or at '
        f"'.../{files.SPLIT_PLACEHOLDER}' when they are split folders.")
  return [os.path.join(class_folder, name) for name in names
          if name.lower().endswith(IMAGE_EXTENSIONS)]


def _class_names(root: str, folder: str) -> List[str]:
  if files.SPLIT_PLACEHOLDER in root:
    folders = tf.io.gfile.glob(os.path.join(
        root.replace(files.SPLIT_PLACEHOLDER, '*'), '*'))
  else:
    folders = [os.path.join(folder, name) for name in tf.io.gfile.listdir(folder)]
  return sorted({os.path.basename(f.rstrip('/')) for f in folders
                 if tf.io.gfile.isdir(f)})


def _stable_order(paths: Sequence[str], folder: str) -> List[str]:
  def key(path):
    relative = os.path.relpath(path, folder).replace(os.sep, '/')
    return hashlib.sha1(relative.encode('utf-8')).hexdigest(), relative
  return sorted(paths, key=key)


def _source(name: str, split: str, paths: List[str], labels: List[int],
            num_classes: int, channels: int, skip_corrupt: bool,
            labeled: bool, class_names: Optional[Tuple[str, ...]] = None
            ) -> Source:
  base, start, stop = slice_bounds(split, {split_name(split): len(paths)})
  del base
  paths, labels = paths[start:stop], labels[start:stop]
  paths_tensor = tf.constant(paths)
  records = tf.data.Dataset.from_tensor_slices(
      (paths_tensor, tf.constant(labels, tf.int64)))

  def decode(path, label):
    return {'image': decoding.decode_image(tf.io.read_file(path), channels),
            'label': label}

  dataset, corrupt = decoding.decode_examples(
      records, len(paths), lambda element: decode(*element),
      lambda position: paths_tensor[position], source_name=name,
      channels=channels, skip_corrupt=skip_corrupt)
  return Source(name=name, dataset=dataset, num_examples=len(paths),
                num_classes=num_classes, channels=channels, labeled=labeled,
                decoded_bytes=_decoded_bytes(paths, channels), corrupt=corrupt,
                class_names=class_names)


def _decoded_bytes(paths: List[str], channels: int):
  """len(paths) x the mean decoded size of a few evenly spaced images."""
  step = max(1, len(paths) // _SIZE_SAMPLES)
  pixels = []
  for path in paths[::step][:_SIZE_SAMPLES]:
    try:
      shape = decoding.decode_image(tf.io.read_file(path), channels).shape
    except tf.errors.OpError:
      continue  # a corrupt image: the pipeline names or skips it later
    pixels.append(shape[0] * shape[1])
  if not pixels:
    return None
  return int(len(paths) * sum(pixels) / len(pixels) * channels)


@DATASETS.register(denylist=('split', 'skip_corrupt'))
def image_folder(split: str, root: str = gin.REQUIRED, channels: int = 3,
                 skip_corrupt: bool = False) -> Source:
  """Images in one subfolder per class (JPEG/PNG); classes in sorted order.

  Args:
    root: folder of class subfolders; may contain {split}, e.g. '/data/pets/{split}'.
    channels: 3 (RGB) or 1 (grayscale): images are decoded to this many.
  """
  key = 'image_folder.root'
  folder = _split_root(root, split, key)
  classes = _class_names(root, folder)
  if not classes:
    raise UserError(
        f'{key} = {root!r}: {folder!r} (split {split!r}) has no class '
        'subfolders; image_folder expects one subfolder of images per class. '
        'For images without classes use unlabeled_image_folder.')
  pairs: List[Tuple[str, int]] = []
  for label, name in enumerate(classes):
    class_folder = os.path.join(folder, name)
    if tf.io.gfile.isdir(class_folder):
      pairs += [(path, label)
                for path in _class_images(class_folder, root, split, key)]
  if not pairs:
    raise UserError(f'{key} = {root!r}: the class folders of {folder!r} (split '
                    f'{split!r}) hold no {"/".join(IMAGE_EXTENSIONS)} images.')
  label_of = dict(pairs)
  paths = _stable_order(label_of, folder)
  return _source(f'image_folder:{split}', split, paths,
                 [label_of[p] for p in paths], len(classes), channels,
                 skip_corrupt, labeled=True, class_names=tuple(classes))


@DATASETS.register(denylist=('split', 'skip_corrupt'))
def unlabeled_image_folder(split: str, root: str = gin.REQUIRED,
                           num_classes: int = gin.REQUIRED, channels: int = 3,
                           skip_corrupt: bool = False) -> Source:
  """Every image under a folder (JPEG/PNG), label -1: for distillation.

  Args:
    root: folder of images, at any depth; may contain {split}.
    num_classes: the teacher's number of classes.
    channels: 3 (RGB) or 1 (grayscale): images are decoded to this many.
  """
  key = 'unlabeled_image_folder.root'
  folder = _split_root(root, split, key)
  paths = _stable_order(_images_under(folder), folder)
  if not paths:
    raise UserError(f'{key} = {root!r}: {folder!r} (split {split!r}) holds no '
                    f'{"/".join(IMAGE_EXTENSIONS)} images, at any depth.')
  return _source(f'unlabeled_image_folder:{split}', split, paths,
                 [UNLABELED] * len(paths), num_classes, channels, skip_corrupt,
                 labeled=False)
