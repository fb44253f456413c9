# Quick start: `make demo` and `make test` each create .venv and install what
# they need on first use; later calls reuse it until pyproject.toml or
# constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test install clean-runs bazel-test reproduce reproduce-quick

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

# The paper's findings on real offline data: runs every study of
# experiments/reproduce/ (resumable: rerun to continue), then writes
# docs/results.md, docs/figures/*.png and docs/results.json. 60-75 min on 2
# cores (plan: fmx/reproduce/results_page.py). The quick subset (studies 1
# and 2, a quarter of the steps, < 20 min) writes runs/reproduce-quick/results.md.
REPRODUCE_PARALLEL ?= 2
reproduce: $(VENV)/.installed
	$(BIN)/python -m fmx.reproduce --parallel $(REPRODUCE_PARALLEL)

reproduce-quick: $(VENV)/.installed
	$(BIN)/python -m fmx.reproduce --quick --parallel $(REPRODUCE_PARALLEL)

# Two pytest workers, one test file each at a time: a single pytest process
# kept only about one of the two cores busy (TF's small ops leave gaps).
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The same suite under Bazel 4.2.3 (Debian's bazel-bootstrap), offline, on
# this venv's Python (docs/bazel.md). ~30 min on 2 cores; not run by CI.
bazel-test: $(VENV)/.installed-test
	command -v bazel >/dev/null || { apt-get update && apt-get install -y bazel-bootstrap; }
	bazel test --repo_env=FMX_PYTHON=$(abspath $(BIN)/python) //...

clean-runs:
	rm -rf runs
