"""fmx from Python: what the `fmx` command does, for notebooks and scripts.

    import fmx
    run = fmx.run('experiments/demo.gin', ['Training.epochs = 2'])
    run.results['student_top1']            # results.json
    run.history()['validation/agreement']  # TensorBoard scalars: steps, values
    run.predict(uint8_images)              # logits; the run's preprocessing inside
    run.export('tflite', quantize='int8')  # -> MODEL_DIR/export/model_int8.tflite
    fmx.load_run('runs/demo/student').evaluate('test[:50%]')
    fmx.inspect_batch('experiments/demo.gin').figure()
    fmx.run_grid('experiments/ablations/mixup_variants.gin', 'runs/mixup')
    fmx.tune('experiments/tune_demo_teacher.gin', 'runs/tune')

A run folder is the unit of exchange, as on the command line: `run` trains
(or resumes) into one, `load_run` opens one, and everything a Run computes is
rebuilt from that folder's own operative_config.gin.

Every call starts from a clean slate: gin's config, the Keras session and the
mixed-precision policy are reset, so a notebook's runs do not leak into each
other (two runs in one process give the results of two processes; with
`Runtime.deterministic = True`, bit for bit), and the caller's own Keras
policy is back afterwards. A mistake raises fmx's UserError (a StopRun) with
the command line's one-paragraph message; inside IPython/Jupyter only that
paragraph is shown, not a stack trace.

`grid` and `inspect_data` name fmx's modules, so their functions here are
`run_grid` and `inspect_batch`.

Only the standard library is imported here: TensorFlow loads on the first call.
"""

import contextlib
import dataclasses
import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Union

from fmx.errors import StopRun, UserError

GinFiles = Union[str, Sequence[str]]
_SUMMARY_FOLDERS = ('train', 'validation', 'test')


def run(gin_files: GinFiles, bindings: Sequence[str] = (),
        model_dir: Optional[str] = None, allow_config_change: bool = False,
        verbose: bool = False) -> 'Run':
  """Trains (or resumes, or finds finished) the run the gin files describe.

  As `fmx run --gin ... --bind ... [--model_dir DIR]`: model_dir defaults to
  the config's Experiment.model_dir; a distillation run whose teacher run has
  not finished trains it first. Progress shows as a notebook bar in Jupyter,
  plain lines in a terminal; `verbose` keeps TensorFlow's and Orbit's logs.
  """
  gin_files = _as_list(gin_files)
  with _fresh_state():
    from fmx.training import progress  # pylint: disable=g-import-not-at-top
    from fmx.training import run as run_lib  # pylint: disable=g-import-not-at-top
    if not verbose:
      progress.quiet_library_logs()
    # Absolute, as the Run keeps it: a notebook that changes folder later
    # still finds the run.
    model_dir = os.path.abspath(model_dir or _configured_model_dir(gin_files, bindings))
    run_lib.run(gin_files, bindings, model_dir,
                allow_config_change=allow_config_change)
  return Run(model_dir)


def load_run(model_dir: str) -> 'Run':
  """The run in model_dir (a folder `fmx run` or `fmx.run` wrote)."""
  return Run(model_dir)


