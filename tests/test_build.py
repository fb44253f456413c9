"""The BUILD file covers every fmx module and every test module."""

import fnmatch
import glob
import os
import re

from conftest import REPO

BUILD = open(os.path.join(REPO, 'BUILD')).read()


def _covered(path: str) -> bool:
  """True if BUILD names `path` or one of its globs matches it."""
  if f'"{path}"' in BUILD:
    return True
  for call in re.finditer(r'glob\(\[([^\]]*)\](?:,\s*exclude\s*=\s*\[([^\]]*)\])?\)', BUILD):
    includes = re.findall(r'"([^"]+)"', call[1])
    excludes = re.findall(r'"([^"]+)"', call[2] or '')
    if any(fnmatch.fnmatch(path, p) for p in includes) and path not in excludes:
      return True
  return False


def test_every_fmx_module_is_in_a_target():
  modules = [os.path.relpath(p, REPO) for p in
             glob.glob(os.path.join(REPO, 'fmx', '**', '*.py'), recursive=True)]
  missing = [m for m in modules if not _covered(m)]
  assert not missing, f'add these to a py_library in BUILD: {missing}'


def test_every_test_module_has_a_py_test():
  tests = sorted(os.path.relpath(p, REPO) for p in
                 glob.glob(os.path.join(REPO, 'tests', 'test_*.py')))
  listed = re.findall(r'\("(tests/test_\w+\.py)", "(?:small|medium|large|enormous)"\)', BUILD)
  assert sorted(listed) == tests, 'the py_test list in BUILD differs from tests/'


def test_the_checker_notices_a_missing_module():
  assert not _covered('fmx/not_a_module.py')
  assert _covered('fmx/data/pipeline.py')
  assert not _covered('fmx/training/settings.py.bak')
