"""fmx's configurables as a user sees them: parameters, types and docs.

Every key a user writes (`Training.epochs`, `image_folder.root`) sets a
parameter of one of fmx's configurables: the settings classes (Data,
Training, Optimizer, Runtime, Experiment, Grid) and the registry entries.
Their signatures are the one source of truth, read three ways:

- the type annotations check every value a config sets before anything is
  built (a string where a number belongs would otherwise fail deep inside
  TensorFlow, after the run folder was made);
- the parameter names give "did you mean" for misspelt keys;
- the docstrings' `Args:` sections give `fmx describe` one line per parameter.
"""

import collections.abc
import dataclasses
import difflib
import inspect
import re
import typing
from typing import Any, Dict, List, Optional, Tuple

import gin

from fmx.errors import UserError

REQUIRED = 'required'
_SEQUENCES = (list, tuple, collections.abc.Sequence)
_ARG_LINE = re.compile(r'^\s{2,}\*{0,2}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$')


@dataclasses.dataclass(frozen=True)
class Parameter:
  name: str
  annotation: Any      # inspect.Parameter.empty when unannotated
  default: Any         # REQUIRED when the config must set it
  doc: str             # its line of the docstring's Args section ('' if none)


@dataclasses.dataclass(frozen=True)
class Configurable:
  name: str            # what a user writes before '.param': 'Training', 'kl'
  kind: str            # 'settings' or a registry's kind ('datasets', ...)
  doc: str             # first line of its docstring
  parameters: Tuple[Parameter, ...]

  def parameter_names(self) -> List[str]:
    return [p.name for p in self.parameters]


def _gin_configurables() -> Dict[str, Any]:
  """selector -> gin's record of every configurable fmx's modules register."""
  from fmx import entries  # pylint: disable=g-import-not-at-top
  entries.load_all()
  # gin has no public listing of its registry; this one dict is the only
  # private name fmx reads (pinned gin-config 0.5).
  selectors = gin.config._REGISTRY._selector_map  # pylint: disable=protected-access
  return {selector: record for selector, record in selectors.items()
          if getattr(record.wrapped, '__module__', '').startswith('fmx.')}


def _kind(record) -> str:
  return 'settings' if record.module.startswith('fmx.') else record.module


