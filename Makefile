# LeadCenter: `make demo` and `make test` do all the set-up on a fresh machine (Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install demo serve test lint check bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

install: $(VENV)/.installed

# Migrates, loads the demo data, prints the login, then runs the workers and the admin until
# Ctrl-C.
demo: install
	$(PY) manage.py demo --login-file var/demo-login.txt $(DEMO_ARGS)
	@$(MAKE) --no-print-directory serve

serve: install
	@trap 'kill 0' INT TERM EXIT; \
	$(PY) manage.py qcluster & \
	$(PY) manage.py runserver $(HOST):$(PORT) --noreload & \
	sleep 2; \
	echo; echo "LeadCenter is running: http://$(HOST):$(PORT)/admin/"; \
	if [ -f var/demo-login.txt ]; then cat var/demo-login.txt; fi; \
	echo "Workers (qcluster) are running too. Ctrl-C stops both."; \
	wait

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

check: install
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
