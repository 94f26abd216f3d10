# Postdesk — `make run` starts a working embedded instance, `make test` runs the whole suite.
# Both set everything up themselves on a fresh Debian machine (venv, Python deps; `make test`
# also installs the test-only system packages with apt-get when run as root).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# the console's htmx, served locally (no CDN); fetched once from the npm registry
HTMX_VERSION := 2.0.11
HTMX   := console/static/vendor/htmx.min.js

.PHONY: install run test lint bench system-deps clean htmx

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { sh .ci/system-deps.sh venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

$(HTMX):
	@sh .ci/system-deps.sh npm
	@command -v npm >/dev/null 2>&1 || { echo "make: npm is needed once to fetch htmx for \
	the console (Debian: apt-get install npm)" >&2; exit 1; }
	npm install --prefix build/htmx --silent --no-audit --no-fund htmx.org@$(HTMX_VERSION)
	@mkdir -p $(dir $(HTMX))
	cp build/htmx/node_modules/htmx.org/dist/htmx.min.js $(HTMX)

htmx: $(HTMX)

install: $(STAMP) $(HTMX)

run: install
	$(VENV)/bin/postdesk init --instance var
	$(VENV)/bin/postdesk --config var/postdesk.yaml serve

system-deps: install
	@sh .ci/system-deps.sh test $(PY)

test: install system-deps
	$(PY) -m pytest -q -n 2 --dist loadscope

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/ingest.py
	$(PY) bench/console.py
	$(PY) bench/scaleout.py

clean:
	rm -rf $(VENV) var .pytest_cache build/htmx $(HTMX)
