# Every target depends on `setup`, so `make run` and `make test` are all a new user types.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.requirements-installed
DEB_STAMP := $(VENV)/.debs-installed
MODELS_STAMP := build/models/.built
DEBS := glpk-utils wrk

.PHONY: setup test run bench simulate clean

setup: $(PIP_STAMP) $(DEB_STAMP) $(MODELS_STAMP) k8s-tools

$(PIP_STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

# Debian packages: installed only when missing (apt needs root or sudo).
$(DEB_STAMP): Makefile | $(PIP_STAMP)
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

# The shipped models are built from scikit-learn's bundled data, never downloaded.
$(MODELS_STAMP): $(PIP_STAMP) $(wildcard modelserver/build_models.py)
	@if [ -f modelserver/build_models.py ]; then $(PY) -m modelserver.build_models --out build/models && touch $@; fi

# The Kubernetes control plane tests/k8s runs against (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok): compiled from Go modules with the local Go toolchain into
# $${XDG_CACHE_HOME:-~/.cache}/edge-inference/k8s/<version>/bin, only when missing (first run ~15 min).
# Without Go it warns and goes on (make run needs no Go); the tests in tests/k8s then fail.
k8s-tools: | $(PIP_STAMP)
	@$(PY) tests/k8s/k8s_tools.py --missing-go-ok

test: setup
	$(PY) -m pytest -q tests

run: setup
	$(PY) scripts/run_system.py

bench: setup
	$(PY) -m bench

simulate: setup
	$(PY) -m solver simulate --out build/simulation

clean:
	rm -rf build .run .pytest_cache
