# LeadCenter: `make demo` and `make test` do all the set-up on a fresh machine (Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
SMTP_PORT ?= 2525
PYTEST_ARGS ?=

.PHONY: install demo serve test test-reliability lint check bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

install: $(VENV)/.installed

# Migrates, loads the demo data, prints the login, then runs the workers and the admin until
# Ctrl-C.
demo: install
	@mkdir -p var
	$(PY) manage.py demo --login-file var/demo-login.txt --smtp-port $(SMTP_PORT) --admin-url http://$(HOST):$(PORT)/admin/ $(DEMO_ARGS)
	@$(MAKE) --no-print-directory serve

serve: install
	@mkdir -p var; trap 'kill 0' INT TERM EXIT; \
	$(PY) manage.py smtp_simulator --port $(SMTP_PORT) > var/smtp_simulator.log 2>&1 & \
	$(PY) manage.py qcluster > var/qcluster.log 2>&1 & \
	$(PY) manage.py runserver $(HOST):$(PORT) --noreload & \
	sleep 2; \
	echo; echo "LeadCenter is running: http://$(HOST):$(PORT)/admin/"; \
	if [ -f var/demo-login.txt ]; then cat var/demo-login.txt; fi; \
	echo "Workers (qcluster, log in var/qcluster.log) and the simulated internet (127.0.0.1:$(SMTP_PORT)) run too. Ctrl-C stops all three."; \
	wait

# The reliability suite (tests/reliability/, RELIABILITY.md) is long: it runs on its own.
test: install
	$(PY) -m pytest --ignore=tests/reliability $(PYTEST_ARGS)

# Full sizes by default (10 crash trials of 5,000 recipients, 60 s of load); CI sets smaller
# ones (RELIABILITY_TRIALS, RELIABILITY_RECIPIENTS, LOAD_SECONDS). PostgreSQL by default, as in
# production (the database-drop test needs it); RELIABILITY_DATABASE_URL= runs it on SQLite.
# The figures land in var/reliability/ and in RELIABILITY.md.
# RELIABILITY_REPORT= prints the figures instead of writing them into RELIABILITY.md (CI).
RELIABILITY_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/leadcenter_reliability
RELIABILITY_REPORT ?= RELIABILITY.md
test-reliability: install
	@mkdir -p var/reliability
	DATABASE_URL="$(RELIABILITY_DATABASE_URL)" RELIABILITY_FRESH=1 \
		$(PY) -m pytest tests/reliability -p no:cacheprovider \
		$(if $(findstring postgres,$(RELIABILITY_DATABASE_URL)),--create-db) $(PYTEST_ARGS)
	$(PY) -m tests.reliability.report $(if $(RELIABILITY_REPORT),--write $(RELIABILITY_REPORT))

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: install
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
