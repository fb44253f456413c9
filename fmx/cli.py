"""The `fmx` command line.

  run            train a teacher or distil a student (resumes; --dry_run)
  eval           evaluate a run's latest checkpoint on a split
  grid, compare  ablation grids and their comparison; tensorboard
  tune           hyperparameter search with Keras Tuner oracles
  inspect-data   one augmented batch as a PNG, with statistics
  export, report ship the student (SavedModel/TFLite) and measure it
  list           registry entries

A user's mistake ends as one paragraph on stderr and exit code 2; a stack
trace is only shown for fmx's own bugs (or with --traceback). Other exit
codes of `fmx run`: 3 when the loss stayed non-finite after every allowed
rollback, 75 when SIGTERM stopped it after saving a checkpoint (rerun the
same command to resume), 130 on Ctrl-C.
"""

import argparse
import os
import subprocess
import sys
from typing import List, Optional

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _prepare_tensorflow() -> None:
  """Environment for TensorFlow, set before it is imported."""
  # Its C++ log lines (including 'failed call to cuInit' on every machine
  # without a GPU) bury the progress bar.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  # fmx, Model Garden and TF-Hub use tf_keras (Keras 2) only; this keeps
  # TensorFlow from also importing Keras 3 for `tf.keras`: 2-3 s less at
  # every start (each command, worker and resumed run). Set only by the
  # command line, never by `import fmx`, which leaves a user's tf.keras be.
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='fmx', description='Knowledge distillation by function matching.')
  parser.add_argument('--traceback', action='store_true',
                      help='show Python stack traces for every error')
  commands = parser.add_subparsers(dest='command', required=True)

  run = commands.add_parser('run', help='train a teacher or distil a student')
  run.add_argument('--gin', action='append', required=True, metavar='FILE',
                   help='gin file; repeat to compose, later ones win')
  run.add_argument('--bind', action='append', default=[], metavar="'KEY = VALUE'",
                   help='gin binding applied after the files')
  run.add_argument('--model_dir', help='run folder (default: Experiment.model_dir)')
  run.add_argument('--verbose', action='store_true', help='show TF/Orbit logs')
  run.add_argument('--allow_config_change', action='store_true',
                   help='resume a model_dir whose saved operative config differs '
                   'from this one (refused by default; the old one is kept)')
  run.add_argument('--dry_run', action='store_true',
                   help='build everything offline at a tiny shape, one train '
                   'and one eval step, in a temporary folder')

  evaluate = commands.add_parser(
      'eval', help="evaluate a run's latest checkpoint on a split of its data")
  evaluate.add_argument('--model_dir', required=True, help='the run folder')
  evaluate.add_argument('--split', help="split of the run's eval dataset, e.g. "
                        "'test' or 'train[90%%:]' (default: its test split)")

  grid = commands.add_parser('grid', help='run the cartesian product of gin values')
  grid.add_argument('--gin', action='append', required=True, metavar='FILE',
                    help='base gin file(s); may declare Grid.axes')
  grid.add_argument('--axis', action='append', default=[],
                    metavar='"KEY = [v1, v2]"', help='an axis; repeat for more')
  grid.add_argument('--bind', action='append', default=[], metavar="'KEY = VALUE'",
                    help='gin binding applied to every point')
  grid.add_argument('--root', required=True, help='folder holding one run per point')
  grid.add_argument('--parallel', type=int, default=1,
                    help='points run at once, each with its share of the cores')

  tune = commands.add_parser(
      'tune', help='hyperparameter search (Tune.space in the gin file) with '
      'Keras Tuner oracles, one fmx run per trial; resumes')
  tune.add_argument('--gin', action='append', required=True, metavar='FILE',
                    help='gin file(s) declaring Tune.space; repeat to compose')
  tune.add_argument('--root', required=True,
                    help='folder holding the search and one run per trial')
  tune.add_argument('--oracle', choices=('random', 'bayesian', 'hyperband', 'grid'),
                    help='search algorithm (default: Tune.oracle, random)')
  tune.add_argument('--max_trials', type=int,
                    help='trials in all, counting earlier invocations '
                    "(default: Tune.max_trials or the oracle's)")
  tune.add_argument('--executions_per_trial', type=int,
                    help='runs per trial, seeds Training.seed + 0, 1, ...; '
                    'the objective is their mean (default: Tune.executions_per_trial, 1)')
  tune.add_argument('--objective', metavar='validation/METRIC',
                    help='maximised (minimised for losses): validation/top1, '
                    'validation/student_top1, validation/agreement, ... '
                    "(default: Tune.objective, the task's main metric)")
  tune.add_argument('--parallel', type=int, default=1,
                    help='trials at once, each run an `fmx run` process with its '
                    'share of the cores (default: 1, in this process)')
  tune.add_argument('--bind', action='append', default=[], metavar="'KEY = VALUE'",
                    help='gin binding applied to every trial')
  tune.add_argument('--verbose', action='store_true', help='show TF/Orbit logs')

  compare = commands.add_parser(
      'compare', help='table and plots of runs grouped over seeds')
  compare.add_argument('folders', nargs='+', help='grid roots or run folders')
  compare.add_argument('--plot', help='PNG path (default: FIRST_FOLDER/compare.png)')

  board = commands.add_parser('tensorboard', help='start TensorBoard on a folder')
  board.add_argument('folder', help='a run folder or grid root')
  board.add_argument('--port', type=int, default=6006)

  inspect_data = commands.add_parser(
      'inspect-data', help='picture one augmented training batch, with its '
      'MixUp pairs, coefficient and crop areas')
  inspect_data.add_argument('--gin', action='append', required=True,
                            metavar='FILE', help='gin file; repeat to compose')
  inspect_data.add_argument('--bind', action='append', default=[],
                            metavar="'KEY = VALUE'",
                            help='gin binding applied after the files')
  inspect_data.add_argument('--out', default='inspect_data.png',
                            help='PNG grid to write (default: %(default)s)')
  inspect_data.add_argument('--batch_size', type=int,
                            help="images in the batch (default: "
                            "Training.global_batch_size; give one replica's "
                            'share to see its MixUp pairs)')

  export = commands.add_parser(
      'export', help="export a finished run's model (a distillation run's "
      'student) with its preprocessing: uint8 images in, logits out')
  export.add_argument('--model_dir', required=True, help='the run folder')
  export.add_argument('--format', required=True, choices=('saved_model', 'tflite'))
  export.add_argument('--quantize', default='none',
                      choices=('none', 'dynamic', 'float16', 'int8'),
                      help='TFLite weights (and for int8, activations); '
                      'default: %(default)s (float32)')
  export.add_argument('--input_size', type=int,
                      help='TFLite: the fixed height and width of the uint8 '
                      'input (default: the run\'s Data.image_size)')
  export.add_argument('--out', help='path to write (default: '
                      'MODEL_DIR/export/saved_model or '
                      'MODEL_DIR/export/model_<weights>.tflite)')
  export.add_argument('--overwrite', action='store_true',
                      help='replace --out if it exists')

  report = commands.add_parser(
      'report', help='size, accuracy and CPU latency of teacher, student '
      'and exports, measured now on the test split')
  report.add_argument('--model_dir', required=True, help='the run folder')
  report.add_argument('--exports', nargs='*', metavar='PATH',
                      help='SavedModel folders or .tflite files (default: '
                      'everything in MODEL_DIR/export)')
  report.add_argument('--latency_runs', type=int, default=50,
                      help='timed calls per model and batch size (default: '
                      '%(default)s)')
  report.add_argument('--out', help='JSON to write (default: MODEL_DIR/report.json)')

  listing = commands.add_parser('list', help='list registry entries')
  listing.add_argument('kind', nargs='?', help='datasets, backbones, '
                       'augmentations, losses or tasks (default: all)')
  return parser


