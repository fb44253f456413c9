"""A run's class names: shown at its start, kept in its folder, exported.

Label k's name comes from the data (a class folder, TFDS' label names,
`tfrecords.class_names`), else from the teacher run a distillation run
learns from (unlabeled images have no names of their own), else it is
'class k'. The run folder keeps them in labels.txt, one per line, label 0
first: `fmx predict` and the SavedModel export read them from there.
"""

import os
from typing import List, Optional

import tensorflow as tf

from fmx.training.run_dir import write_text

LABELS_FILE = 'labels.txt'
_SHOWN = 10  # names printed at start; the rest are counted


def read(model_dir: str) -> Optional[List[str]]:
  """The names in model_dir/labels.txt, or None for a run without one."""
  path = os.path.join(model_dir, LABELS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return [line.rstrip('\n') for line in f if line.strip()]


def of_task(task) -> List[str]:
  """Label k's name for the data a task trains on (see the module docstring)."""
  for which in ('train', 'eval'):
    source = task.sources[which]
    if source.labeled and source.class_names:
      return list(source.class_names)
  teacher_run = getattr(task, 'teacher_run', None)
  names = read(teacher_run) if teacher_run else None
  if names and len(names) == task.num_classes:
    return names
  return task.sources['train'].label_names()


def summary(task, names: List[str]) -> str:
  """'data: 3 classes: circle, square, triangle; 84 train / 36 test images'."""
  shown = ', '.join(names[:_SHOWN]) + (
      f', ... ({len(names)} in all)' if len(names) > _SHOWN else '')
  sources = task.sources
  counts = [f'{sources["train"].num_examples:,} train']
  if sources['eval'].name != sources['test'].name:
    counts.append(f'{sources["eval"].num_examples:,} eval')
  counts.append(f'{sources["test"].num_examples:,} test')
  return (f'data: {sources["train"].name}, {len(names)} classes: {shown}; '
          f'{" / ".join(counts)} images')


def announce(task, model_dir: str) -> None:
  """Prints what a run trains on and writes its labels.txt (the chief only)."""
  names = of_task(task)
  print(summary(task, names), flush=True)
  write_text(os.path.join(model_dir, LABELS_FILE), ''.join(f'{n}\n' for n in names))
