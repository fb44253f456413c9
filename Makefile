# Quick start: `make demo` and `make test` each create .venv and install what
# they need on first use; later calls reuse it until pyproject.toml or
# constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test install clean-runs

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

clean-runs:
	rm -rf runs
