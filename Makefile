# quantgate: `make validate` and `make test` are the two commands a new user runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: validate test lint docs fixtures bench fuzz clean help

help:
	@echo "make validate  - install quantgate in $(VENV) and gate the sample release (fixtures/release/)"
	@echo "make test      - install the test dependencies and run the test suite"
	@echo "make lint      - ruff"
	@echo "make docs      - regenerate docs/finding-codes.md from the code's FINDING_CODES tables"
	@echo "make fixtures  - re-export every fixture with the real exporters and quantizers"
	@echo "make bench     - benchmarks against the reference readers -> benchmarks/RESULTS.md"
	@echo "make fuzz      - mutation fuzzing of every reader (FUZZ_SECONDS=600) -> benchmarks/RESULTS.md"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# the core install plus the fidelity extra (numpy, onnxruntime): what `make validate` needs, no torch
$(VENV)/.core: $(BIN)/python pyproject.toml
	$(PIP) install --quiet -e '.[fidelity]'
	@touch $@

$(STAMP): $(BIN)/python pyproject.toml
	$(PIP) install --quiet -e '.[dev,executorch]'
	$(BIN)/python fixtures/sarif/fetch_schema.py
	@touch $@

$(VENV)/.fixtures: $(BIN)/python pyproject.toml
	$(PIP) install --quiet -e '.[dev,fixtures]'
	@touch $@

validate: $(VENV)/.core
	$(BIN)/quantgate run --policy quantgate.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests fixtures benchmarks

# docs/finding-codes.md is generated (tests/test_readme.py checks it is current)
docs: $(VENV)/.core
	$(BIN)/python -m quantgate.core.codes --write docs/finding-codes.md

fixtures: $(VENV)/.fixtures
	@set -e; for script in fixtures/*/make_*.py; do echo "== $$script"; $(BIN)/python $$script; done

bench: $(VENV)/.fixtures
	$(BIN)/python benchmarks/run_all.py --output benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache benchmarks/.work

fuzz: $(VENV)/.fixtures
	$(BIN)/python benchmarks/fuzz.py --seconds $${FUZZ_SECONDS:-600} --output benchmarks/RESULTS.md
