# One command runner. `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help setup test test-fast smoke bench lint validate clean-artifacts

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

setup: ## install/refresh the venv, AIRFLOW_HOME, DB, pool, DAGs (idempotent)
	./setup_airflow.sh

test: setup ## set up, then run the whole test suite (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: ## run the tests that need no live Airflow services
	$(PY) -m pytest -m "not live" $(PYTEST_ARGS)

smoke: setup ## run the smoke pipeline end to end under the real services
	$(PY) -m peftflow.smoke.run

bench: setup ## benchmarks: parse cost, prepare throughput, operator overhead, orchestration, 1 vs 2 GPUs
	$(PY) bench/bench_parse.py
	$(PY) bench/bench_prepare.py
	$(PY) bench/bench_operator.py
	$(PY) bench/bench_orchestration.py
	$(PY) bench/bench_devices.py

validate: ## validate dag_specs/ (what the pre-commit hook runs)
	$(VENV)/bin/peftflow validate

lint: ## ruff and mypy (installed on demand)
	$(PY) -m pip install --quiet ruff==0.14.6 mypy==1.19.0 types-PyYAML==6.0.12.20261122
	$(VENV)/bin/ruff check peftflow operators dags plugins tests bench
	$(VENV)/bin/mypy

clean-artifacts: ## delete local run artifacts (not releases, not the audit trail)
	rm -rf artifacts
