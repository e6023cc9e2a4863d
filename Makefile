# Quick start: `make run` (the product with demo data) and `make test` (every check CI runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: run test install install-dev lock bench clean-db

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Installs come from the lock only (pinned versions, checked hashes); pyproject.toml holds the
# ranges the lock is made from (`make lock`). The checkout itself goes on the path through a
# .pth file, as an editable install would, with nothing to build.
$(VENV)/.installed: requirements/runtime.txt | $(VENV)/bin/python
	$(PY) -m pip install $(PIP_FLAGS) --require-hashes -r requirements/runtime.txt
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' | \
	  xargs -I{} sh -c 'echo "$(CURDIR)" > {}/billing-portal.pth'
	touch $@

$(VENV)/.installed-dev: requirements/dev.txt $(VENV)/.installed
	$(PY) -m pip install $(PIP_FLAGS) --require-hashes -r requirements/dev.txt
	bin/ensure-chromium
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	@bin/run

# Regenerates requirements/*.txt from pyproject.toml; `make lock UPGRADE=1` moves every pin
# to the newest release the ranges allow.
lock: install-dev
	$(PY) bin/lock $(if $(UPGRADE),--upgrade)

# The suite runs on every CPU (pytest-xdist, one test database per worker). A module's tests
# stay on one worker (loadscope), so a module's stack (the fault tests') starts once.
# PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= auto

test: install-dev
	$(PY) bin/lock --check
	$(PY) -m pip check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports
	$(PY) manage.py makemigrations --check --dry-run
	@# pytest exits 5 when it collected nothing: a suite that ran no test has failed.
	@$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadscope --durations=15 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

bench: install-dev
	$(PY) -m bench $(BENCH_ARGS)

clean-db:
	-$(PY) -m billing_portal.embedded_db stop
	rm -rf var/pgdata
