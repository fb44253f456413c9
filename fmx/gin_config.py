"""Parsing gin files, and turning gin's exceptions into one-paragraph errors.

A user's gin mistake (syntax, unknown configurable or parameter, missing
include, missing required value, unknown registry name, a value of the wrong
type) becomes a UserError that names the file and line (or the --bind), so
`fmx` can print it without a stack trace.
"""

import logging
import os
import re
from typing import List, Optional, Sequence, Tuple

import gin

from fmx import configurables
from fmx import entries
from fmx.errors import StopRun, UserError
from fmx.registry import UnknownEntryError

# gin appends the location of a bad binding as `In file "f.gin", line 3` or
# `In bindings string line 2` (the --bind values, parsed as one string).
_LOCATION = re.compile(r'In (?:file "?([^",]*)"?|(bindings string)),? line (\d+)')
_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""")

_parsed_files: List[str] = []
_parsed_bindings: List[str] = []


def repo_root() -> str:
  """The folder holding fmx/ and gin/, so `include 'gin/...'` works anywhere."""
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> None:
  """Clears gin and parses files then bindings; UserError on any mistake."""
  entries.load_all()  # gin knows a configurable only once imported
  gin.clear_config()
  gin_files = [resolve(f) for f in gin_files]
  for path in {os.getcwd(), repo_root()} | {os.path.dirname(f) for f in gin_files}:
    gin.add_config_file_search_path(path)
  _parsed_files[:] = _with_includes(gin_files)
  _parsed_bindings[:] = bindings
  root_logger = logging.getLogger()
  level = root_logger.level
  # gin logs an ERROR for every search path an include is not found in before
  # the one it is in; a real miss still raises, and is reported below.
  root_logger.setLevel(logging.CRITICAL)
  # Shipped includes ('gin/...', 'experiments/...') are relative to the fmx
  # checkout, so gin looks there first (the user's folder stays a search
  # path). Otherwise, with the checkout on sys.path (`python -m`), gin's
  # resource reader takes 'experiments/' for a namespace package and crashes.
  cwd = os.getcwd()
  os.chdir(repo_root())
  try:
    gin.parse_config_files_and_bindings(
        list(gin_files), list(bindings), finalize_config=False)
  except SyntaxError as e:
    where = (f'{e.filename}, line {e.lineno}' if e.filename and os.path.isfile(
        e.filename) else _binding_at(e.lineno) or 'a --bind')
    raise UserError(f'gin syntax error in {where}: {e.msg.rstrip(".")}. The '
                    f'line reads: {(e.text or "").strip()!r}.') from None
  except (ValueError, IOError, KeyError) as e:
    raise UserError(describe_gin_error(e)) from None
  finally:
    os.chdir(cwd)
    root_logger.setLevel(level)
  # Before anything is built: a wrong type would fail deep inside TF.
  configurables.check_bound_values(where_set)


def resolve(gin_file: str) -> str:
  """A gin file's absolute path: as given, else relative to the fmx checkout."""
  for candidate in (gin_file, os.path.join(repo_root(), gin_file)):
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  folders = list(dict.fromkeys(os.path.realpath(f) for f in (os.getcwd(), repo_root())))
  raise UserError(f'gin file {gin_file!r} does not exist (looked in '
                  f'{" and ".join(folders)}). Check the path.')


def describe_gin_error(error: Exception) -> str:
  """One paragraph for a gin parse error, with the file and line it names."""
  text = ' '.join(str(error).split())
  location = _LOCATION.search(text)
  where = 'the gin config'
  if location and location[2]:
    where = _binding_at(int(location[3])) or 'a --bind'
  elif location:
    where = f'{location[1]}, line {location[3]}'
  # gin quotes the binding after the location: the message says enough.
  message = re.sub(r'\s*In (?:file|bindings string).*$', '', text).strip().rstrip('.')
  unknown = re.search(r"No configurable matching '([^']+)'", message)
  parameter = re.search(r"Configurable '([^']+)' doesn't have a parameter "
                        r"named '([^']+)'", message)
  if unknown:
    return f'error in {where}: {configurables.unknown_configurable_message(unknown[1])}'
  if parameter:
    return (f'error in {where}: '
            f'{configurables.unknown_parameter_message(*parameter.groups())}')
  if 'Unable to open file' in message:
    advice = 'Check the include path; it is resolved from the current folder and the fmx checkout'
  else:
    advice = 'Fix the binding'
  return f'gin error in {where}: {message}. {advice}.'


