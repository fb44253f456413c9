"""Which of a user's `--bind` values a teacher run trained first inherits.

A distillation run whose teacher run has not finished trains it first, from
the teacher's own gin file (`distillation.teacher_gin`). The teacher reads
the same data, on the same machines, as the student, so it inherits the
bindings that say where the data is and what runs it:

- `Data.*` and every dataset entry's parameters (`tfrecords.file_pattern`,
  `image_folder.root`, `oxford_flowers102.data_dir`, ..., scoped or not);
- `Runtime.*` (strategy, precision, threads), hence the cluster.

It does not inherit what describes the student's training: `Training.*`,
`Optimizer.*`, `Experiment.*`, `distillation.*`, backbones, losses and
augmentation parameters; the teacher's gin file sets its own.
"""

import re
from typing import List, Sequence

from fmx.registry import DATASETS

_INHERITED_CONFIGURABLES = ('Data', 'Runtime')
# 'scope/module.configurable.parameter = value': the configurable's own name.
_KEY = re.compile(r'^\s*(?:[\w.]+/)*(?:[\w.]+\.)?(\w+)\.\w+\s*=')


def inherited(bindings: Sequence[str]) -> List[str]:
  """The bindings of `bindings` that the teacher run trained first takes."""
  return [binding for binding in bindings if _inherits(binding)]


def _inherits(binding: str) -> bool:
  match = _KEY.match(binding)
  if not match:
    return False  # a macro, an include or an import: the student's own
  name = match[1]
  return name in _INHERITED_CONFIGURABLES or name in DATASETS
