# The README's commands. Everything installs into .venv; nothing outside it
# except the Debian packages the tests drive (curl, openssl, promtool, h2load),
# added when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYX     := $(wildcard lbcore_ext/*.pyx lbcore_ext/*.pxd lbcore_ext/*.pxi)
CONFIG  ?=

.PHONY: run test lint build bench clean deb-test-tools deb-build-deps h2spec docs \
        locust-target

# pip without -q: each package is named as it is fetched and built, so a
# first run shows where its time goes instead of sitting silent for minutes.
PIP     := $(BIN)/python -m pip install --progress-bar on --disable-pip-version-check

$(BIN)/python:
	@echo "==> creating $(VENV)"
	$(PY) -m venv $(VENV)

# What `make run` needs and nothing more: the build tools and the runtime
# dependencies. The test, bench and locust extras come with their targets.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python deb-build-deps
	@echo "==> installing the build tools and lbcore's runtime dependencies"
	$(PIP) "Cython>=3.1,<4" setuptools wheel
	$(PIP) --no-build-isolation -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	@echo "==> installing the test extras (pytest, httpx, trustme, hypothesis, sslyze, ruff...)"
	$(PIP) --no-build-isolation -e '.[test]'
	touch $@

$(VENV)/.bench: $(VENV)/.runtime
	@echo "==> installing the bench extras (matplotlib, for the chart)"
	$(PIP) --no-build-isolation -e '.[bench]'
	touch $@

$(VENV)/.locust: $(VENV)/.runtime
	@echo "==> installing locust"
	$(PIP) --no-build-isolation -e '.[locust]'
	touch $@

# HTTP/2 framing is libnghttp2's, forwarding-policy regexes RE2's: their headers
# (Debian libnghttp2-dev, libre2-dev) and a C++ compiler at build time.
deb-build-deps:
	@pkg-config --exists libnghttp2 re2 2>/dev/null && command -v g++ >/dev/null || \
	  { echo "installing libnghttp2-dev libre2-dev g++ (HTTP/2 framing, policy regexes) ..."; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	    libnghttp2-dev libre2-dev g++ pkg-config >/dev/null; }

$(VENV)/.built: $(VENV)/.runtime setup.py $(PYX) | deb-build-deps
	@echo "==> building the Cython extension (lbcore_ext, $(words $(wildcard lbcore_ext/*.pyx)) modules)"
	$(BIN)/python setup.py build_ext --inplace
	touch $@

build: $(VENV)/.built

run: build
ifeq ($(CONFIG),)
	$(BIN)/lbcore demo
else
	$(BIN)/lbcore run -c $(CONFIG)
endif

# curl and openssl are real clients the end-to-end tests use; promtool checks
# the metrics exposition and the deploy/ rules; h2load drives HTTP/2.
deb-test-tools:
	@command -v curl >/dev/null && command -v openssl >/dev/null \
	  && command -v promtool >/dev/null && command -v h2load >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	    curl openssl prometheus nghttp2-client >/dev/null; }

test: build $(VENV)/.test deb-test-tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The HTTP/2 conformance suite alone (it also runs in `make test`).
h2spec: build $(VENV)/.test deb-test-tools
	$(BIN)/python -m pytest -q tests/e2e/test_h2spec.py -s

# docs/configuration.md and docs/security-policies.md from the config model and
# the policy table (tests/test_docs.py fails when they are stale).
docs: $(VENV)/.runtime
	$(BIN)/python -m lbcore.config.reference --write docs

lint: build $(VENV)/.test
	$(BIN)/ruff check lbcore lbcore_ext tests bench

bench: build $(VENV)/.bench
	$(BIN)/python -m bench

# The locust kit's target (bench/locust_target.py): lbcore and two backends on
# free ports. ORIGIN=nginx uses nginx backends, installing nginx if missing.
ORIGIN  ?= python
locust-target: build $(VENV)/.locust
ifeq ($(ORIGIN),nginx)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
	  { echo "==> installing nginx (Debian)"; apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends nginx >/dev/null; }
endif
	$(BIN)/python -m bench.locust_target --origin $(ORIGIN) $(LOCUST_ARGS)

clean:
	rm -rf build $(VENV) lbcore_ext/*.c lbcore_ext/*.so lbcore_ext/*.html *.egg-info
