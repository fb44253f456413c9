"""The `fmx` command line: `fmx run`, `fmx list`.

A user's mistake ends as one paragraph on stderr and exit code 2; a stack
trace is only shown for fmx's own bugs (or with --traceback).
"""

import argparse
import os
import sys
from typing import List, Optional

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _quiet_tensorflow() -> None:
  # Before TensorFlow is imported: its C++ log lines (including 'failed call
  # to cuInit' on every machine without a GPU) bury the progress bar.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


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

  listing = commands.add_parser('list', help='list registry entries')
  listing.add_argument('kind', nargs='?', help='datasets, backbones, '
                       'augmentations, losses or tasks (default: all)')
  return parser


def _list(kind: Optional[str]) -> None:
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


def _run(args) -> None:
  if not args.verbose:
    from absl import logging  # pylint: disable=g-import-not-at-top
    import orbit.controller  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)
    # Orbit's controller print()s every loop's metrics besides logging them;
    # the progress bar and eval lines already show them. --verbose restores it.
    orbit.controller._log = logging.info  # pylint: disable=protected-access
  from fmx.training import run  # pylint: disable=g-import-not-at-top
  results = run.run(args.gin, args.bind, args.model_dir)
  print(run.format_results(results))


def main(argv: Optional[List[str]] = None) -> int:
  args = _parser().parse_args(argv)
  _quiet_tensorflow()
  from fmx import gin_config  # pylint: disable=g-import-not-at-top
  from fmx.errors import UserError  # pylint: disable=g-import-not-at-top
  from fmx.registry import UnknownEntryError  # pylint: disable=g-import-not-at-top
  try:
    if args.command == 'list':
      _list(args.kind)
    else:
      _run(args)
    return 0
  except KeyboardInterrupt:
    print('\nfmx: interrupted; rerun the same command to resume from the last '
          'checkpoint.', file=sys.stderr)
    return EXIT_INTERRUPTED
  except UserError as e:
    if args.traceback:
      raise
    # gin appends "In call to configurable ..." to errors raised inside
    # configurables; the message already says what is wrong.
    message = str(e).split('\n  In call to configurable')[0]
    if isinstance(e, UnknownEntryError):
      location = gin_config.locate(str(e.name))
      if location:
        message = f'{location[0]}, line {location[1]}: {message}'
    print(f'fmx: error: {message}', file=sys.stderr)
    return EXIT_USER_ERROR
  except RuntimeError as e:
    message = gin_config.describe_missing_required(e)
    if message is None or args.traceback:
      raise
    print(f'fmx: error: {message}', file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == '__main__':
  sys.exit(main())
