"""TensorFlow Datasets image-classification sets (Flowers102, Pet37, Food101).

These need the data prepared in `data_dir` (local or gs://). When it is not
there, the entry downloads and prepares it only if it may and can:

- `download = None` (default) downloads into a local data_dir, never into a
  remote one (gs://...): a bucket is where TPU hosts share data prepared once
  with `tfds build`; a training job should not write a dataset into it.
- Before downloading, a connectivity probe (a TCP connection to the dataset's
  download host or TFDS' mirror, at most fmx.data.network.PROBE_SECONDS)
  tells a machine without network within seconds. Without it, TFDS retries
  for minutes before failing. A gs:// data_dir is probed the same way.

Either way an unprepared dataset is a UserError naming data_dir and saying how
to prepare it on another machine. Tests use `tfds.testing.mock_data`.
"""

from typing import Optional
from urllib.parse import urlparse

import tensorflow as tf

from fmx.data import network
from fmx.data.source import Source
from fmx.errors import UserError
from fmx.registry import DATASETS

# TFDS fetches many datasets from its own mirror before their homepage.
_TFDS_MIRROR = network.CLOUD_STORAGE_HOST


def should_download(data_dir: Optional[str], download: Optional[bool]) -> bool:
  """`download`, or for None: True unless data_dir is remote (gs://...)."""
  if download is not None:
    return bool(download)
  return not (data_dir and '://' in data_dir)


def _download_hosts(builder) -> list:
  homepage = urlparse(builder.info.homepage or '').hostname
  return [h for h in (homepage, _TFDS_MIRROR) if h]


def _not_prepared(name: str, where: str, reason: str) -> UserError:
  return UserError(
      f'TFDS dataset {name!r} is not prepared in data_dir {where!r} and '
      f'{reason}. Prepare it on a machine with network access: `tfds build '
      f'{name} --data_dir=DIR` (or tfds.load({name!r}, data_dir=DIR)), copy '
      f'DIR/{name} into {where!r} here (or a gs:// bucket), and point the '
      f"entry's data_dir at it (e.g. `{name}.data_dir = '...'` or "
      "`tfds.data_dir`, in the `train/` or `eval/` scope if they differ).")


def _prepared_dataset(builder, name: str, split: str, data_dir: Optional[str],
                      download: Optional[bool]) -> tf.data.Dataset:
  import tensorflow_datasets as tfds_lib  # pylint: disable=g-import-not-at-top
  where = data_dir or tfds_lib.core.constants.DATA_DIR
  try:
    return builder.as_dataset(split=split, shuffle_files=False)
  except AssertionError:
    pass  # TFDS: "could not find data in <data_dir>"; tried below
  if not should_download(data_dir, download):
    reason = ('downloading is off (tfds.download = False)' if download is False
              else 'fmx does not download into a remote data_dir')
    raise _not_prepared(name, where, reason)
  hosts = _download_hosts(builder)
  if not network.reachable(hosts):
    raise _not_prepared(name, where, f'this machine cannot reach '
                        f'{" or ".join(hosts)} to download it (no connection '
                        f'within {network.PROBE_SECONDS:.0f} s)')
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise _not_prepared(name, where, f'downloading it failed ({e})') from e
  return builder.as_dataset(split=split, shuffle_files=False)


@DATASETS.register(denylist=('split',))
def tfds(split: str, name: str = 'oxford_iiit_pet',
         data_dir: Optional[str] = None,
         download: Optional[bool] = None) -> Source:
  """Any TFDS image-classification dataset, by name (`tfds.name = '...'`).

  Args:
    name: the TFDS name, e.g. 'oxford_iiit_pet' or 'cifar10'.
    data_dir: folder (or gs:// bucket) of prepared TFDS data; None: ~/tensorflow_datasets.
    download: download if not prepared; None: only into a local data_dir.
  """
  import tensorflow_datasets as tfds_lib  # pylint: disable=g-import-not-at-top
  if data_dir:
    network.require_cloud_storage(
        data_dir, f'{name}.data_dir' if name in DATASETS else 'tfds.data_dir')
  try:
    builder = tfds_lib.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'TFDS dataset {name!r} could not be found ({e}). Check '
                    'the name in `tfds.name`.') from None
  info = builder.info
  try:
    dataset = _prepared_dataset(builder, name, split, data_dir, download)
    num_examples = (info.splits[split].num_examples if info.splits
                    # Mocked builders (tfds.testing.mock_data) have no split
                    # metadata; their few examples are cheap to count.
                    else int(dataset.reduce(0, lambda n, _: n + 1)))
  except (KeyError, ValueError) as e:
    raise UserError(f'TFDS dataset {name!r} has no split {split!r} ({e}); '
                    f'its splits are {sorted(info.splits)}.') from None
  if num_examples == 0:
    raise UserError(f'split {split!r} of TFDS dataset {name!r} has no '
                    'examples; check the split and its slice.')
  dataset = dataset.map(
      lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int64)})
  return Source(name=f'{name}:{split}', dataset=dataset,
                num_examples=num_examples,
                num_classes=info.features['label'].num_classes,
                channels=info.features['image'].shape[-1] or 3,
                class_names=tuple(info.features['label'].names))


@DATASETS.register(denylist=('split',))
def oxford_flowers102(split: str, data_dir: Optional[str] = None) -> Source:
  """Oxford Flowers102 from TFDS (102 classes).

  Args:
    data_dir: folder (or gs:// bucket) of prepared TFDS data; None: ~/tensorflow_datasets.
  """
  return tfds(split, name='oxford_flowers102', data_dir=data_dir)


@DATASETS.register(denylist=('split',))
def oxford_iiit_pet(split: str, data_dir: Optional[str] = None) -> Source:
  """Oxford-IIIT Pet37 from TFDS (37 classes).

  Args:
    data_dir: folder (or gs:// bucket) of prepared TFDS data; None: ~/tensorflow_datasets.
  """
  return tfds(split, name='oxford_iiit_pet', data_dir=data_dir)


@DATASETS.register(denylist=('split',))
def food101(split: str, data_dir: Optional[str] = None) -> Source:
  """Food101 from TFDS (101 classes).

  Args:
    data_dir: folder (or gs:// bucket) of prepared TFDS data; None: ~/tensorflow_datasets.
  """
  return tfds(split, name='food101', data_dir=data_dir)
