"""Why study 5's out-of-domain students fail on MNIST: where they match the teacher.

    python -m fmx.reproduce.domain_check      # after `make reproduce`, ~1 min

Function matching makes the student match the teacher on the images it is
shown. This measures, on held-out images of *both* domains, how closely each
of study 5's students (distilled on MNIST or on scikit-learn's digits, 200
and 1,000 images, 3 seeds) agrees with the teacher, and how well the teacher
itself reads scikit-learn's digits. A student that agrees with the teacher
on held-out digits of its own domain but not on the other's has matched the
function where its data was, and only there. Writes
docs/results_domain_check.json; docs/results_discussion.md quotes it.
"""

import glob
import json
import os
import statistics
import sys

import numpy as np

import fmx
from fmx.reproduce import studies as studies_lib

OUT = 'docs/results_domain_check.json'
_RUN = ('{root}/distill/train_dataset={dataset},train_split=train_{size},'
        'epochs={epochs},teaching=function_matching,mixup=mixup_roll,'
        'coefficient=uniform,name=adamw,seed=*')


def _top1(logits) -> np.ndarray:
  return np.argmax(logits, -1)


def check(root: str = studies_lib.FULL.root) -> dict:
  from fmx.data import sklearn_digits  # pylint: disable=g-import-not-at-top
  digits = list(sklearn_digits.sklearn_digits('test').dataset.as_numpy_iterator())
  images = {'scikit-learn digits test (500)': (
      np.stack([d['image'] for d in digits]), np.array([d['label'] for d in digits]))}
  teacher = fmx.load_run(studies_lib.TEACHER_RUN)
  images['MNIST test (1,000)'] = teacher.examples('test')
  teacher_top1 = {name: _top1(teacher.predict(x)) for name, (x, _) in images.items()}
  result = {'teacher top-1': {name: float(np.mean(teacher_top1[name] == y))
                              for name, (_, y) in images.items()},
            'students': {}}
  for size in (200, 1000):
    for dataset in ('mnist_embedded', 'sklearn_digits'):
      runs = sorted(glob.glob(_RUN.format(root=root, dataset=dataset, size=size,
                                          epochs=studies_lib.IMAGES_SEEN // size)))
      agreements = {name: [] for name in images}
      for run_dir in runs:
        student = fmx.load_run(run_dir)
        for name, (x, _) in images.items():
          agreements[name].append(float(np.mean(
              _top1(student.predict(x)) == teacher_top1[name])))
      result['students'][f'distilled on {dataset}, {size} images'] = {
          name: {'mean': statistics.mean(values), 'std': statistics.stdev(values),
                 'n': len(values), 'values': values}
          for name, values in agreements.items() if len(values) > 1}
  return result


def main() -> int:
  result = check()
  for name, top1 in result['teacher top-1'].items():
    print(f'teacher top-1 on {name}: {100 * top1:.1f}%')
  for student, agreements in result['students'].items():
    shown = '; '.join(f'{name}: {100 * a["mean"]:.1f} ± {100 * a["std"]:.1f}% '
                      f'(n = {a["n"]})' for name, a in agreements.items())
    print(f'{student}: agreement with the teacher on {shown}')
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  with open(OUT, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'wrote {OUT}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
