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

.PHONY: all build release test deps libtorch demo bench load fmt clippy generated deb rpm

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

bench: deps libtorch
	$(CARGO) build --workspace --release --bins  # the broker bench starts the real binaries
	$(CARGO) bench --workspace

# The load harness (docs/RELIABILITY.md): 60 s of valid, invalid,
# unauthorized, malformed and slow-reader clients against a user-mode broker.
# Needs root and models/digits. LOAD_SECONDS=600 for the long run.
LOAD_SECONDS ?= 60
load: deps libtorch
	$(CARGO) build --release --bins
	target/release/weave-load --seconds $(LOAD_SECONDS) --assert

demo: libtorch
	$(CARGO) build --release --bins
	scripts/demo.sh

TOOLS := $(ROOT)/.cache/tools/bin
# Packages carry libtorch in /usr/lib/weave/lib; the worker's rpath names it
# (next to the build tree's own libtorch folder, which comes first).
export WEAVE_LIBDIR := /usr/lib/weave/lib

$(TOOLS)/cargo-deb:
	$(CARGO) install cargo-deb --version 3.8.0 --locked --root $(ROOT)/.cache/tools

$(TOOLS)/cargo-generate-rpm:
	$(CARGO) install cargo-generate-rpm --locked --root $(ROOT)/.cache/tools

# Man page and completions, generated from sshmctl's clap definitions.
generated: release
	mkdir -p target/generated
	target/release/sshmctl man > target/generated/sshmctl.1
	target/release/sshmctl completions bash > target/generated/sshmctl.bash
	target/release/sshmctl completions zsh > target/generated/_sshmctl
	target/release/sshmctl completions fish > target/generated/sshmctl.fish
	rm -rf target/generated/selinux && mkdir -p target/generated/selinux
	cp selinux/weave.te selinux/weave.if selinux/weave.fc target/generated/selinux/
	$(MAKE) -s -C target/generated/selinux -f /usr/share/selinux/devel/Makefile weave.pp
	cp target/generated/selinux/weave.pp target/generated/weave.pp

deb: generated $(TOOLS)/cargo-deb
	$(TOOLS)/cargo-deb -p weave-broker --no-build --fast --no-strip -o target/debian/

rpm: generated $(TOOLS)/cargo-generate-rpm
	$(TOOLS)/cargo-generate-rpm -p broker -o target/rpm/
