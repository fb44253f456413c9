"""Early stopping: end a run once its validation metric stops improving.

`Training.early_stopping_patience = N` ends training after N evaluations in
a row that did not improve `Training.early_stopping_metric` by more than
`Training.early_stopping_min_delta`: Keras' `EarlyStopping(patience=N)`, with
fmx's evaluations (`Training.evals` per run) in place of epochs. The run then
checkpoints the step it reached and is tested and finished like any other;
results.json says where and why it stopped (`early_stopped`).

A run killed and resumed recovers its earlier evaluations from its own
validation summaries, so patience counts across restarts, and a run that had
already decided to stop does not train on.
"""

from typing import Optional, Sequence

from fmx.errors import UserError

# Validation metrics that improve downwards; the others (top-1, agreement)
# improve upwards.
_LOWER_IS_BETTER = ('validation_loss', 'kl')


def direction(metric: str) -> str:
  """'min' or 'max': the way a validation metric improves."""
  return 'min' if metric in _LOWER_IS_BETTER or metric.endswith('loss') else 'max'


def check_metric(metric: str, task_name: str, logged: Sequence[str],
                 setting: str) -> None:
  """A UserError unless runs of `task_name` log `metric` at every evaluation."""
  if metric not in logged:
    raise UserError(f'{setting} names the validation metric {metric!r}, which '
                    f'{task_name} runs do not log; use one of '
                    f'{", ".join(logged)}.')


class EarlyStopping:
  """An Orbit eval action counting evaluations without improvement.

  It only records: the loop (fmx.training.run) reads `stopped` between an
  evaluation and the next stretch of training. (Raising from the action
  would also lose the evaluation's summaries, which Orbit writes after its
  actions.)
  """

  def __init__(self, metric: str, patience: int, min_delta: float,
               global_step, history=()):
    self.metric, self.patience, self.min_delta = metric, patience, min_delta
    self._global_step = global_step
    self._sign = 1.0 if direction(metric) == 'max' else -1.0
    self.best = self.best_step = None
    self.waited = 0
    for step, value in history:
      self.record(step, value)

  @property
  def stopped(self) -> bool:
    return self.waited >= self.patience

  def record(self, step: int, value: float) -> None:
    if self.best is None or self._sign * (value - self.best) > self.min_delta:
      self.best, self.best_step, self.waited = value, step, 0
    else:
      self.waited += 1

  def __call__(self, output) -> None:
    self.record(int(self._global_step.numpy()), float(output[self.metric]))

  def describe(self, step: int) -> str:
    return (f'early stopping at step {step}: validation {self.metric} has not '
            f'improved on {self.best:.4f} (step {self.best_step}) for '
            f'{self.patience} evaluation(s)')

  def summary(self, step: int) -> dict:
    """What results.json records of a run that stopped early."""
    return {'step': step, 'metric': self.metric, 'patience': self.patience,
            'best': self.best, 'best_step': self.best_step}


def for_run(training, task_name: str, task, model_dir: str, start_step: int,
            global_step) -> Optional[EarlyStopping]:
  """The run's EarlyStopping (None without a patience), history restored.

  `task` declares VALIDATION_METRICS, its main metric first ('auto').
  """
  if training.early_stopping_patience is None:
    return None
  logged = type(task).VALIDATION_METRICS
  metric = training.early_stopping_metric
  metric = logged[0] if metric == 'auto' else metric
  check_metric(metric, task_name, logged,
               f'Training.early_stopping_metric = {metric!r}')
  from fmx.compare import read_curve  # pylint: disable=g-import-not-at-top
  steps, values = read_curve(model_dir, metric)
  # One value per step (an evaluation repeated after a restart counts
  # once), and none past the checkpoint the run resumes from.
  history = dict((int(s), float(v)) for s, v in zip(steps, values)
                 if s <= start_step)
  return EarlyStopping(metric, training.early_stopping_patience,
                       training.early_stopping_min_delta, global_step,
                       sorted(history.items()))