def _list(args) -> None:
  kind = args.kind
  from fmx import registry  # pylint: disable=g-import-not-at-top
  from fmx.errors import UserError  # pylint: disable=g-import-not-at-top
  registry.load_all_entries()
  if kind and kind not in registry.ALL:
    raise UserError(f'unknown registry kind {kind!r}; use one of '
                    f'{", ".join(registry.ALL)}.')
  for name in [kind] if kind else registry.ALL:
    print(f'{name}:')
    for entry, description in registry.ALL[name].describe():
      print(f'  {entry:<22} {description}')


def _stop_on_sigterm() -> None:
  """SIGTERM before or after the training loop: stop now, exit 75.

  During the loop fmx.training.preemption takes over and saves a checkpoint
  first; outside it there is nothing unsaved (results.json is written last,
  atomically), so the rerun resumes or re-evaluates.
  """
  import signal  # pylint: disable=g-import-not-at-top
  from fmx.errors import Preempted  # pylint: disable=g-import-not-at-top

  def stop(*_):
    raise Preempted('SIGTERM received outside the training loop; nothing '
                    'unsaved was lost. Rerun the same command to resume.')
  signal.signal(signal.SIGTERM, stop)


def _quiet_training_logs() -> None:
  """Only fmx's progress bar and eval lines; --verbose shows the rest."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  import orbit.controller  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  # TF's Python warnings (deprecations, deferred checkpoint restores of
  # optimizer hyperparameters) mean nothing to a user; --verbose shows them.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.get_logger().setLevel('ERROR')
  # Orbit's controller print()s every loop's metrics besides logging them;
  # the progress bar and eval lines already show them. --verbose restores it.
  orbit.controller._log = logging.info  # pylint: disable=protected-access


def _run(args) -> None:
  _stop_on_sigterm()
  if not args.verbose:
    _quiet_training_logs()
  from fmx.training import run  # pylint: disable=g-import-not-at-top
  results = run.run(args.gin, args.bind, args.model_dir, dry_run=args.dry_run,
                    allow_config_change=args.allow_config_change)
  print(run.format_results(results))
  if args.dry_run:
    print(f'dry run OK: everything built and stepped in {results["dry_run_dir"]}')


def _eval(args) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  from fmx.training import evaluate, run  # pylint: disable=g-import-not-at-top
  results = evaluate.evaluate_run(args.model_dir, args.split)
  print(run.format_results(results))
  print(f'written to {results["written_to"]}')


def _grid(args) -> int:
  from fmx import grid  # pylint: disable=g-import-not-at-top
  axes = grid.axes_from_files(args.gin)
  for text in args.axis:
    axes.update(grid.parse_axis(text))
  outcomes = grid.run_grid(args.gin, axes, args.root, args.parallel, args.bind)
  print(grid.format_summary(outcomes))
  print(f'compare with: fmx compare {args.root}   or   fmx tensorboard {args.root}')
  return 1 if any(o.status == 'failed' for o in outcomes) else 0


def _tune(args) -> int:
  _stop_on_sigterm()
  if not args.verbose:
    _quiet_training_logs()
  from fmx.tuning import search  # pylint: disable=g-import-not-at-top
  result = search.tune(args.gin, args.root, args.bind, oracle=args.oracle,
                       max_trials=args.max_trials,
                       executions_per_trial=args.executions_per_trial,
                       objective=args.objective, parallel=args.parallel)
  print(search.format_result(result))
  print(f'compare with: fmx compare {args.root}   or   fmx tensorboard {args.root}')
  return 1 if any(t.status == 'FAILED' for t in result.trials) else 0


def _compare(args) -> None:
  from fmx import compare  # pylint: disable=g-import-not-at-top
  groups = compare.summarize(args.folders)
  print(compare.format_table(groups))
  plot = compare.plot_curves(
      groups, args.plot or os.path.join(args.folders[0], 'compare.png'))
  print(f'curves: {plot}')


def _tensorboard(args) -> int:
  from fmx.errors import UserError  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(args.folder):
    raise UserError(f'{args.folder!r} is not a folder; pass a run folder or grid root.')
  command = [sys.executable, '-m', 'tensorboard.main', '--logdir', args.folder,
             '--port', str(args.port)]
  print(' '.join(command), flush=True)
  return subprocess.call(command)


def _inspect_data(args) -> None:
  from fmx import inspect_data  # pylint: disable=g-import-not-at-top
  stats = inspect_data.inspect_data(args.gin, args.bind, args.out,
                                    args.batch_size)
  print(inspect_data.describe(stats))
  print(f'grid: {args.out}')


def _export(args) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  from fmx import export  # pylint: disable=g-import-not-at-top
  path = export.export_run(args.model_dir, args.format, args.quantize, args.out,
                           args.overwrite, args.input_size)
  print(f'wrote {path} ({export.file_size(path):,} bytes): serving_default('
        'images: uint8 [batch, height, width, channels]) -> logits, probabilities')
  print(f'compare with: fmx report --model_dir {args.model_dir}')


def _report(args) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  from fmx import report  # pylint: disable=g-import-not-at-top
  results = report.report_run(args.model_dir, args.exports, args.latency_runs,
                              args.out)
  print(report.format_table(results))
  print(f'written to {results["written_to"]}')


COMMANDS = {'run': _run, 'eval': _eval, 'list': _list, 'grid': _grid,
            'tune': _tune, 'compare': _compare, 'tensorboard': _tensorboard,
            'inspect-data': _inspect_data, 'export': _export,
            'report': _report}


def main(argv: Optional[List[str]] = None) -> int:
  args = _parser().parse_args(argv)
  _prepare_tensorflow()
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  from fmx.errors import StopRun  # pylint: disable=g-import-not-at-top
  from fmx.registry import UnknownEntryError  # pylint: disable=g-import-not-at-top
  try:
    return COMMANDS[args.command](args) or 0
  except KeyboardInterrupt:
    print('\nfmx: interrupted; rerun the same command to resume from the last '
          'checkpoint.', file=sys.stderr)
    return EXIT_INTERRUPTED
  except StopRun as e:
    if args.traceback:
      raise
    # gin appends "In call to configurable ..." to errors raised inside
    # configurables; the message already says what is wrong.
    message = str(e).split('\n  In call to configurable')[0]
    if isinstance(e, UnknownEntryError):
      location = gin_config.locate(str(e.name))
      if location:
        message = f'{location[0]}, line {location[1]}: {message}'
    print(f'fmx: {e.label}: {message}', file=sys.stderr)
    return e.exit_code
  except RuntimeError as e:
    message = gin_config.describe_missing_required(e)
    if message is None or args.traceback:
      raise
    print(f'fmx: error: {message}', file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == '__main__':
  sys.exit(main())
