# Quick start: `make run` (the product with demo data) and `make test` (every check CI runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: run test install install-dev bench clean-db

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Runtime dependencies only: `make run` on a fresh clone does not wait for the dev tools.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install $(PIP_FLAGS) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install $(PIP_FLAGS) -e ".[dev]"
	bin/ensure-chromium
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	@bin/run

test: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(PY) manage.py makemigrations --check --dry-run
	@# pytest exits 5 when it collected nothing: a suite that ran no test has failed.
	@$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

bench: install-dev
	$(PY) -m bench $(BENCH_ARGS)

clean-db:
	-$(PY) -m billing_portal.embedded_db stop
	rm -rf var/pgdata
