# The two commands of the README, and the pieces they are made of.
PYTHON ?= python3

.PHONY: run test install install-trainer k8s lint crd test-fast

## run: install lmjob with the trainer (and its exporters) and run the Shakespeare example here
run: install-trainer
	lmjob run examples/shakespeare-cpu.yaml

## test: install everything, build the Kubernetes binaries (cached), lint, run every test tier
test:
	./scripts/test

install:
	$(PYTHON) -m pip install -q -e '.[dev]'

install-trainer:
	$(PYTHON) -m pip install -q -e '.[trainer,export]'

k8s:
	./scripts/build-k8s

lint:
	ruff check .
	ruff format --check .

crd:
	$(PYTHON) -m lmjob_api.crd

## test-fast: unit tests only (no control plane, no multi-process runs)
test-fast:
	$(PYTHON) -m pytest -m "not slow and not cluster"
