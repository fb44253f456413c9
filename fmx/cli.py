"""The `fmx` command line.

  run            train a teacher or distil a student (resumes; --dry_run)
  eval           evaluate a run's latest (or --checkpoint) checkpoint on a split
  predict        top-k classes, by name, of image files (a run or an export)
  grid, compare  ablation grids and their comparison; tensorboard
  tune           hyperparameter search with Keras Tuner oracles
  inspect-data   one augmented batch as a PNG, with statistics
  export, report ship the student (SavedModel/TFLite) and measure it
  list, describe registry entries and settings; one's parameters, types, defaults

A user's mistake ends as one paragraph on stderr and exit code 2; a stack
trace is only shown for fmx's own bugs (or with --traceback). Other exit
codes of `fmx run`: 3 when the loss stayed non-finite after every allowed
rollback, 75 when SIGTERM stopped it after saving a checkpoint (rerun the
same command to resume), 130 when Ctrl-C did (a second Ctrl-C aborts at
once, unsaved).
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
  from fmx import __version__  # pylint: disable=g-import-not-at-top
  parser.add_argument('--version', action='version',
                      version=f'%(prog)s {__version__}')
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
                   'and one eval step, in a temporary folder (removed after)')
  run.add_argument('--keep_dry_run', action='store_true',
                   help="keep the dry run's temporary folder and print it")

  evaluate = commands.add_parser(
      'eval', help="evaluate a run's latest checkpoint on a split of its data")
  evaluate.add_argument('--model_dir', required=True, help='the run folder')
  evaluate.add_argument('--split', help="split of the run's eval dataset, e.g. "
                        "'test' or 'train[90%%:]' (default: its test split)")
  evaluate.add_argument('--checkpoint', metavar='PATH|STEP',
                        help='a checkpoint of the run, by path or step '
                        '(default: the latest)')

  predict = commands.add_parser(
      'predict', help='the top classes, by name, of image files or folders')
  predict.add_argument('--model_dir', required=True,
                       help='a run folder, a SavedModel export or a .tflite file')
  predict.add_argument('images', nargs='+', help='image files or folders of them')
  predict.add_argument('--top_k', type=int, default=5,
                       help='classes shown per image (default: %(default)s)')
  predict.add_argument('--checkpoint', metavar='PATH|STEP',
                       help="a run folder's checkpoint (default: the latest)")

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
  inspect_data.add_argument('--dry_run', action='store_true',
                            help='mock data, offline (like run --dry_run): '
                            'inspect any experiment without its dataset')
  inspect_data.add_argument('--crops', type=int, default=0, metavar='N',
                            help='also draw N inception crops with the '
                            "experiment's settings and print their areas")

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
  export.add_argument('--checkpoint', metavar='PATH|STEP',
                      help='export this checkpoint, by path or step, even of '
                      'an unfinished run (default: the finished run\'s latest)')

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

  listing = commands.add_parser(
      'list', help='list registry entries and settings, or describe one')
  listing.add_argument('kind', nargs='?', help='datasets, backbones, '
                       'augmentations, losses, tasks or settings (default: all)')
  listing.add_argument('name', nargs='?', help="an entry of KIND: print its "
                       'parameters, as `fmx describe NAME` does')

  describe = commands.add_parser(
      'describe', help="a setting's or registry entry's parameters, with "
      'types, defaults and what each does')
  describe.add_argument('name', help="e.g. Training, Data, image_folder, kl, "
                        'distillation')
  return parser


def _list(args) -> None:
  kind = args.kind
  from fmx import configurables, entries, registry  # pylint: disable=g-import-not-at-top
  from fmx.errors import UserError  # pylint: disable=g-import-not-at-top
  entries.load_all()
  kinds = list(registry.ALL) + ['settings']
  if kind and kind not in kinds:
    raise UserError(f'unknown registry kind {kind!r}'
                    f'{configurables.did_you_mean(kind, kinds)} '
                    f'Use one of {", ".join(kinds)}.')
  if args.name:
    if kind != 'settings':
      registry.ALL[kind].get(args.name)  # an unknown name: the closest match
    print(configurables.describe(args.name))
    return
  for name in [kind] if kind else kinds:
    print(f'{name}:')
    if name == 'settings':
      described = [(c.name, c.doc) for c in
                   configurables.all_configurables().values()
                   if c.kind == 'settings']
    else:
      described = registry.ALL[name].describe()
    for entry, description in described:
      print(f'  {entry:<22} {description}')
  if not args.kind:
    print('`fmx describe NAME` shows the parameters of any of them.')


def _describe(args) -> None:
  from fmx import configurables  # pylint: disable=g-import-not-at-top
  print(configurables.describe(args.name))


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


def _run(args) -> None:
  _stop_on_sigterm()
  from fmx.training import progress, run  # pylint: disable=g-import-not-at-top
  if not args.verbose:
    progress.quiet_library_logs()
  results = run.run(args.gin, args.bind, args.model_dir, dry_run=args.dry_run,
                    allow_config_change=args.allow_config_change,
                    keep_dry_run=args.keep_dry_run)
  print(run.format_results(results))
  if args.dry_run:
    kept = (f' in {results["dry_run_dir"]}' if results['dry_run_dir'] else
            ' (its temporary folder is removed; --keep_dry_run keeps it)')
    print(f'dry run OK: everything built and stepped{kept}')


def _eval(args) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  from fmx.training import evaluate, run  # pylint: disable=g-import-not-at-top
  results = evaluate.evaluate_run(args.model_dir, args.split, args.checkpoint)
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
  from fmx.training import progress  # pylint: disable=g-import-not-at-top
  if not args.verbose:
    progress.quiet_library_logs()
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
  return _run_child(command)


def _run_child(command: List[str]) -> int:
  """Runs `command` until it ends, or until SIGTERM/Ctrl-C, which stop it too.

  Ctrl-C at a terminal reaches the child as well, but a SIGTERM sent to fmx
  alone (a scheduler, `kill`) would leave it running, its port taken.
  """
  import signal  # pylint: disable=g-import-not-at-top

  def stop(number, _):
    raise _Stopped(number)

  child = subprocess.Popen(command)
  previous = {number: signal.signal(number, stop)
              for number in (signal.SIGTERM, signal.SIGINT)}
  try:
    return child.wait()
  except _Stopped as e:
    return 128 + e.args[0]  # the shell's code for a process ended by it
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)
    if child.poll() is None:
      child.terminate()
      try:
        child.wait(timeout=10)
      except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


class _Stopped(Exception):
  """A signal that stops `fmx tensorboard`; args[0] is its number."""


def _inspect_data(args) -> None:
  from fmx import inspect_data  # pylint: disable=g-import-not-at-top
  stats = inspect_data.inspect_data(args.gin, args.bind, args.out,
                                    args.batch_size, args.dry_run, args.crops)
  print(inspect_data.describe(stats))
  print(f'grid: {args.out}')


def _export(args) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  from fmx import export  # pylint: disable=g-import-not-at-top
  path = export.export_run(args.model_dir, args.format, args.quantize, args.out,
                           args.overwrite, args.input_size, args.checkpoint)
  names = ', class_names' if args.format == 'saved_model' else ''
  print(f'wrote {path} ({export.file_size(path):,} bytes): serving_default('
        'images: uint8 [batch, height, width, channels]) -> logits, '
        f'probabilities{names}')
  print(f'compare with: fmx report --model_dir {args.model_dir}')


def _predict(args) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  from fmx import predict  # pylint: disable=g-import-not-at-top
  print(predict.format_predictions(predict.predict(
      args.model_dir, args.images, args.top_k, args.checkpoint)))


def _report(args) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  from fmx import report  # pylint: disable=g-import-not-at-top
  results = report.report_run(args.model_dir, args.exports, args.latency_runs,
                              args.out)
  print(report.format_table(results))
  print(f'written to {results["written_to"]}')


COMMANDS = {'run': _run, 'eval': _eval, 'list': _list, 'describe': _describe,
            'grid': _grid, 'tune': _tune,
            'compare': _compare, 'tensorboard': _tensorboard,
            'inspect-data': _inspect_data, 'export': _export,
            'predict': _predict,
            'report': _report}


def main(argv: Optional[List[str]] = None) -> int:
  args = _parser().parse_args(argv)
  _prepare_tensorflow()
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  from fmx.errors import StopRun  # pylint: disable=g-import-not-at-top
  try:
    return COMMANDS[args.command](args) or 0
  except KeyboardInterrupt:
    resumes = args.command in ('run', 'grid')
    print('\nfmx: interrupted' + ('; rerun the same command to resume from '
                                  'the last checkpoint.' if resumes else '.'),
          file=sys.stderr)
    return EXIT_INTERRUPTED
  except StopRun as e:
    if args.traceback:
      raise
    print(f'fmx: {e.label}: {gin_config.user_message(e)}', file=sys.stderr)
    return e.exit_code
  except RuntimeError as e:
    message = gin_config.user_message(e)
    if message is None or args.traceback:
      raise
    print(f'fmx: error: {message}', file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == '__main__':
  sys.exit(main())
