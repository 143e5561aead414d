# weave-compute entry points. Everything a target needs is installed by the
# target itself (idempotently), so each works on a fresh machine.
SHELL := /bin/bash
FLAVOR ?= cpu
ROOT := $(CURDIR)
export LIBTORCH := $(ROOT)/.cache/libtorch/$(FLAVOR)
export LIBTORCH_CXX11_ABI := 1
export WEAVE_TORCH_FLAVOR := $(FLAVOR)
export WEAVE_TEST_PYTHON := $(ROOT)/.cache/venv/bin/python
CARGO ?= cargo

.PHONY: all build release test deps libtorch demo bench fmt clippy fuzz fuzz-smoke

all: build

deps:
	scripts/deps.sh

libtorch:
	scripts/libtorch.sh $(FLAVOR)

build: libtorch
	$(CARGO) build --workspace

release: libtorch
	$(CARGO) build --workspace --release

fmt:
	$(CARGO) fmt --all

clippy: libtorch
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The full gate CI runs: formatting, lints, every test (unit, cross-process,
# sandbox death tests, the digits quality gate).
test: deps libtorch
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --release --bins
	$(CARGO) test --workspace --release
	scripts/check-packaging.sh
	$(MAKE) fuzz-smoke

# Fuzzing (docs/RELIABILITY.md): every cargo-fuzz target for FUZZ_SECONDS
# each (default 300), then executions per target. fuzz-smoke (in `test`)
# gives each FUZZ_SMOKE_SECONDS from the committed seeds; a crash fails it.
fuzz: deps
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} scripts/fuzz.sh run

fuzz-smoke: deps
	FUZZ_SECONDS=$${FUZZ_SMOKE_SECONDS:-10} scripts/fuzz.sh smoke

bench: deps libtorch
	$(CARGO) bench --workspace

demo: libtorch
	$(CARGO) build --release --bins
	scripts/demo.sh
