# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install clean

# --exit-with-parent make's pid: make passes no SIGINT on to its command, and killed it would leave
# `up` running; exec keeps make the parent ($$PPID is make's pid in the recipe's shell).
run: $(STAMP)
	exec $(BIN)/touchline up --exit-with-parent $$PPID

# One pytest worker a core, each with its own embedded servers and stack, a test file a worker:
# alone, the suite kept the two cores about half idle (it waits on fsyncs, restarts and timeouts).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "installing Touchline into $(VENV) (first run or pyproject.toml changed: about a minute)..."
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "Touchline needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1):" \
	       "give another with PYTHON, for instance make PYTHON=python3.11 $(MAKECMDGOALS)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .touchline .pytest_cache
