"""Which of a user's `--bind` values a teacher run trained first inherits.

A distillation run whose teacher run has not finished trains it first, from
the teacher's own gin file (`distillation.teacher_gin`). The teacher reads
its data from the same places, on the same machines, as the student, so it
inherits the bindings that say where the data is and what runs it:

- every dataset entry's parameters (`tfrecords.file_pattern`,
  `image_folder.root`, `oxford_flowers102.data_dir`, ..., scoped or not);
- how `Data` reads, not what: `Data.cache`, `Data.skip_corrupt`,
  `Data.shuffle_buffer`, `Data.check_held_out`;
- `Runtime.*` (strategy, precision, threads), hence the cluster.

It does not inherit what describes the student's training: `Training.*`,
`Optimizer.*`, `Experiment.*`, `distillation.*`, backbones, losses,
augmentation parameters, nor the student's data recipe (`Data.train_split`,
`Data.train_dataset`, `Data.image_size`, `Data.mixup`, ...: a student
distilled on 200 images, or on unlabeled out-of-domain ones, must not make
its teacher train on them); the teacher's gin file sets its own.
"""

import re
from typing import List, Sequence

from fmx.registry import DATASETS

_DATA_READING = ('cache', 'skip_corrupt', 'shuffle_buffer', 'check_held_out')
# 'scope/module.configurable.parameter = value': configurable and parameter.
_KEY = re.compile(r'^\s*(?:[\w.]+/)*(?:[\w.]+\.)?(\w+)\.(\w+)\s*=')


def inherited(bindings: Sequence[str]) -> List[str]:
  """The bindings of `bindings` that the teacher run trained first takes."""
  return [binding for binding in bindings if _inherits(binding)]


def _inherits(binding: str) -> bool:
  match = _KEY.match(binding)
  if not match:
    return False  # a macro, an include or an import: the student's own
  name, parameter = match[1], match[2]
  if name == 'Data':
    return parameter in _DATA_READING
  return name == 'Runtime' or name in DATASETS
