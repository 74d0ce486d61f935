# Every target sets up what it needs first (system packages, .venv, installs);
# a second run only checks, it does not reinstall.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help setup demo test check bench clean

help:
	@echo "make demo    run a simulated store visit end to end (embedded broker)"
	@echo "make test    run the whole test suite (starts real mosquitto brokers)"
	@echo "make check   ruff and mypy"
	@echo "make bench   run every benchmark in bench/, writing bench/out/*.json"
	@echo "make setup   only install: system packages, $(VENV), python packages"

setup:
	@scripts/system-deps.sh
	@scripts/venv.sh

demo: setup
	$(BIN)/proximity demo

# two pytest workers, one per core of the 2-core machines CI runs on (TEST_WORKERS=0:
# in one process); a test file stays in one worker, so its module fixtures (a broker,
# a mocked BlueZ) start once
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) bench/out/*.json .pytest_cache .mypy_cache .ruff_cache .hypothesis
