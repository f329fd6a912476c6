# Every target bootstraps .venv on a fresh clone; nothing outside the repo is assumed
# beyond python3 (3.11+).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DURATION ?= 60

.PHONY: install test lint demo bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,redis,fast]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check wsclient tests examples benchmarks
	$(VENV)/bin/ruff format --check wsclient tests examples benchmarks
	$(VENV)/bin/mypy wsclient tests examples benchmarks
	$(VENV)/bin/lint-imports

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) benchmarks/run.py

chaos: $(STAMP)
	$(PY) benchmarks/chaos.py --duration $(DURATION)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