class Run:
  """A run folder: its results, config, models, curves and exports.

  `.student` and `.teacher` are tf_keras models that take uint8 images
  [batch, height, width, channels] and return logits, with the run's eval
  preprocessing inside (as `fmx export` serves them). A teacher run has no
  student: its trained model is `.teacher` (and `.model`).
  """

  def __init__(self, model_dir: str):
    from fmx.training import run_dir  # pylint: disable=g-import-not-at-top
    self.model_dir = os.path.abspath(model_dir)
    self._config_file = os.path.join(self.model_dir, run_dir.OPERATIVE_CONFIG)
    if not os.path.isfile(self._config_file):
      raise UserError(f'{model_dir!r} is not an fmx run folder (no '
                      f'{run_dir.OPERATIVE_CONFIG}); pass the model_dir of a '
                      'run that fmx.run or `fmx run` has started.')
    self._models = None

  def __repr__(self) -> str:
    return f'fmx.Run({self.model_dir!r})'

  @property
  def results(self) -> dict:
    """results.json: the final evaluation on the test split."""
    from fmx.export import check_finished  # pylint: disable=g-import-not-at-top
    with _user_errors():
      check_finished(self.model_dir)
    with open(os.path.join(self.model_dir, 'results.json')) as f:
      return json.load(f)

  @property
  def config(self) -> Dict[str, str]:
    """Every gin value the run used: 'Key.parameter' -> its value, as gin text."""
    from fmx.training import run_dir  # pylint: disable=g-import-not-at-top
    with open(self._config_file) as f:
      return run_dir.parse_config(f.read())

  @property
  def task(self) -> str:
    """'teacher' or 'distillation'."""
    return self.results['task']

  @property
  def model(self):
    """The trained model: a distillation run's student, a teacher run's teacher."""
    return self._restored()['model']

  @property
  def student(self):
    """The distilled student (None for a teacher run)."""
    return self.model if self.task == 'distillation' else None

  @property
  def teacher(self):
    """The teacher: the one a distillation run learnt from, or the run's model."""
    return self._restored()['teacher']

  def predict(self, images, batch_size: int = 256, teacher: bool = False):
    """Logits (numpy, float32) of the run's model, or its teacher, on images.

    `images`: uint8 [n, height, width, channels] raw pixels, any size (the
    run's eval crop and resize happen inside).
    """
    import numpy as np  # pylint: disable=g-import-not-at-top
    model = self.teacher if teacher else self.model
    if isinstance(images, list):  # sizes differ: one image at a time
      return np.concatenate([self.predict(image[None], teacher=teacher)
                             for image in images])
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise UserError(f'predict takes uint8 images [n, height, width, '
                      f'channels]; got {images.dtype} {list(images.shape)}. '
                      'Pass raw pixels: the run\'s preprocessing is inside.')
    return np.concatenate([model(images[start:start + batch_size]).numpy()
                           for start in range(0, len(images), batch_size)])

  def examples(self, split: Optional[str] = None, limit: Optional[int] = None):
    """(images, labels) of a split of the run's eval dataset, raw uint8 pixels.

    Default: the run's test split. images is an array [n, h, w, c], or a
    list when the images' sizes differ (as predict accepts them).
    """
    import numpy as np  # pylint: disable=g-import-not-at-top
    from fmx import gin_config  # pylint: disable=g-import-not-at-top
    from fmx.data.pipeline import Data  # pylint: disable=g-import-not-at-top
    with _fresh_state():
      gin_config.parse([self._config_file],
                       [f'Data.test_split = {split!r}'] if split else [])
      dataset = Data().source('test').dataset
      if limit is not None:
        dataset = dataset.take(limit)
      images, labels = [], []
      for example in dataset.as_numpy_iterator():
        images.append(example['image'])
        labels.append(example['label'])
    if len({image.shape for image in images}) == 1:
      return np.stack(images), np.array(labels)
    return images, np.array(labels)

  def evaluate(self, split: Optional[str] = None) -> dict:
    """As `fmx eval`: the latest checkpoint on a split (default: the test split).

    Also written to MODEL_DIR/eval-<split>.json.
    """
    from fmx.training import evaluate  # pylint: disable=g-import-not-at-top
    with _fresh_state():
      return evaluate.evaluate_run(self.model_dir, split)

  def export(self, format: str = 'saved_model', quantize: str = 'none',  # pylint: disable=redefined-builtin
             out: Optional[str] = None, overwrite: bool = False,
             input_size: Optional[int] = None) -> str:
    """As `fmx export`: writes a SavedModel or TFLite file; returns its path."""
    from fmx import export  # pylint: disable=g-import-not-at-top
    with _fresh_state():
      return export.export_run(self.model_dir, format, quantize, out, overwrite,
                               input_size)

  def history(self) -> Dict[str, Dict[str, list]]:
    """The run's TensorBoard scalars: {'train/loss': {'step': [...], 'value': [...]}}.

    Keys are '<folder>/<tag>' for the folders train, validation and test, e.g.
    'train/training_loss', 'validation/student_top1', 'test/agreement'.
    """
    from fmx import compare  # pylint: disable=g-import-not-at-top
    history = {}
    for folder in _SUMMARY_FOLDERS:
      for tag, (steps, values) in compare.read_scalars(self.model_dir, folder).items():
        history[f'{folder}/{tag}'] = {'step': steps.tolist(), 'value': values.tolist()}
    return history

  def _restored(self) -> dict:
    """The run's models with preprocessing, rebuilt once from its folder."""
    if self._models is None:
      self._models = _restore_models(self.model_dir)
    return self._models


