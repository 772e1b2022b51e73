# Two commands on a fresh machine: `make run` and `make test`. Each does all the set-up it needs, idempotently.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: help setup system-packages jars mailpit run test lint lock down clean container-packages images test-containers

help:
	@echo "make run    set up everything, then start the stack (orderflow up)"
	@echo "make test   set up everything, then lint and run the whole test suite"
	@echo "make setup | lint | lock | down | clean"
	@echo "make images | test-containers   the system in containers on podman (docs/deploy.md; not part of make test)"

setup: system-packages $(STAMP) jars mailpit

# Debian packages this project runs on; installed only when missing, apt-get update only when installing.
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  echo "installing:$$missing"; \
	  $$sudo apt-get update; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# Exact, hashed pins from requirements.lock (runtime + dev + bench groups); reinstalled only when it or pyproject.toml
# changed since the last install.
$(STAMP): pyproject.toml requirements.lock | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

jars: $(STAMP)
	$(PY) -c 'from orderflow.infra.kafka import ensure_jars; ensure_jars()'

# Mailpit, built once with the machine's Go (1.24 or later) from the Go module proxy into ~/.cache/orderflow/.
mailpit: $(STAMP)
	$(PY) -m orderflow.infra.mailpit >/dev/null

# Regenerates both hashed locks from pyproject.toml with uv (pinned in the dev group): requirements.lock for developers
# and CI (runtime + dev + bench), requirements-runtime.lock for the image (runtime only, the same versions). Versions
# already in requirements.lock are kept unless pyproject.toml rules them out; add --upgrade-package NAME to move one.
UV_COMPILE := $(VENV)/bin/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock"
lock: $(STAMP)
	$(UV_COMPILE) --extra dev --extra bench -o requirements.lock
	$(UV_COMPILE) -c requirements.lock -o requirements-runtime.lock

# podman, its runc runtime and debootstrap (the local base image), from Debian's packages when missing.
container-packages:
	@missing=""; \
	for tool in podman runc debootstrap; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  $$sudo apt-get update; DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$missing; \
	fi

# Every image of infra/containers/build.sh, each rebuilt only when its inputs changed.
images: setup container-packages
	infra/containers/build.sh all

# The system in containers (issue 20): the images, the pod with three inventory workers, the demo through Mailpit
# and the kill scenario (tests/containers/); then nothing is left behind: no pod, container or volume.
test-containers: images
	status=0; ORDERFLOW_CONTAINER_TESTS=1 $(VENV)/bin/pytest -q -s -p no:cacheprovider tests/containers || status=$$?; \
	$(VENV)/bin/orderflow containers down --volumes; \
	left="$$(infra/containers/podman.sh ps -aq --filter name=orderflow-; infra/containers/podman.sh pod ls -q --filter name=orderflow; \
	  infra/containers/podman.sh volume ls -q --filter name=orderflow-)"; \
	if [ -n "$$left" ]; then echo "left behind: $$left"; exit 1; fi; \
	exit $$status

# Starts the whole stack in the background, plays the seeds' story on it, and leaves it running (`make down`).
run: setup
	$(VENV)/bin/orderflow up --detach
	$(VENV)/bin/orderflow demo
	@echo "The stack keeps running: '.venv/bin/orderflow status', '.venv/bin/orderflow env'; stop it with 'make down'."

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -m "not fault_loop" -n $(TEST_PROCESSES) --dist loadfile

# Two pytest processes (pytest-xdist), each with its own broker, PostgreSQL cluster and mail sink, a module at a time:
# the suite waits more than it computes (time windows, polls), so two shorten its wall time on two cores. TEST_PROCESSES=0
# runs it in one process.
TEST_PROCESSES ?= 2

lint: $(STAMP)
	$(VENV)/bin/ruff check .

down:
	@if [ -x $(VENV)/bin/orderflow ]; then $(VENV)/bin/orderflow down; fi

# Stops the stack and removes run state and caches; keeps .venv and the Kafka jar cache (~/.cache/orderflow).
clean: down
	rm -rf .run .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf
