"""Named registries of datasets, backbones, augmentations and losses.

Every entry is registered with a decorator under its own name and is, at the
same time, a gin configurable in the gin module of its kind, so a gin file can
both choose an entry by name and set its parameters:

    DistillationTask.loss = 'kl'        # choose
    losses.kl.temperature = 2.0         # parameterise

Registering a name twice is an error (two modules silently fighting over a name
is a bug that only shows up as a wrong experiment); looking up an unknown name
lists what is known and the closest match.
"""

import difflib
import inspect
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import gin

from fmx.errors import UserError


class UnknownEntryError(UserError):
  """A registry lookup of a name nobody registered; `.name` is that name."""

  def __init__(self, message: str, name):
    super().__init__(message)
    self.name = name


class Registry:
  """Name -> callable for one kind of thing (e.g. 'augmentation')."""

  def __init__(self, kind: str, gin_module: str):
    self.kind = kind              # singular, used in messages
    self.gin_module = gin_module  # plural, the gin module of its entries
    self._entries: Dict[str, Callable] = {}

  def register(self, name: Optional[str] = None,
               denylist: Tuple[str, ...] = ()) -> Callable:
    """Decorator: registers `fn` under `name` (default: its own name).

    `denylist` names parameters that gin must not set (those the framework
    passes at call time, e.g. the image tensor).
    """
    def decorator(fn: Callable) -> Callable:
      entry_name = name or fn.__name__
      if entry_name in self._entries:
        raise ValueError(
            f'{self.kind} {entry_name!r} is registered twice: once by '
            f'{_origin(self._entries[entry_name])} and again by {_origin(fn)}. '
            'Rename one of them.')
      configurable = gin.configurable(
          entry_name, module=self.gin_module, denylist=list(denylist))(fn)
      self._entries[entry_name] = configurable
      return configurable
    return decorator

  def get(self, name: str) -> Callable:
    """The entry registered as `name`; a UserError naming the closest match."""
    if not isinstance(name, str) or name not in self._entries:
      raise UnknownEntryError(self.unknown_message(name), name)
    return self._entries[name]

  def unknown_message(self, name) -> str:
    close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else '.'
    return (f'unknown {self.kind} {name!r}{hint} Known {self.gin_module}: '
            f'{", ".join(self.names()) or "(none)"}. Run `fmx list '
            f'{self.gin_module}` to see what each one does.')

  def names(self) -> List[str]:
    return sorted(self._entries)

  def describe(self) -> Iterator[Tuple[str, str]]:
    """(name, first line of its docstring) for every entry, sorted."""
    for entry_name in self.names():
      doc = inspect.getdoc(self._entries[entry_name]) or ''
      yield entry_name, (doc.splitlines() or [''])[0]

  def __contains__(self, name: str) -> bool:
    return name in self._entries


def _origin(fn: Callable) -> str:
  return f'{getattr(fn, "__module__", "?")}.{getattr(fn, "__qualname__", fn)}'


DATASETS = Registry('dataset', 'datasets')
BACKBONES = Registry('backbone', 'backbones')
AUGMENTATIONS = Registry('augmentation', 'augmentations')
LOSSES = Registry('loss', 'losses')
TASKS = Registry('task', 'tasks')

ALL: Dict[str, Registry] = {
    r.gin_module: r for r in (DATASETS, BACKBONES, AUGMENTATIONS, LOSSES, TASKS)}


def load_all_entries() -> None:
  """Imports every module that registers entries.

  gin only knows a configurable once its module has been imported, so this
  runs before any gin file is parsed.
  """
  # pylint: disable=g-import-not-at-top,unused-import
  import fmx.augmentations  # noqa: F401
  import fmx.backbones  # noqa: F401
  import fmx.data  # noqa: F401
  import fmx.grid  # noqa: F401  (Grid.axes may sit in any gin file)
  import fmx.tuning  # noqa: F401  (Tune.space may sit in any gin file)
  import fmx.losses  # noqa: F401
  import fmx.tasks  # noqa: F401
  import fmx.training  # noqa: F401
