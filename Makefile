# FleetLoop: `make demo` runs the closed loop on embedded defaults; `make test` runs the tests.
# Both install what they need first (apt packages, .venv, pinned requirements).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
MODELS ?= models

.PHONY: setup lint test demo demo-quick models bench clean help

help:
	@echo "make demo   - the closed-loop demo on a simulated fleet (embedded defaults)"
	@echo "make test   - install everything needed, lint, then run the test suite"
	@echo "make lint   - ruff (lint and format check), mypy (the robot runtime, the simulated world, the model toolchain)"
	@echo "make models - build the reference models into ./$(MODELS)"
	@echo "make bench  - run the benchmarks (quick mode)"

setup:
	@scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --config-file mypy.tools.ini

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

models: setup
	$(VENV)/bin/fleetloop models build --out $(MODELS)

demo: setup models
	$(VENV)/bin/fleetloop demo --models $(MODELS)

demo-quick: setup
	$(VENV)/bin/fleetloop demo --quick

bench: setup models
	$(PY) benchmarks/edge_inference.py --models $(MODELS) --quick
	$(PY) benchmarks/selection_queue.py --models $(MODELS) --quick

clean:
	rm -rf .cache runs ros2_ws/build ros2_ws/install ros2_ws/log
