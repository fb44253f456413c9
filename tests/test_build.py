"""BUILD covers every fmx module and test module, with the deps the code imports.

BUILD is Starlark, which is Python syntax here: it is executed with stand-ins
for Bazel's functions, so globs and the py_test list comprehension are read
as Bazel reads them.
"""

import ast
import glob
import os

import pytest

from conftest import REPO

SIZES = ('small', 'medium', 'large', 'enormous')


def _glob(include, exclude=(), **_):
  """Bazel's glob() over files: `**` spans folders, exclude takes patterns."""
  def files(patterns):
    return {os.path.relpath(p, REPO) for pattern in patterns
            for p in glob.glob(os.path.join(REPO, pattern), recursive=True)
            if os.path.isfile(p)}
  return sorted(files(include) - files(exclude))


def load_build(path=os.path.join(REPO, 'BUILD')):
  """{name: attributes (+ 'kind')} of every rule in a BUILD file."""
  targets = {}

  def rule(kind):
    def declare(name, **attrs):
      assert name not in targets, f'two targets named {name}'
      targets[name] = dict(attrs, kind=kind)
    return declare

  scope = {'glob': _glob, 'package': lambda **_: None}
  scope.update({k: rule(k) for k in ('py_library', 'py_binary', 'py_test')})
  with open(path) as f:
    exec(compile(f.read(), path, 'exec'), scope)  # pylint: disable=exec-used
  return targets


TARGETS = load_build()
LIBRARIES = {n: t for n, t in TARGETS.items() if t['kind'] == 'py_library'}
TESTS = {n: t for n, t in TARGETS.items() if t['kind'] == 'py_test'}
OWNER = {src: name for name, t in LIBRARIES.items() for src in t['srcs']}


def _py_files(folder, pattern='*.py'):
  return sorted(os.path.relpath(p, REPO) for p in glob.glob(
      os.path.join(REPO, folder, '**', pattern), recursive=True))


def test_every_fmx_module_is_in_one_library():
  owners = {}
  for name, target in LIBRARIES.items():
    for src in target['srcs']:
      owners.setdefault(src, []).append(name)
  modules = _py_files('fmx')
  missing = [m for m in modules if m not in owners]
  assert not missing, f'add these to a py_library in BUILD: {missing}'
  shared = {m: o for m, o in owners.items() if len(o) > 1}
  assert not shared, f'in more than one py_library: {shared}'


def test_every_test_module_has_a_py_test():
  listed = {}
  for name, target in TESTS.items():
    module = [s for s in target['srcs'] if s != 'tests/pytest_main.py']
    assert len(module) == 1 and target['args'] == ['$(location %s)' % module[0]], name
    assert name == module[0][len('tests/'):-len('.py')], name
    assert target['size'] in SIZES, name
    listed[module[0]] = name
  tests = _py_files('tests', 'test_*.py')
  assert sorted(listed) == tests, (
      'add a line per test module to the py_test list in BUILD; '
      f'missing: {sorted(set(tests) - set(listed))}, '
      f'gone: {sorted(set(listed) - set(tests))}')


def test_every_test_helper_is_in_test_fixtures():
  helpers = [p for p in _py_files('tests')
             if not os.path.basename(p).startswith('test_')]
  assert helpers and set(helpers) <= set(LIBRARIES['test_fixtures']['srcs'])


# --- deps: what each target's sources import -------------------------------


def _module_file(dotted):
  """The file of an fmx module or package, or None if `dotted` is neither."""
  base = os.path.join(REPO, *dotted.split('.'))
  for path in (base + '.py', os.path.join(base, '__init__.py')):
    if os.path.isfile(path):
      return os.path.relpath(path, REPO)
  return None