def _restore_models(model_dir: str) -> dict:
  """{'model', 'teacher'}: the run's models, its eval preprocessing inside."""
  from fmx import export  # pylint: disable=g-import-not-at-top
  from fmx.training import evaluate  # pylint: disable=g-import-not-at-top
  with _fresh_state():
    export.check_finished(model_dir)
    restored = evaluate.restore_run(model_dir, export.EXPORT_BINDINGS)
    model = export.ModelWithPreprocessing(export.Servable.from_run(restored))
    if restored.setup.task_name != 'distillation':
      return {'model': model, 'teacher': model}
    teacher = export.Servable.from_run(restored, teacher=True)
    return {'model': model, 'teacher': export.ModelWithPreprocessing(teacher)}


@dataclasses.dataclass
class Batch:
  """One augmented training batch, as the model sees it (`fmx inspect-data`).

  images: float32 [n, h, w, c] in the model's value range, after MixUp;
  partners[i]: the image i was mixed with; coefficient: MixUp's a (image i
  is a * own + (1 - a) * partner's); crop_areas: fraction of the image each
  inception crop kept. partners, coefficient are None without MixUp.
  """
  images: object
  labels: object
  partners: Optional[object]
  coefficient: Optional[float]
  distinct_pairs: Optional[int]
  crop_areas: List[float]
  mixup: Optional[str]
  source: str
  _stats: dict = dataclasses.field(repr=False)
  _data: object = dataclasses.field(repr=False)

  def figure(self):
    """A matplotlib Figure of the batch, each image titled with its partner."""
    from fmx import inspect_data  # pylint: disable=g-import-not-at-top
    return inspect_data.grid_figure(self._stats, self._data)

  def __str__(self) -> str:
    from fmx import inspect_data  # pylint: disable=g-import-not-at-top
    return inspect_data.describe(self._stats)


def inspect_batch(gin_files: GinFiles, bindings: Sequence[str] = (),
                  batch_size: Optional[int] = None) -> Batch:
  """The config's first augmented training batch, as arrays (`fmx inspect-data`)."""
  from fmx import inspect_data  # pylint: disable=g-import-not-at-top
  with _fresh_state():
    stats, data = inspect_data.first_batch(_as_list(gin_files), bindings, batch_size)
  return Batch(images=stats['images'], labels=stats['labels'],
               partners=stats['partners'], coefficient=stats['coefficient'],
               distinct_pairs=stats['distinct_pairs'],
               crop_areas=stats['crop_areas'], mixup=stats['mixup'],
               source=stats['source'], _stats=stats, _data=data)


@dataclasses.dataclass
class GridPoint:
  """One point of a grid: its gin values, folder and outcome."""
  values: Dict[str, object]
  model_dir: str
  status: str  # 'finished' (earlier), 'done' (now) or 'failed'
  log: str  # the point's `fmx run` output

  @property
  def run(self) -> Run:
    return Run(self.model_dir)


