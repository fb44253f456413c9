"""Bazel's entry point for one pytest module: `py_test(main=..., args=[module])`.

A py_test whose main were the test module itself would only import it and
exit 0, whatever its tests would say.
"""

import sys

import pytest

if __name__ == '__main__':
  sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider'] + sys.argv[1:]))