def _imports(path):
  """(file imported, parents' __init__ files, lazy, inside) for fmx imports.

  `lazy`: inside a function, so run at call time; `inside`: that function.
  """
  with open(os.path.join(REPO, path)) as f:
    tree = ast.parse(f.read(), path)
  found = []

  def visit(node, function):
    for child in ast.iter_child_nodes(node):
      inner = function
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        inner = child.name
      names = []
      if isinstance(child, ast.Import):
        names = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
        # `from fmx.data import decoding` imports the module fmx.data.decoding.
        names = [f'{child.module}.{a.name}' if _module_file(f'{child.module}.{a.name}')
                 else child.module for a in child.names]
      for dotted in names:
        if dotted.split('.')[0] != 'fmx':
          continue
        parts = dotted.split('.')
        parents = [_module_file('.'.join(parts[:i])) for i in range(1, len(parts))]
        found.append((_module_file(dotted), parents, function is not None, function))
      visit(child, inner)

  visit(tree, None)
  return found


def _closure(name):
  seen, todo = set(), [name]
  while todo:
    for dep in TARGETS[todo.pop()].get('deps', []):
      if dep[1:] not in seen:
        seen.add(dep[1:])
        todo.append(dep[1:])
  return seen


def _required(name):
  """(direct deps the sources need, targets needed somewhere below)."""
  direct, below = set(), set()
  for src in TARGETS[name]['srcs']:
    for file, parents, lazy, _ in _imports(src):
      below |= {OWNER[p] for p in parents}
      owner = OWNER[file]
      # A call-time import of a target that depends on this one would be a
      # cycle, which Bazel forbids; whoever uses both depends on both.
      if lazy and name in _closure(owner):
        continue
      direct.add(owner)
  direct.discard(name)
  below.discard(name)
  return direct, below


@pytest.mark.parametrize('name', sorted(n for n, t in TARGETS.items()
                                        if t['kind'] != 'py_test' and not t.get('testonly')))
def test_library_deps_are_what_its_sources_import(name):
  direct, below = _required(name)
  deps = {d[1:] for d in TARGETS[name].get('deps', [])}
  assert direct <= deps, f'{name} imports these, add them to its deps: {sorted(direct - deps)}'
  assert deps <= direct, f'{name} does not import these deps: {sorted(deps - direct)}'
  unreached = below - _closure(name)
  assert not unreached, f'{name} needs these, directly or below: {sorted(unreached)}'


@pytest.mark.parametrize('name', sorted(n for n, t in TARGETS.items()
                                        if t['kind'] == 'py_test' or t.get('testonly')))
def test_tests_reach_what_they_import(name):
  direct, below = _required(name)
  missing = (direct | below) - _closure(name)
  assert not missing, f'{name} imports these without depending on them: {sorted(missing)}'


def test_the_checker_notices_drift(tmp_path):
  build = tmp_path / 'BUILD'
  build.write_text('py_library(name = "a", srcs = glob(["fmx/data/*.py"], '
                   'exclude = ["fmx/data/pipeline.py"]))\n'
                   '[py_test(name = t[0], size = t[1]) for t in [("x", "small")]]\n')
  targets = load_build(str(build))
  assert 'fmx/data/source.py' in targets['a']['srcs']
  assert 'fmx/data/pipeline.py' not in targets['a']['srcs']
  assert targets['x']['size'] == 'small'
  # gin_config needs entries; a call-time import that would close a cycle
  # (grid -> gin_config) is not demanded; cli's call-time imports are.
  assert 'entries' in _required('gin_config')[0]
  assert 'gin_config' not in _required('grid')[0]
  assert {'export', 'report', 'compare'} <= _required('fmx')[0]
  assert {'tasks', 'losses', 'grid'} <= _required('entries')[0]


def test_the_registry_is_a_leaf():
  # Every entry package imports the registry: an fmx import of its own
  # would be a circle (fmx/entries.py lists the entry packages instead).
  imported = {OWNER[file] for file, _, _, _ in _imports('fmx/registry.py')}
  assert imported <= {'errors'}, imported
