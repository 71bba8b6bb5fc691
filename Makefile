# distpar: the commands the README gives. `make demo` and `make test` work on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint bench bench-quick images deploy-check clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[ray,ssh,test,bench,docs,mcp]'
	touch $@

demo: $(VENV)/.installed          ## a sample repo and plan, run with the bundled fake agent
	$(PY) examples/demo.py

test: $(VENV)/.installed          ## everything CI runs: system packages, images, all test tiers
	bash scripts/test.sh $(PYTEST_ARGS)

test-fast: $(VENV)/.installed     ## unit and local integration tests only
	$(PY) -m pytest -m "not ray and not ssh and not containers and not realagents" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench-quick: $(VENV)/.installed
	$(PY) -m bench --quick

bench: $(VENV)/.installed
	$(PY) -m bench

images:                           ## the offline worker images (deploy/images/build.sh)
	bash deploy/images/build.sh

deploy-check: $(VENV)/.installed   ## deploy/: image, pins, CRD schema, KubeRay pods, compose cluster (deploy/README.md)
	bash scripts/test.sh tests/containers/test_deploy_files.py tests/containers/test_kuberay_containers.py \
		tests/containers/test_compose_containers.py tests/ray/test_raycompat.py $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
