# Postdesk — `make run` starts a working embedded instance, `make test` runs the whole suite.
# Both set everything up themselves on a fresh Debian machine (venv, Python deps; `make test`
# also installs the test-only system packages with apt-get when run as root).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint bench system-deps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { sh .ci/system-deps.sh venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/postdesk init --instance var
	$(VENV)/bin/postdesk --config var/postdesk.yaml serve

system-deps: install
	@sh .ci/system-deps.sh test $(PY)

test: install system-deps
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache
