# Every target bootstraps .venv on a fresh clone; nothing outside the repo is assumed
# beyond python3 (3.11+).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.docs-stamp
DURATION ?= 60

.PHONY: install test lint docs demo bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# the distribution was called "wsclient" until it became wsclient-pool: drop that install
	$(PY) -m pip uninstall -q -y wsclient 2>/dev/null || true
	$(PY) -m pip install -q -e '.[dev,redis,dns,fast,bench]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check wsclient tests examples benchmarks tools
	$(VENV)/bin/ruff format --check wsclient tests examples benchmarks tools
	$(VENV)/bin/mypy wsclient tests examples benchmarks tools
	$(VENV)/bin/lint-imports

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,redis,dns,docs]'
	touch $(DOCS_STAMP)

# The API reference site (mkdocs-material + mkdocstrings) in site/; any warning fails it.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# wsclient demo: local backends, traffic, faults, a live table; DEMO_ARGS="--duration 60"
demo: $(STAMP)
	$(VENV)/bin/wsclient demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run.py

chaos: $(STAMP)
	$(PY) benchmarks/chaos.py --duration $(DURATION)

clean:
	rm -rf $(VENV) build site *.egg-info .mypy_cache .ruff_cache
