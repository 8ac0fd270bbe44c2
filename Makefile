# freshet: `make test` and `make demo` do all the set-up on a fresh Debian machine with
# Python 3.11, Java 17 and Maven: .venv, the package, redis-server (apt), Kafka jars, the stack.
# Ports and the dev dir follow FRESHET_DEV_KAFKA_PORT / FRESHET_DEV_REDIS_PORT / FRESHET_DEV_DIR.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Rebuilt when pyproject.toml changes: skips `pip install` on the next run otherwise.
INSTALLED := $(VENV)/.freshet-installed
PYTEST_ARGS ?=

# What `freshet demo` and the flows read; follows the dev stack's ports when those are moved.
export FRESHET_KAFKA_BOOTSTRAP ?= 127.0.0.1:$(or $(FRESHET_DEV_KAFKA_PORT),9092)
export FRESHET_REDIS_URL ?= redis://127.0.0.1:$(or $(FRESHET_DEV_REDIS_PORT),6379)/0

# command -> Debian package, installed by `make system-packages` when missing. chromium and
# chromedriver run the console's browser tests (tests/integration/test_console_browser.py).
SYSTEM_PACKAGES := redis-server:redis-server java:openjdk-17-jre-headless mvn:maven \
	chromium:chromium chromedriver:chromium-driver

.PHONY: help test demo lint soak up down status install system-packages

help:
	@echo "make test    set everything up, start Kafka + Redis, run unit + integration tests"
	@echo "make demo    set everything up, start Kafka + Redis, run the demo"
	@echo "make lint    ruff + mypy"
	@echo "make soak    10-minute steady-load soak of the flow and the endpoint (not in make test)"
	@echo "make up | status | down   the local Kafka + Redis stack (freshet dev ...)"

$(BIN)/python:
	@echo "== creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	@echo "== installing freshet and its dev tools into $(VENV)"
	@SECONDS=0; $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'; \
	  echo "   pip install took $${SECONDS} s"
	@touch $@

install: $(INSTALLED)

# Installs a missing redis-server (and java / mvn / chromium) with apt when we are root and apt exists;
# otherwise stops with the exact command to run.
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "== installing missing Debian packages with apt-get:$$missing"; \
	    SECONDS=0; \
	    policy=/usr/sbin/policy-rc.d; added=""; \
	    if [ ! -e "$$policy" ]; then \
	      printf '#!/bin/sh\nexit 101\n' > "$$policy"; chmod +x "$$policy"; added=1; \
	    fi; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; rc=$$?; \
	    if [ -n "$$added" ]; then rm -f "$$policy"; fi; \
	    echo "   apt-get took $${SECONDS} s"; exit $$rc; \
	  else \
	    echo "missing:$$missing. Install with: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi
# (the temporary policy-rc.d keeps apt from starting a system-wide Redis on 6379 with
#  persistence: freshet starts its own, under .freshet/)

up: $(INSTALLED) system-packages
	@echo "== starting Kafka + Redis (freshet dev up)"
	@SECONDS=0; $(BIN)/freshet dev up; echo "   freshet dev up took $${SECONDS} s"

status: $(INSTALLED)
	$(BIN)/freshet dev status

down: $(INSTALLED)
	$(BIN)/freshet dev down

test: up
	@echo "== pytest (unit + integration)"
	@SECONDS=0; rc=0; $(BIN)/pytest --durations=15 $(PYTEST_ARGS) || rc=$$?; \
	  echo "   pytest took $${SECONDS} s (exit $$rc)"; exit $$rc

demo: up
	$(BIN)/freshet demo $(DEMO_ARGS)

# Nightly-style: flow + endpoint under steady load for FRESHET_SOAK_SECONDS (default 600) at
# FRESHET_SOAK_RATE events/s (default 500); prints RSS, Redis memory and lag every 10 s.
soak: up
	@echo "== soak (tests/soak, marked slow)"
	@SECONDS=0; rc=0; $(BIN)/pytest tests/soak --slow -s -p no:cacheprovider $(PYTEST_ARGS) || rc=$$?; \
	  echo "   soak took $${SECONDS} s (exit $$rc)"; exit $$rc

lint: $(INSTALLED)
	@rc=0; $(BIN)/ruff check . || rc=$$?; $(BIN)/python .ci/typecheck || rc=$$?; exit $$rc
