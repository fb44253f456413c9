"""The seven studies of docs/results.md: their grids, cells, tests and claims.

A study runs one or more `fmx grid` files of experiments/reproduce/ and reads
their points back as *cells*: the runs that share every value but the seed.
Every MNIST distillation grid declares the same axis keys (DISTILL_KEYS, in
that order) and runs in one root, so a point that two studies share has one
folder and runs once. Claims are judged mechanically from the measurements
(Welch's t-test, p < ALPHA), never by hand.
"""

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from fmx import compare
from fmx.errors import UserError

TEACHER_RUN = 'runs/reproduce/teacher'  # gin/reproduce/distillation.gin's
ALPHA = 0.05
SEEDS = (0, 1, 2)

SPLIT_EPOCHS = 'Data.train_split, Training.epochs'
MIXUP = 'Data.mixup, augmentations.mixup_roll.coefficient'
DISTILL_KEYS = ('Data.train_dataset', SPLIT_EPOCHS, 'distillation.teaching',
                MIXUP, 'Optimizer.name', 'Training.seed')
LABELS_KEYS = (SPLIT_EPOCHS, 'Optimizer.learning_rate', 'Training.seed')

# Every distillation set sees 60,000 images (469 steps of 128): the cost of a
# run does not depend on the set's size, and neither does the schedule.
IMAGES_SEEN = 60_000
SIZES = (100, 200, 500, 1000)
MODES = ('fixed_teacher', 'independent_noise', 'consistent', 'function_matching')
PATIENCE_EPOCHS = (30, 100, 300, 1000)
# Consistent teaching is left out of the patience study for time: its
# 1000-epoch runs alone would cost ~9 min (time plan: fmx/reproduce/results_page.py).
PATIENCE_MODES = ('function_matching', 'fixed_teacher')
# Study 7's teachers: every study's teacher, and the same trained with seed 1.
ENSEMBLE_TEACHERS = (TEACHER_RUN, 'runs/reproduce/teacher_seed1')
# (label, (Data.mixup, augmentations.mixup_roll.coefficient)). A random
# permutation partner (mixup_permute) is left out for time.
MIXUP_ARMS = (('reverse, uniform', ('mixup_reverse', 'uniform')),
              ('roll, uniform', ('mixup_roll', 'uniform')),
              ('roll, folded Beta(1, 1)', ('mixup_roll', 'beta')))