def _parameters(record) -> Tuple[Parameter, ...]:
  """The parameters a config may set (not those the framework passes)."""
  function = record.wrapped
  target = function.__init__ if inspect.isclass(function) else function
  try:
    hints = typing.get_type_hints(target)  # resolves string annotations
  except (NameError, TypeError):
    hints = {}
  docs = argument_docs(inspect.getdoc(function) or '')
  hidden = set(record.denylist or ())
  parameters = []
  for parameter in inspect.signature(function).parameters.values():
    if parameter.name in hidden or parameter.kind in (
        parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
      continue
    default = parameter.default
    if default is parameter.empty or default is gin.REQUIRED:
      default = REQUIRED
    parameters.append(Parameter(
        parameter.name, hints.get(parameter.name, parameter.annotation),
        default, docs.get(parameter.name, '')))
  return tuple(parameters)


def argument_docs(docstring: str) -> Dict[str, str]:
  """name -> its entry in a Google-style `Args:` section, continuation lines joined."""
  docs, inside, name, indent = {}, False, None, 0
  for line in docstring.splitlines():
    if line.strip() == 'Args:':
      inside = True
      continue
    if inside and line.strip() and not line.startswith(' '):
      inside = False  # the next section
    depth = len(line) - len(line.lstrip())
    if inside and name and line.strip() and depth > indent:
      docs[name] += ' ' + line.strip()  # the entry goes on
      continue
    match = _ARG_LINE.match(line) if inside else None
    name = match[1] if match else None
    if match:
      docs[name], indent = match[2].strip(), depth
  return docs


def all_configurables() -> Dict[str, Configurable]:
  """name -> Configurable, for every configurable fmx registers, sorted."""
  found = {}
  for record in _gin_configurables().values():
    doc = (inspect.getdoc(record.wrapped) or '').strip().splitlines()
    found[record.name] = Configurable(record.name, _kind(record),
                                      doc[0] if doc else '',
                                      _parameters(record))
  return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def find(name: str) -> Configurable:
  """The configurable `name` ('Training', 'kl', 'losses.kl'); UserError if none."""
  known = all_configurables()
  short = name.split('/')[-1].split('.')[-1]
  if short in known:
    return known[short]
  raise UserError(unknown_configurable_message(name, known))


def unknown_configurable_message(name: str,
                                 known: Optional[Dict[str, Configurable]] = None
                                 ) -> str:
  known = known or all_configurables()
  short = name.split('/')[-1].split('.')[-1]
  settings = [c.name for c in known.values() if c.kind == 'settings']
  return (f'{name!r} is nothing fmx can configure{did_you_mean(short, known)} '
          f'Settings: {", ".join(settings)}; other names are entries of '
          'fmx\'s registries, which `fmx list` shows.')


def unknown_parameter_message(configurable: str, parameter: str) -> str:
  found = find(configurable)
  names = found.parameter_names()
  return (f'{found.name} has no parameter {parameter!r}'
          f'{did_you_mean(parameter, names)} Its parameters: '
          f'{", ".join(names) or "(none)"}; `fmx describe {found.name}` '
          'explains each.')


def did_you_mean(name: str, candidates) -> str:
  """'; did you mean 'x'?' for the closest candidate, else '.'."""
  close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
  if not close:  # case slips ('training' for 'Training')
    close = [c for c in candidates if c.lower() == name.lower()]
  return f"; did you mean {close[0]!r}?" if close else '.'


# --- Types -------------------------------------------------------------

_NAMES = {int: ('an integer', 'integers'), float: ('a number', 'numbers'),
          str: ('a string', 'strings'), bool: ('True or False', 'booleans')}


def type_name(annotation, plural: bool = False) -> str:
  """What a value of `annotation` is, in words: 'an integer or None'."""
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if annotation in _NAMES:
    return _NAMES[annotation][plural]
  if origin is typing.Union:
    words = [type_name(a, plural) for a in args if a is not type(None)]
    return ' or '.join(words) + (' or None' if type(None) in args else '')
  if origin in _SEQUENCES or annotation in (list, tuple):
    if origin is tuple and args and args[-1] is not Ellipsis:
      kinds = {type_name(a, True) for a in args}
      return (f'a list of {len(args)} {kinds.pop()}' if len(kinds) == 1
              else f'a list of {len(args)} values')
    item = f' of {type_name(args[0], True)}' if args else ''
    return ('lists' if plural else 'a list') + item
  if origin is dict or annotation is dict:
    return 'dicts' if plural else 'a dict'
  return getattr(annotation, '__name__', str(annotation))


def matches(value, annotation) -> bool:
  """Whether `value` (a parsed gin literal) fits `annotation`.

  Unknown annotations and gin references (`@fn()`, `%MACRO`, evaluated
  later by gin) always fit.
  """
  if annotation is inspect.Parameter.empty or annotation is Any or _is_reference(value):
    return True
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if origin is typing.Union:
    return any(matches(value, a) for a in args)
  if annotation is type(None):
    return value is None
  if annotation is bool:
    return isinstance(value, bool)
  if annotation is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if annotation is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if annotation is str:
    return isinstance(value, str)
  if origin in _SEQUENCES or annotation in (list, tuple):
    if not isinstance(value, (list, tuple)):
      return False
    if origin is tuple and args and args[-1] is not Ellipsis:
      return len(value) == len(args) and all(map(matches, value, args))
    return not args or all(matches(v, args[0]) for v in value)
  if origin is dict or annotation is dict:
    return isinstance(value, dict)
  return True


def _is_reference(value) -> bool:
  if isinstance(value, (list, tuple)):
    return any(_is_reference(v) for v in value)
  # pylint: disable=protected-access
  return isinstance(value, (gin.config.ConfigurableReference,
                            gin.config._UnknownConfigurableReference))


def check_bound_values(where) -> None:
  """UserError for the first value the config sets that its parameter's type refuses.

  `where(key)` names the place that set `key` (a file and line, a --bind).
  """
  records = _gin_configurables()
  # The values gin parsed, by (scope, selector); gin offers no public view.
  for (scope, selector), values in list(gin.config._CONFIG.items()):  # pylint: disable=protected-access
    record = records.get(selector)
    if record is None:
      continue
    parameters = {p.name: p for p in _parameters(record)}
    for name, value in values.items():
      parameter = parameters.get(name)
      if parameter is None or matches(value, parameter.annotation):
        continue
      key = f'{scope + "/" if scope else ""}{record.name}.{name}'
      raise UserError(f'{key} = {value!r} (set in {where(key)}) must be '
                      f'{type_name(parameter.annotation)}.'
                      f'{_hint(key, value, parameter.annotation)}')


def _hint(key: str, value, annotation) -> str:
  """Advice for a number or True/False written in quotes."""
  if not isinstance(value, str):
    return ''
  try:
    unquoted = gin.config.parse_value(value)
  except (ValueError, SyntaxError):
    return ''
  if matches(unquoted, annotation):
    return f' Write it without quotes: {key} = {value}'
  return ''


# --- Description -------------------------------------------------------


def describe(name: str) -> str:
  """The lines of `fmx describe NAME`: one per parameter, with type and default."""
  found = find(name)
  kind = '' if found.kind == 'settings' else f' ({found.kind} entry)'
  lines = [f'{found.name}{kind}: {found.doc}']
  if not found.parameters:
    lines.append('  (no parameters)')
  for parameter in found.parameters:
    default = ('required' if parameter.default == REQUIRED
               else f'default {parameter.default!r}')
    kind = (f'{type_name(parameter.annotation)}, '
            if parameter.annotation is not inspect.Parameter.empty else '')
    lines.append(f'  {found.name}.{parameter.name} ({kind}{default})'
                 f'{": " + parameter.doc if parameter.doc else ""}')
  return '\n'.join(lines)