def run_grid(gin_files: GinFiles, root: str,
             axes: Optional[Dict[str, Sequence]] = None,
             bindings: Sequence[str] = (), parallel: int = 1) -> List[GridPoint]:
  """As `fmx grid`: every point of the axes as its own run in ROOT/<point>.

  `axes` ({'Data.mixup': ['mixup_roll', 'mixup_reverse'], ...}) add to the
  gin files' Grid.axes. Finished points are skipped, unfinished ones resume;
  a failed point does not stop the others (see its status and log).
  """
  from fmx import grid  # pylint: disable=g-import-not-at-top
  gin_files = _as_list(gin_files)
  with _fresh_state():
    all_axes = grid.axes_from_files(gin_files)
    all_axes.update({key: list(values) for key, values in (axes or {}).items()})
    outcomes = grid.run_grid(gin_files, all_axes, root, parallel, bindings)
  return [GridPoint(o.point.values, os.path.join(os.path.abspath(root), o.point.name),
                    o.status, o.log) for o in outcomes]


def tune(gin_files: GinFiles, root: str, bindings: Sequence[str] = (),
         oracle=None, max_trials: Optional[int] = None,
         executions_per_trial: Optional[int] = None,
         objective: Optional[str] = None, parallel: int = 1):
  """As `fmx tune`: a Keras Tuner search over the gin files' hyperparameters.

  Returns fmx.tuning's TuneResult: `.trials` (best first, each with its
  trial_id, values, objective, status and model_dirs), `.best` and
  `.best_bindings` ('KEY = VALUE' strings for fmx.run).
  """
  from fmx import tuning  # pylint: disable=g-import-not-at-top  (Keras Tuner on first use)
  with _fresh_state():
    return tuning.tune(_as_list(gin_files), root, bindings=bindings,
                       oracle=oracle, max_trials=max_trials,
                       executions_per_trial=executions_per_trial,
                       objective=objective, parallel=parallel)


def _as_list(gin_files: GinFiles) -> List[str]:
  return [gin_files] if isinstance(gin_files, (str, os.PathLike)) else list(gin_files)


def _configured_model_dir(gin_files: List[str], bindings: Sequence[str]) -> str:
  """Experiment.model_dir of the config; a UserError when it sets none."""
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  from fmx.training.settings import Experiment  # pylint: disable=g-import-not-at-top
  gin_config.parse(gin_files, bindings)
  model_dir = Experiment().model_dir
  if not model_dir:
    raise UserError("no model_dir: pass model_dir='...' to fmx.run or set "
                    "Experiment.model_dir = '...' in the gin file.")
  return model_dir


@contextlib.contextmanager
def _fresh_state() -> Iterator[None]:
  """gin, the Keras session and the precision policy reset; errors as paragraphs."""
  import gin  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  policy = tf_keras.mixed_precision.global_policy()
  gin.clear_config()
  tf_keras.backend.clear_session()
  tf_keras.mixed_precision.set_global_policy('float32')
  try:
    with _user_errors():
      yield
  finally:
    gin.clear_config()
    tf_keras.mixed_precision.set_global_policy(policy)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
  """fmx's errors with the command line's one-paragraph message."""
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  try:
    yield
  except StopRun as e:
    message = gin_config.user_message(e)
    # gin re-raises an error from inside a configurable as a proxy subclass
    # whose str() appends its call trail; the error it wraps is its context.
    while '__str__' in vars(type(e)) and isinstance(e.__context__, StopRun):
      e = e.__context__
    e.args = (message,)
    raise e.with_traceback(None) from None
  except RuntimeError as e:
    message = gin_config.user_message(e)  # gin's missing required values
    if message is None:
      raise
    raise UserError(message) from None


def _show_errors_as_paragraphs() -> None:
  """In IPython/Jupyter, an fmx error shows as its paragraph, not a trace."""
  try:
    from IPython import get_ipython  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  shell = get_ipython()
  if shell is None:
    return

  def show(shell, error_type, error, traceback, tb_offset=None):
    del traceback, tb_offset
    # IPython ignores what a custom handler returns: the handler shows the
    # error itself, as the cell's error output (the cell still fails).
    shell._showtraceback(error_type, error, [f'fmx: {error.label}: {error}'])  # pylint: disable=protected-access

  shell.set_custom_exc((StopRun,), show)


_show_errors_as_paragraphs()
