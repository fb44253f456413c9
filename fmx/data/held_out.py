"""The held-out test images never appear in a split a run learns from.

Splits are slices of fixed orders, and a run may train on one dataset and be
tested on another (out-of-domain distillation data): a wrong slice or a
dataset that contains the other's images would put test images into training
without any error, and every number the run reports would be optimistic. So
the check compares the images themselves, by a digest of their decoded
pixels, not their indices. It reads every image of the splits once: cheap
for in-memory datasets (MNIST, digits: well under a second), minutes for
decoded-JPEG datasets, hence opt-in (`Data.check_held_out = True`).
"""

import hashlib
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from fmx.data.source import Source
from fmx.errors import UserError

# The splits a run learns from or selects models on; 'test' must stay unseen.
LEARNED_FROM = ('train', 'eval')
_DESCRIPTION = {'train': 'training (distillation) split',
                'eval': 'validation split'}


def image_digests(source: Source, batch_size: int = 1024) -> Dict[bytes, int]:
  """Digest of each image's pixels and shape -> its first position in `source`."""
  digests: Dict[bytes, int] = {}
  position = 0
  for batch in source.dataset.map(lambda example: example['image']).batch(
      batch_size).as_numpy_iterator():
    for image in batch:
      digest = hashlib.sha1(repr(image.shape).encode() +
                            np.ascontiguousarray(image).tobytes()).digest()
      digests.setdefault(digest, position)
      position += 1
  return digests


def shared_images(source: Source, test: Source,
                  test_digests: Optional[Dict[bytes, int]] = None
                  ) -> List[Tuple[int, int]]:
  """(position in source, position in test) of every image both hold."""
  if test_digests is None:
    test_digests = image_digests(test)
  return sorted((position, test_digests[digest])
                for digest, position in image_digests(source).items()
                if digest in test_digests)


def check_held_out(sources: Mapping[str, Source]) -> None:
  """Raises UserError if the 'test' source shares an image with 'train' or 'eval'."""
  test = sources['test']
  test_digests = image_digests(test)
  for which in LEARNED_FROM:
    shared = shared_images(sources[which], test, test_digests)
    if shared:
      examples = ', '.join(f'{which} #{i} = test #{j}' for i, j in shared[:3])
      raise UserError(
          f'{len(shared)} held-out test image(s) of {test.name!r} also appear '
          f'in the {_DESCRIPTION[which]} {sources[which].name!r} ({examples}'
          f'{", ..." if len(shared) > 3 else ""}): results on that test set '
          'would be optimistic. Choose splits that do not overlap (Data.'
          f'{"train" if which == "train" else "eval"}_split, Data.test_split).')