MODE_NAMES = {'function_matching': 'function matching',
              'consistent': 'consistent teaching',
              'independent_noise': 'independent noise',
              'fixed_teacher': 'fixed teacher'}


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where the runs go and how long they are: the full study or a quick one."""
  root: str = 'runs/reproduce'
  images_seen: int = IMAGES_SEEN
  sizes: Tuple[int, ...] = SIZES
  numbers: Tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)  # the studies it runs
  page: str = 'docs/results.md'  # figures/ and results.json go beside it

  def split_epochs(self, size: int, epochs: Optional[int] = None):
    """The linked (split, epochs) value of a distillation set of `size` images."""
    return (f'train[:{size}]', epochs or self.images_seen // size)

  def axes(self, axes: Dict[str, list]) -> Dict[str, list]:
    """A grid file's axes for this plan: its sizes, epochs scaled to images_seen."""
    if SPLIT_EPOCHS not in axes:
      return dict(axes)
    scaled = [(split, epochs * self.images_seen // IMAGES_SEEN)
              for split, epochs in axes[SPLIT_EPOCHS]
              if int(split.split(':')[1].rstrip(']')) in self.sizes]
    return dict(axes, **{SPLIT_EPOCHS: scaled})


FULL = Plan()
# `make reproduce-quick`: studies 1 and 2, two set sizes, a quarter of the steps.
QUICK = Plan(root='runs/reproduce-quick', images_seen=IMAGES_SEEN // 4,
             sizes=(200, 1000), numbers=(1, 2),
             page='runs/reproduce-quick/results.md')


@dataclasses.dataclass(frozen=True)
class GridRun:
  gin: str   # an experiments/reproduce/ grid file
  root: str  # where its points run


@dataclasses.dataclass(frozen=True)
class Cell:
  """The runs of one grid whose values match `where` (any seed).

  With `tune`, the cell is the value of that key whose runs reach the best
  mean validation top-1 (model selection never looks at the test split).
  """
  label: str
  root: str
  where: Dict[str, object]
  tune: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Claim:
  text: str
  paper: str
  # stats (cell label -> metric -> values, plus 'tests') -> (measured, verdict)
  judge: Callable[[dict], Tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Study:
  number: int
  title: str
  question: str
  grids: Tuple[GridRun, ...]
  cells: Tuple[Cell, ...]
  comparisons: Tuple[Tuple[str, str], ...]  # (cell a, cell b): Welch's t-test
  claims: Tuple[Claim, ...]
  # Why the study cannot run with this fmx (a missing feature), or None.
  missing: Callable[[], Optional[str]] = lambda: None
  figure: Optional[str] = None  # 'sizes', 'patience' or None


def distill_cell(plan: Plan, label, size=200, epochs=None,
                 dataset='mnist_embedded', teaching='function_matching',
                 mixup=('mixup_roll', 'uniform'), optimizer='adamw') -> Cell:
  split, epochs = plan.split_epochs(size, epochs)
  return Cell(label, f'{plan.root}/distill', {
      'Data.train_dataset': dataset, 'Data.train_split': split,
      'Training.epochs': epochs, 'distillation.teaching': teaching,
      'Data.mixup': mixup[0], 'augmentations.mixup_roll.coefficient': mixup[1],
      'Optimizer.name': optimizer})


def labels_cell(plan: Plan, label, size=200) -> Cell:
  split, epochs = plan.split_epochs(size)
  return Cell(label, f'{plan.root}/labels', {'Data.train_split': split,
                                             'Training.epochs': epochs},
              tune='Optimizer.learning_rate')


# --- judging claims -------------------------------------------------------

def _mean(stats, cell, metric='top1'):
  values = stats['cells'][cell].get(metric) or []
  return sum(values) / len(values) if values else math.nan


def _p(stats, a, b, metric='top1'):
  return compare.welch_test(stats['cells'][a].get(metric) or [],
                            stats['cells'][b].get(metric) or [])[1]


def better(a: str, b: str, metric: str = 'top1', higher: bool = True):
  """Claim 'a beats b on metric': yes if significantly so, no if
  significantly the opposite, 'not resolved' otherwise."""
  def judge(stats):
    mean_a, mean_b, p = _mean(stats, a, metric), _mean(stats, b, metric), _p(stats, a, b, metric)
    if math.isnan(mean_a) or math.isnan(mean_b):
      return 'not measured', 'not run'
    diff = mean_a - mean_b
    measured = f'{a} - {b}: ' + (f'{diff:+.4f} KL' if metric == 'kl' else
                                 f'{100 * diff:+.2f} pt {metric}') + f' (p = {p:.3g})'
    if math.isnan(p) or p >= ALPHA:
      return measured, 'not resolved (p >= 0.05)'
    return measured, 'yes' if (diff > 0) == higher else 'no'
  return judge


def every(*judges):
  """A claim made of several comparisons: yes if all agree, no if any disagrees."""
  def judge(stats):
    results = [j(stats) for j in judges]
    verdicts = [v for _, v in results]
    verdict = ('yes' if all(v == 'yes' for v in verdicts) else
               'no' if any(v == 'no' for v in verdicts) else
               'not run' if all(v == 'not run' for v in verdicts) else
               'partly' if any(v == 'yes' for v in verdicts) else
               'not resolved (p >= 0.05)')
    return '; '.join(m for m, _ in results), verdict
  return judge


def same(a: str, b: str, metric: str = 'top1'):
  """Claim 'a and b give the same result': yes unless significantly different."""
  def judge(stats):
    measured, verdict = better(a, b, metric)(stats)
    if verdict == 'not run':
      return measured, verdict
    return measured, 'yes' if verdict.startswith('not resolved') else 'no'
  return judge


def first_epochs_reaching(fast_cells, target_cell, target_epochs: int,
                          speedup: float, metric='agreement'):
  """Claim 'fast reaches the target's final metric in `speedup` x fewer epochs'.

  yes: reached within target_epochs / speedup; partly: in fewer epochs than
  the target, but not that few; no: only at the target's epochs, or never.
  """
  def judge(stats):
    target = _mean(stats, target_cell, metric)
    reached = [(epochs, cell) for epochs, cell in fast_cells
               if _mean(stats, cell, metric) >= target]
    if math.isnan(target):
      return 'not measured', 'not run'
    if not reached:
      return f'never reached {100 * target:.2f}% {metric} within the grid', 'no'
    epochs, cell = min(reached)
    measured = (f'reached {100 * target:.2f}% {metric} ({target_cell}) at '
                f'{epochs} epochs ({cell}): {target_epochs / epochs:.1f}x fewer '
                'epochs')
    if epochs <= target_epochs / speedup:
      return measured, 'yes'
    return measured, 'partly' if epochs < target_epochs else 'no'
  return judge


# --- missing features -------------------------------------------------------

def _missing_shampoo() -> Optional[str]:
  from fmx.training import settings  # pylint: disable=g-import-not-at-top
  try:
    settings.Optimizer(name='shampoo', learning_rate=1e-3)
  except UserError:
    return "fmx has no Shampoo optimiser yet (Optimizer.name = 'shampoo', issue 19)"
  return None


def _missing_ensembles() -> Optional[str]:
  import inspect  # pylint: disable=g-import-not-at-top
  from fmx.tasks import distillation  # pylint: disable=g-import-not-at-top
  if 'teacher_runs' not in inspect.signature(distillation.DistillationTask).parameters:
    return 'fmx distils from one teacher only (distillation.teacher_runs, issue 22)'
  return None


# --- the studies -----------------------------------------------------------

def studies(plan: Plan = FULL) -> List[Study]:
  """Every study, its cells and grid roots placed by `plan`."""
  fm = 'function_matching'
  distill, labels = f'{plan.root}/distill', f'{plan.root}/labels'
  sizes_fm = [distill_cell(plan, f'function matching, {n} images', size=n)
              for n in plan.sizes]
  sizes_labels = [labels_cell(plan, f'labels only, {n} images', size=n)
                  for n in plan.sizes]
  modes = [distill_cell(plan, MODE_NAMES[m], teaching=m) for m in MODES]
  patience = [distill_cell(plan, f'{MODE_NAMES[m]}, {e} epochs', epochs=e,
                           teaching=m)
              for m in PATIENCE_MODES for e in PATIENCE_EPOCHS]
  mixups = [distill_cell(plan, label, mixup=value) for label, value in MIXUP_ARMS]
  ood = [distill_cell(plan, f'{name}, {n} images', size=n, dataset=dataset)
         for n in (200, 1000)
         for name, dataset in (('MNIST', 'mnist_embedded'),
                               ('scikit-learn digits (unlabeled)', 'sklearn_digits'))]
  shampoo_epochs = (75, 150, 300)
  optimisers = [distill_cell(plan, f'{name}, {e} epochs', epochs=e, optimizer=opt)
                for opt, name in (('adamw', 'Adam'), ('shampoo', 'Shampoo'))
                for e in shampoo_epochs]
  ensemble_root = f'{plan.root}/ensemble'
  ensembles = [Cell(label, ensemble_root, {'distillation.teacher_runs': list(runs)})
               for label, runs in (('one teacher', ENSEMBLE_TEACHERS[:1]),
                                   ('two teachers', ENSEMBLE_TEACHERS))]
  last = PATIENCE_EPOCHS[-1]
  return [
      Study(1, 'Does distillation help?',
            'A student distilled by function matching against the same student '
            'trained on the labels of the same images (own tuned learning rate, '
            'same augmentation, same steps), across distillation set sizes.',
            (GridRun('experiments/reproduce/01_distillation_helps.gin', distill),
             GridRun('experiments/reproduce/01_labels_only.gin', labels)),
            tuple(c for pair in zip(sizes_labels, sizes_fm) for c in pair),
            tuple((f.label, l.label) for f, l in zip(sizes_fm, sizes_labels)),
            (Claim('A student distilled from a good teacher beats the same '
                   'student trained on labels',
                   'yes, on every dataset (ImageNet ResNet-50: 82.8% top-1 '
                   'distilled)',
                   every(*[better(f.label, l.label)
                           for f, l in zip(sizes_fm, sizes_labels)])),),
            figure='sizes'),
      Study(2, 'Four ways to teach',
            "The paper's Figure 3 study: what the teacher and the student see, "
            'at one schedule (200 images, 300 epochs).',
            (GridRun('experiments/reproduce/02_teaching_modes.gin', distill),),
            tuple(modes),
            tuple((MODE_NAMES[fm], MODE_NAMES[m]) for m in MODES if m != fm),
            (Claim('Function matching gives the best student',
                   'function matching best (the Figure 3 study)',
                   every(*[better(MODE_NAMES[fm], MODE_NAMES[m])
                           for m in MODES if m != fm])),
             Claim('Function matching matches the teacher most closely (lower KL)',
                   'not reported as such; implied by the top-1 ranking',
                   every(*[better(MODE_NAMES[fm], MODE_NAMES[m], 'kl', higher=False)
                           for m in MODES if m != fm])),
             Claim('The fixed teacher is the worst way to teach',
                   'fixed teacher worst: it overfits (the Figure 3 study)',
                   every(*[better(MODE_NAMES[m], MODE_NAMES['fixed_teacher'])
                           for m in MODES if m != 'fixed_teacher'])))),
      Study(3, 'Patience',
            'Test top-1 against the length of distillation (separate runs with '
            'their own schedule), for function matching and the fixed teacher, '
            'on 200 images; with the final training loss.',
            (GridRun('experiments/reproduce/03_patience.gin', distill),),
            tuple(patience),
            tuple((f'{MODE_NAMES[m]}, {last} epochs', f'{MODE_NAMES[m]}, 300 epochs')
                  for m in PATIENCE_MODES) +
            ((f'function matching, {last} epochs', f'fixed teacher, {last} epochs'),),
            (Claim('Function matching keeps improving with longer schedules',
                   'keeps improving over thousands of epochs',
                   better(f'function matching, {last} epochs',
                          'function matching, 300 epochs')),
             Claim('The fixed teacher stops improving (overfits) on long schedules',
                   'fixed teacher overfits: its test accuracy falls while its '
                   'training loss keeps falling',
                   better('fixed teacher, 300 epochs', f'fixed teacher, {last} epochs',
                          higher=True)),
             Claim('On long schedules function matching beats the fixed teacher',
                   'yes',
                   better(f'function matching, {last} epochs',
                          f'fixed teacher, {last} epochs'))),
            figure='patience'),
      Study(4, 'MixUp variants',
            "The original implementation's MixUp partner (reverse: n/2 distinct "
            'pairs per batch) against roll (n pairs), and big_vision\'s folded '
            'Beta(1, 1) coefficient against Uniform(0, 1), on one device (batch '
            '128: reverse has 64 distinct pairs per batch, roll 128).',
            (GridRun('experiments/reproduce/04_mixup.gin', distill),),
            tuple(mixups),
            (('roll, uniform', 'reverse, uniform'),
             ('roll, folded Beta(1, 1)', 'roll, uniform')),
            (Claim('Roll (n distinct pairs) beats reverse (n/2 pairs)',
                   "not in the paper (big_vision uses roll; the original code "
                   'reverse)', better('roll, uniform', 'reverse, uniform')),
             Claim('Folded Beta(1, 1) and Uniform(0, 1) give the same student',
                   'same pair weights in distribution (big_vision vs original)',
                   same('roll, folded Beta(1, 1)', 'roll, uniform')))),
      Study(5, 'Out-of-domain distillation data',
            'The MNIST teacher distilled on unlabeled scikit-learn digits '
            '(other writers, other scanning, upscaled from 8x8) against on MNIST '
            'itself, the same number of images and steps.',
            (GridRun('experiments/reproduce/05_out_of_domain.gin', distill),
             GridRun('experiments/reproduce/01_labels_only.gin', labels)),
            tuple(ood) + (labels_cell(plan, 'labels only, 200 images', 200),),
            (('MNIST, 200 images', 'scikit-learn digits (unlabeled), 200 images'),
             ('MNIST, 1000 images', 'scikit-learn digits (unlabeled), 1000 images'),
             ('scikit-learn digits (unlabeled), 200 images', 'labels only, 200 images')),
            (Claim('In-domain distillation data is better than out-of-domain data',
                   'yes: out-of-domain images transfer less',
                   every(better('MNIST, 200 images',
                                'scikit-learn digits (unlabeled), 200 images'),
                         better('MNIST, 1000 images',
                                'scikit-learn digits (unlabeled), 1000 images'))),
             Claim('Unlabeled out-of-domain images can beat training on labels',
                   'out-of-domain distillation still gives a useful student',
                   better('scikit-learn digits (unlabeled), 200 images',
                          'labels only, 200 images')))),
      Study(6, 'Optimiser: Shampoo against Adam',
            "Epochs Shampoo needs to reach the Adam run's final agreement "
            '(200 images).',
            (GridRun('experiments/reproduce/06_shampoo.gin', distill),),
            tuple(optimisers),
            tuple((f'Shampoo, {e} epochs', f'Adam, {e} epochs') for e in shampoo_epochs),
            (Claim("Shampoo reaches Adam's final agreement about 4x faster",
                   'about 4x fewer steps',
                   first_epochs_reaching(
                       [(e, f'Shampoo, {e} epochs') for e in shampoo_epochs],
                       f'Adam, {shampoo_epochs[-1]} epochs', shampoo_epochs[-1],
                       speedup=4)),),
            missing=_missing_shampoo),
      Study(7, 'An ensemble of two teachers',
            'The student distilled from two teachers (the teacher trained with '
            'seeds 0 and 1; their averaged probabilities) against from one (seed '
            '0), by function matching on 200 images for 300 epochs. Agreement '
            'and KL are with the ensemble for the two-teacher runs.',
            (GridRun('experiments/reproduce/07_ensemble.gin', ensemble_root),),
            tuple(ensembles), (('two teachers', 'one teacher'),),
            (Claim('Distilling from an ensemble of two teachers beats one teacher',
                   'not studied in the paper (big_vision\'s trainer takes a list '
                   'of teachers; ensembles are the classic stronger teacher, '
                   'Hinton et al. 2015)',
                   better('two teachers', 'one teacher')),),
            missing=_missing_ensembles),
  ]


def by_number(plan: Plan, numbers: Sequence[int]) -> List[Study]:
  known = {s.number: s for s in studies(plan)}
  unknown = [n for n in numbers if n not in known]
  if unknown:
    raise UserError(f'no study {unknown}; the studies are {sorted(known)}.')
  return [known[n] for n in numbers]
