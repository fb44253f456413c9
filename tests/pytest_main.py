"""Bazel's entry point for one pytest module: `py_test(main=..., args=[module])`.

A py_test whose main were the test module itself would only import it and
exit 0, whatever its tests would say. Outside Bazel this is plain
`pytest -q MODULE`.
"""

import os
import sys

import pytest


class Shard:
  """Keeps every TEST_TOTAL_SHARDS-th test, starting at TEST_SHARD_INDEX.

  Bazel runs a py_test with `shard_count = N` as N processes, each told its
  index; round-robin spreads a module's slow tests and parameter sets over
  the shards.
  """

  def __init__(self, index: int, total: int):
    self.index, self.total = index, total

  @pytest.hookimpl(trylast=True)  # after -k/-m deselection, on what is left
  def pytest_collection_modifyitems(self, config, items):
    keep = [t for i, t in enumerate(items) if i % self.total == self.index]
    drop = [t for i, t in enumerate(items) if i % self.total != self.index]
    if drop:
      config.hook.pytest_deselected(items=drop)
    items[:] = keep


def _bazel_environment() -> None:
  """A writable HOME and TMPDIR inside the test's sandbox (TEST_TMPDIR).

  TensorFlow, TFDS and fmx's teacher-output cache write under HOME, and
  pytest's tmp_path under TMPDIR; Bazel may leave HOME unset or read-only.
  """
  scratch = os.environ['TEST_TMPDIR']
  os.environ['TMPDIR'] = scratch
  home = os.environ.get('HOME', '')
  if not home or not os.access(home, os.W_OK):
    os.environ['HOME'] = os.path.join(scratch, 'home')
    os.makedirs(os.environ['HOME'], exist_ok=True)


def main(argv) -> int:
  args = ['-q', '-p', 'no:cacheprovider']  # runfiles are read-only
  plugins = []
  if 'TEST_TMPDIR' in os.environ:
    _bazel_environment()
  if os.environ.get('XML_OUTPUT_FILE'):  # per-test results in Bazel's test.xml
    args.append('--junitxml=' + os.environ['XML_OUTPUT_FILE'])
  total = int(os.environ.get('TEST_TOTAL_SHARDS', '1'))
  if total > 1:
    if os.environ.get('TEST_SHARD_STATUS_FILE'):
      # Touching it tells Bazel this runner honours sharding.
      open(os.environ['TEST_SHARD_STATUS_FILE'], 'a').close()
    plugins.append(Shard(int(os.environ['TEST_SHARD_INDEX']), total))
  code = pytest.main(args + argv, plugins=plugins)
  if code == pytest.ExitCode.NO_TESTS_COLLECTED and total > 1:
    return 0  # more shards than this module has tests: an empty shard is fine
  return code


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
