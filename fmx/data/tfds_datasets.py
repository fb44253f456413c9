"""TensorFlow Datasets image-classification sets (Flowers102, Pet37, ...).

These need the data prepared in `data_dir` (local or gs://); users have the
network, this machine does not, so tests use `tfds.testing.mock_data`.
"""

from typing import Optional

import tensorflow as tf

from fmx.data.source import Source
from fmx.errors import UserError
from fmx.registry import DATASETS


@DATASETS.register(denylist=('split',))
def tfds(split: str, name: str = 'oxford_iiit_pet',
         data_dir: Optional[str] = None, download: bool = True) -> Source:
  """Any TFDS image-classification dataset, by name (`tfds.name = '...'`)."""
  import tensorflow_datasets as tfds_lib  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds_lib.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'TFDS dataset {name!r} could not be found ({e}). Check '
                    'the name in `tfds.name`.') from None
  if download:
    builder.download_and_prepare()
  elif not builder.is_prepared():
    raise UserError(
        f'TFDS dataset {name!r} is not prepared in data_dir {builder.data_dir!r}. '
        'Prepare it on a machine with network access (`tfds build '
        f'{name} --data_dir=...`) and point `tfds.data_dir` at the result.')
  info = builder.info
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    num_examples = (info.splits[split].num_examples if info.splits
                    # Mocked builders (tfds.testing.mock_data) have no split
                    # metadata; their few examples are cheap to count.
                    else int(dataset.reduce(0, lambda n, _: n + 1)))
  except (KeyError, ValueError) as e:
    raise UserError(f'TFDS dataset {name!r} has no split {split!r} ({e}); '
                    f'its splits are {sorted(info.splits)}.') from None
  dataset = dataset.map(
      lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int64)})
  return Source(name=f'{name}:{split}', dataset=dataset,
                num_examples=num_examples,
                num_classes=info.features['label'].num_classes,
                channels=info.features['image'].shape[-1] or 3)


@DATASETS.register(denylist=('split',))
def oxford_flowers102(split: str, data_dir: Optional[str] = None) -> Source:
  """Oxford Flowers102 from TFDS (102 classes)."""
  return tfds(split, name='oxford_flowers102', data_dir=data_dir)


@DATASETS.register(denylist=('split',))
def oxford_iiit_pet(split: str, data_dir: Optional[str] = None) -> Source:
  """Oxford-IIIT Pet37 from TFDS (37 classes)."""
  return tfds(split, name='oxford_iiit_pet', data_dir=data_dir)


@DATASETS.register(denylist=('split',))
def food101(split: str, data_dir: Optional[str] = None) -> Source:
  """Food101 from TFDS (101 classes)."""
  return tfds(split, name='food101', data_dir=data_dir)
