# `make run` and `make test` are all a new user types; each installs only what it needs:
#   run   -> the Python packages of requirements.txt and the built models (no Go, no Debian packages)
#   test  -> + requirements-dev.txt + GLPK (glpsol, for the AMPL-file tests) + the Kubernetes control plane (tests/k8s)
#   bench -> + wrk (HTTP load generator)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.requirements-installed
DEV_STAMP := $(VENV)/.requirements-dev-installed
MODELS_STAMP := build/models/.built
# This host's measured catalog: config/models.yaml with memory/exec_time profiled here (needs cgroups,
# i.e. root; without them `make run` says so and uses config/models.yaml's reference figures).
MEASURED_CATALOG := build/models.yaml

.PHONY: setup setup-test setup-bench test run bench simulate experiment experiment-load clean k8s-tools

setup: $(PIP_STAMP) $(MODELS_STAMP) $(MEASURED_CATALOG)

setup-test: setup $(DEV_STAMP) $(VENV)/.deb-glpk-utils k8s-tools

setup-bench: setup-test $(VENV)/.deb-wrk

$(PIP_STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

# Tests, benchmarks and plots (pytest, schemathesis, matplotlib): not needed to run the system.
$(DEV_STAMP): requirements-dev.txt $(PIP_STAMP)
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

# One Debian package per stamp, installed only when missing (apt needs root or sudo).
$(VENV)/.deb-%: | $(PIP_STAMP)
	@if ! dpkg -s $* >/dev/null 2>&1; then \
	  echo "installing Debian package $*"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $* >/dev/null; \
	fi
	@touch $@

# The shipped models are built from scikit-learn's bundled data, never downloaded.
$(MODELS_STAMP): $(PIP_STAMP) $(wildcard modelserver/build_models.py)
	@if [ -f modelserver/build_models.py ]; then $(PY) -m modelserver.build_models --out build/models && touch $@; fi

# Each model server in a cgroup of its own at each node class's CPU quota (~10 s; cluster/profile.py).
$(MEASURED_CATALOG): $(MODELS_STAMP) config/models.yaml config/cluster.local.yaml
	@$(PY) -m cluster profile --out $@ >build/profile.log 2>&1 \
	  && echo "measured the models on this host into $@ (see build/profile.log)" \
	  || { rm -f $@; echo "note: could not profile the models here ($$(tail -n 1 build/profile.log)): config/models.yaml's reference figures are used"; }

# The Kubernetes control plane tests/k8s runs against (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok, metrics-server): compiled from Go modules with the local Go
# toolchain into $${XDG_CACHE_HOME:-~/.cache}/edge-inference/k8s/<version>/bin, only when missing
# (first run ~15 min).
# Without Go it warns and goes on; the tests in tests/k8s then fail.
k8s-tools: | $(PIP_STAMP)
	@$(PY) tests/k8s/k8s_tools.py --missing-go-ok

test: setup-test
	$(PY) -m pytest -q tests

run: setup
	@command -v glpsol >/dev/null || echo "note: GLPK (glpsol) is not installed: the 'glpk' solver is unavailable; every other solver works (make test installs it)"
	$(PY) scripts/run_system.py

bench: setup-bench
	$(PY) -m bench

simulate: setup $(DEV_STAMP)
	$(PY) -m solver simulate --out build/simulation

# The achieved-latency experiment on the shipped default scenario (every strategy, ~15 min).
experiment: setup $(DEV_STAMP)
	$(PY) -m testbed run testbed/scenarios/default.yaml --out build/experiment

# The load-aware and cloud strategies against the others on a loaded edge (all six, ~15 min).
experiment-load: setup $(DEV_STAMP)
	$(PY) -m testbed run testbed/scenarios/load.yaml --out build/experiment-load

clean:
	rm -rf build .run .pytest_cache
