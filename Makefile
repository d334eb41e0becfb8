# Everything starts from a fresh clone: `make test` and `make run` build .venv/ first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2

.PHONY: install system-libraries browser postgres run dev test bench lint clean

install: $(STAMP) system-libraries

# WeasyPrint (the PDF renderer) needs Pango and HarfBuzz from the system; Debian-based machines
# get them here, others must install them by hand (the check prints what is missing).
SYSTEM_LIBRARIES := libpango-1.0.so.0 libpangoft2-1.0.so.0 libharfbuzz-subset.so.0
system-libraries:
	@missing=""; for lib in $(SYSTEM_LIBRARIES); do ldconfig -p | grep -q "$$lib" || missing="$$missing $$lib"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "Installing system libraries for PDF rendering:$$missing"; \
	    apt-get update -qq && apt-get install -y -qq libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 \
	      fonts-dejavu-core >/dev/null; \
	  else echo "Missing system libraries for PDF rendering:$$missing (install Pango and HarfBuzz)"; exit 1; fi; \
	fi

# The browser tests (tests/test_browser.py) drive Debian's Chromium through Playwright; Playwright's
# own browser download is not used. Without apt-get this only says so, and those tests skip.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "Installing Chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "No $(CHROMIUM) and no apt-get: install Chromium by hand, or the browser tests will be skipped"; fi; \
	fi

# The test suite's second run is on PostgreSQL: a throwaway cluster it starts and removes itself
# (tests/postgres.py) from Debian's binaries. Without apt-get this says so and fails.
POSTGRES_INITDB := /usr/lib/postgresql/*/bin/initdb
postgres:
	@if ! ls $(POSTGRES_INITDB) >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null; then \
	    echo "Installing PostgreSQL for the test suite"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "No $(POSTGRES_INITDB) and no apt-get: install PostgreSQL by hand to run make test"; exit 1; fi; \
	fi

# Re-install only when the dependency list changes; the package itself is editable.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/gunicorn --bind $(HOST):$(PORT) --workers $(WORKERS) wsgi:app

# Flask's development server with the background runner (flask run alone would not start it).
dev: install
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/python wsgi.py --host $(HOST) --port $(PORT)

# The whole suite on SQLite, then again on PostgreSQL; both run even when the first fails, and
# either failing fails the target. PYTEST_ARGS reaches both (make test PYTEST_ARGS='-m "not slow"').
test: install browser postgres
	@status=0; \
	echo "== the test suite on SQLite"; \
	TEST_DATABASE=sqlite $(BIN)/pytest $(PYTEST_ARGS) || status=1; \
	echo "== the test suite on PostgreSQL"; \
	TEST_DATABASE=postgresql $(BIN)/pytest $(PYTEST_ARGS) || status=1; \
	exit $$status

# Benchmarks, each against a baseline measured in the same run; writes docs/benchmarks.md.
# make bench ONLY=status_poll,step_commit runs some of them (and leaves docs/ alone).
bench: install postgres
	$(BIN)/python -m bench $(if $(ONLY),--only $(ONLY))

lint: install
	$(BIN)/flake8 app tests wsgi.py gunicorn.conf.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