def _binding_at(line: Optional[int]) -> Optional[str]:
  """"--bind '...'" for a line of the bindings gin parsed as one string."""
  if not line:
    return None
  end = 0
  for binding in _parsed_bindings:
    end += binding.count('\n') + 1
    if line <= end:
      return f'--bind {binding!r}'
  return None


def where_set(key: str) -> str:
  """The --bind or 'file, line N' that last set `key` ('scope/name.param')."""
  scope, _, name = key.rpartition('/')
  configurable, _, parameter = name.rpartition('.')
  pattern = re.compile(
      r'^\s*' + (re.escape(scope) + '/' if scope else '') + r'(?:[\w.]+\.)?' +
      re.escape(configurable) + r'\.' + re.escape(parameter) + r'\s*=')
  for binding in reversed(_parsed_bindings):  # applied last: they win
    if pattern.match(binding):
      return f'--bind {binding!r}'
  found = None
  for path in _parsed_files:  # later files win
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if pattern.match(line):
          found = f'{path}, line {number}'
  return found or 'the gin config'


def user_message(error: Exception) -> Optional[str]:
  """The one paragraph shown for an fmx error; None for anything else (a bug).

  A StopRun's message without gin's call trail, with the file and line of an
  unknown registry name; gin's 'Required bindings' error as its paragraph.
  The command line prints it; fmx.api raises it.
  """
  if not isinstance(error, StopRun):
    return describe_missing_required(error) if isinstance(error, RuntimeError) else None
  # gin appends "In call to configurable ..." to errors raised inside
  # configurables; the message already says what is wrong.
  message = str(error).split('\n  In call to configurable')[0]
  if isinstance(error, UnknownEntryError):
    location = locate(str(error.name))
    if location:
      message = f'{location[0]}, line {location[1]}: {message}'
  return message


def describe_missing_required(error: Exception) -> Optional[str]:
  """One paragraph for gin's 'Required bindings ... not provided' error."""
  text = ' '.join(str(error).split())
  match = re.search(r"Required bindings for `([^`]+)` not provided in config: "
                    r"\[([^\]]*)\]", text)
  if not match:
    return None
  names = [n.strip(" '") for n in match[2].split(',')]
  keys = ', '.join(f'{match[1]}.{n}' for n in names)
  return (f'missing required gin value(s): {keys}. Set them in one of '
          f'{", ".join(_parsed_files) or "your gin files"} or with --bind '
          f"'{match[1]}.{names[0]} = ...'.")


def locate(value: str) -> Optional[Tuple[str, int]]:
  """(file, line) of the last binding whose value is the string `value`."""
  found = None
  pattern = re.compile(r"=\s*.*['\"]" + re.escape(value) + r"['\"]")
  for path in _parsed_files:
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if pattern.search(line.split('#')[0]):
          found = (path, number)
  return found


def _with_includes(gin_files: Sequence[str]) -> List[str]:
  """The files and, depth first, every file they include."""
  seen: List[str] = []

  def visit(path: str, base: str):
    for candidate in (path, os.path.join(base, path), os.path.join(os.getcwd(), path),
                      os.path.join(repo_root(), path)):
      if os.path.isfile(candidate):
        break
    else:
      return
    if candidate in seen:
      return
    seen.append(candidate)
    with open(candidate) as f:
      for line in f:
        match = _INCLUDE.match(line)
        if match:
          visit(match[1], os.path.dirname(candidate))

  for gin_file in gin_files:
    visit(gin_file, os.getcwd())
  return seen
