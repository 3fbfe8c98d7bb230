# trackgate: `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# pyo3's build script must see the same interpreter the extension is built for.
export PYO3_PYTHON := $(abspath $(PY))
NATIVE_GLOB := python/trackgate/_native*.so

.PHONY: all venv build build-test run test test-rust test-python lint fmt bench bench-quick clean redis-server chromium wrk

all: build

$(VENV)/.stamp: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'maturin>=1.9,<2.0'
	touch $@

venv: $(VENV)/.stamp

# The in-tree .so is deleted first so that a stale build can never shadow a fresh one.
build: venv
	rm -f $(NATIVE_GLOB)
	$(BIN)/maturin develop --release -E dev -q

build-test: venv
	rm -f $(NATIVE_GLOB)
	$(BIN)/maturin develop --profile test-release -E dev -q

# Installs redis-server through apt-get when it is missing and we are root; otherwise says how.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing redis-server (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: run 'sudo apt-get install redis-server'"; exit 1; \
	  fi; }

# The dashboard test drives Debian's Chromium with Playwright (never `playwright install`): installs it
# through apt-get when it is missing and we are root; otherwise says how.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing: run 'sudo apt-get install chromium'"; exit 1; \
	  fi; }

# wrk drives the benchmarks' load: installed through apt-get when missing and we are root, like redis-server.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing wrk (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else \
	    echo "wrk is missing: run 'sudo apt-get install wrk'"; exit 1; \
	  fi; }

# The whole suite (a few minutes) and a ~35-second subset; results in bench/results/
bench: build redis-server wrk
	$(PY) bench/suite.py

bench-quick: build redis-server wrk
	$(PY) bench/suite.py --quick

run: build redis-server
	$(BIN)/trackgate serve --demo

test: build-test redis-server chromium lint test-rust test-python

test-rust:
	cargo test --workspace --quiet

test-python:
	$(BIN)/pytest -q

lint: venv
	cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
	cargo fmt --all --check
	$(BIN)/ruff check python tests bench
	$(BIN)/ruff format --check python tests bench
	$(BIN)/mypy
	$(PY) -m mypy.stubtest trackgate._native

fmt: venv
	cargo fmt --all
	$(BIN)/ruff format python tests bench
	$(BIN)/ruff check --fix python tests bench

clean:
	rm -rf target $(VENV) $(NATIVE_GLOB)
