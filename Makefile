# The README's commands. Everything installs into .venv; nothing outside it
# except the Debian packages the tests drive (curl, openssl, promtool, h2load),
# added when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYX     := $(wildcard lbcore_ext/*.pyx lbcore_ext/*.pxd lbcore_ext/*.pxi)
CONFIG  ?=

.PHONY: run test lint build bench clean deb-test-tools deb-build-deps h2spec docs

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.deps: pyproject.toml | $(BIN)/python deb-build-deps
	$(BIN)/pip install -q "Cython>=3.1,<4" setuptools wheel
	$(BIN)/pip install -q -e '.[test]' --no-build-isolation
	touch $@

# HTTP/2 framing is libnghttp2's: its headers (Debian libnghttp2-dev) at build time.
deb-build-deps:
	@pkg-config --exists libnghttp2 2>/dev/null || \
	  { echo "installing libnghttp2-dev (HTTP/2 framing) ..."; apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends libnghttp2-dev pkg-config >/dev/null; }

$(VENV)/.built: $(VENV)/.deps setup.py $(PYX) | deb-build-deps
	$(BIN)/python setup.py -q build_ext --inplace
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

test: build deb-test-tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The HTTP/2 conformance suite alone (it also runs in `make test`).
h2spec: build deb-test-tools
	$(BIN)/python -m pytest -q tests/e2e/test_h2spec.py -s

# docs/configuration.md and docs/security-policies.md from the config model and
# the policy table (tests/test_docs.py fails when they are stale).
docs: $(VENV)/.deps
	$(BIN)/python -m lbcore.config.reference --write docs

lint: build
	$(BIN)/ruff check lbcore lbcore_ext tests bench

bench: build
	$(BIN)/python -m bench

clean:
	rm -rf build $(VENV) lbcore_ext/*.c lbcore_ext/*.so lbcore_ext/*.html *.egg-info
