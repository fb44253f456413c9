# Quick start: `make demo` and `make test` each create .venv and install what
# they need on first use; later calls reuse it until pyproject.toml or
# constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test install clean-runs bazel-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Trains the MNIST teacher (if runs/demo/teacher is not finished), then
# distills the student and prints the comparison table.
demo: $(VENV)/.installed
	$(BIN)/fmx run --gin experiments/demo.gin

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

# The same suite under Bazel 4.2.3 (Debian's bazel-bootstrap), offline, on
# this venv's Python (docs/bazel.md). ~30 min on 2 cores; not run by CI.
bazel-test: $(VENV)/.installed-test
	command -v bazel >/dev/null || { apt-get update && apt-get install -y bazel-bootstrap; }
	bazel test --repo_env=FMX_PYTHON=$(abspath $(BIN)/python) //...

clean-runs:
	rm -rf runs
