# trackgate: `make run` and `make test` do all the set-up on a fresh machine; `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# pyo3's build script must see the same interpreter the extension is built for.
export PYO3_PYTHON := $(abspath $(PY))
NATIVE_GLOB := python/trackgate/_native*.so
# Tools from Debian's packages of the same names, installed by one rule below.
APT_TOOLS := redis-server chromium wrk

.PHONY: all help venv build-serve build build-test run test test-rust test-python test-cluster lint fmt bench bench-quick \
	chaos clean $(APT_TOOLS)

all: build ## the release extension with the dev extra (as `build`)

help: ## list the targets and what they do
	@grep -E '^[a-zA-Z$$()_ -]+:.*## ' $(MAKEFILE_LIST) \
	  | sed -e 's/$$(APT_TOOLS)/$(APT_TOOLS)/' \
	  | awk 'BEGIN {FS = ":.*## "}; {printf "  %-32s %s\n", $$1, $$2}'

$(VENV)/.stamp: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'maturin>=1.9,<2.0'
	touch $@

venv: $(VENV)/.stamp ## the virtualenv in .venv/ with maturin, nothing else

# Each build deletes the in-tree .so first so that a stale build can never shadow a fresh one. All three
# install into the same venv: a build without the dev extra leaves the dev packages an earlier build
# installed, and the builds that need them always ask for them.
build-serve: venv ## the release extension and what serving needs (no dev extra)
	rm -f $(NATIVE_GLOB)
	$(BIN)/maturin develop --release -q

build: venv ## the release extension (fat LTO) and the dev extra: what the benchmarks need
	rm -f $(NATIVE_GLOB)
	$(BIN)/maturin develop --release -E dev -q

build-test: venv ## the test-release extension (no LTO) and the dev extra: what tests and lint need
	rm -f $(NATIVE_GLOB)
	$(BIN)/maturin develop --profile test-release -E dev -q

# When a tool is missing: apt-get installs it when we are root and have apt-get, else says how. The
# dashboard test drives Debian's Chromium with Playwright (never `playwright install`); wrk drives the
# benchmarks' load.
$(APT_TOOLS): ## install this tool with apt-get when it is missing
	@command -v $@ >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $@ (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $@ >/dev/null; \
	  else \
	    echo "$@ is missing: run 'sudo apt-get install $@'"; exit 1; \
	  fi; }

run: build-serve redis-server ## build, then `trackgate serve --demo` on 127.0.0.1:8000 with its own Redis
	$(BIN)/trackgate serve --demo

test: build-test redis-server chromium test-rust test-python test-cluster ## build, then cargo test and pytest (on one Redis, then a Cluster; not lint)

test-rust: ## cargo test, without building the extension
	cargo test --workspace --quiet

test-python: ## pytest against the extension built last, without building
	$(BIN)/pytest -q

# The end-to-end modules that matter, again with the session's Redis a 3-primary Redis Cluster (the
# cluster's own tests, in test_cluster_*.py, run in test-python).
CLUSTER_SUITE := test_gateway_clients test_gateway_answers test_gateway_health test_profile_clients \
	test_import_clients test_dedup_gateway test_rate_limits test_funnels test_engage_api test_api \
	test_mixpanel_export test_profile_export test_consume test_service_accounts test_unknown_routes \
	test_reports_process
test-cluster: ## the end-to-end modules of CLUSTER_SUITE on a Redis Cluster (pytest --redis cluster)
	$(BIN)/pytest -q --redis cluster $(CLUSTER_SUITE:%=tests/%.py)

# The stub check needs the built extension: it compares _native.pyi with what the module really has.
lint: build-test ## clippy, rustfmt, ruff, mypy and the stub check (stubtest); fails on any finding
	cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
	cargo fmt --all --check
	$(BIN)/ruff check python tests bench
	$(BIN)/ruff format --check python tests bench
	$(BIN)/mypy
	$(PY) -m mypy.stubtest trackgate._native

fmt: build-test ## rewrite Rust and Python sources in the project's format, fix what ruff can
	cargo fmt --all
	$(BIN)/ruff format python tests bench
	$(BIN)/ruff check --fix python tests bench

bench: build redis-server wrk ## the whole benchmark suite; results in bench/results/
	$(PY) bench/suite.py

bench-quick: build redis-server wrk ## a subset of the suite, to check that it runs; results in bench/results/
	$(PY) bench/suite.py --quick

# Not part of `test`: minutes of faults and floods against real processes (the fast checks of the same
# behaviour are in the test suite).
chaos: build redis-server wrk ## faults and floods under load, each checking every acknowledged event; results in bench/results/
	$(PY) bench/chaos.py

clean: ## delete the Rust build, the venv and the in-tree extension
	rm -rf target $(VENV) $(NATIVE_GLOB)
