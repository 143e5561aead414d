# weave-compute entry points. Everything a target needs is installed by the
# target itself (idempotently), so each works on a fresh machine.
SHELL := /bin/bash
FLAVOR ?= cpu
ROOT := $(CURDIR)
# Cargo tools `make` installs for itself (cargo-deb, cargo-machete, ...).
TOOLS := $(ROOT)/.cache/tools/bin
export LIBTORCH := $(ROOT)/.cache/libtorch/$(FLAVOR)
export LIBTORCH_CXX11_ABI := 1
export WEAVE_TORCH_FLAVOR := $(FLAVOR)
export WEAVE_TEST_PYTHON := $(ROOT)/.cache/venv/bin/python
ifeq ($(FLAVOR),cuda)
# The cuda flavor is torch 2.11.0 by default (the GPU check machine's build,
# see scripts/libtorch.sh), not the 2.13.0 tch 0.26 is generated from: skip
# tch's version check, and force-include the stubs for the few 2.13-only ops
# into tch's C++ wrappers (scripts/tch-compat/).
export CUDA_TORCH_VERSION ?= 2.11.0
export LIBTORCH_BYPASS_VERSION_CHECK := 1
# Its own target folder, so switching flavors does not rebuild torch-sys and
# the workspace each time: binaries land in target/cuda/release/.
export CARGO_TARGET_DIR ?= $(ROOT)/target/cuda
TCH_COMPAT := $(wildcard $(ROOT)/scripts/tch-compat/torch-$(CUDA_TORCH_VERSION).h)
ifneq ($(TCH_COMPAT),)
export CXXFLAGS += -include $(TCH_COMPAT)
endif
endif
CARGO ?= cargo

.PHONY: all build release test test-go deps libtorch demo bench load fmt clippy fuzz fuzz-smoke generated deb rpm package-test seccomp-trace gpu-bundle

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
test: deps libtorch $(TOOLS)/cargo-machete
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(TOOLS)/cargo-machete
	$(CARGO) build --workspace --release --bins
	$(CARGO) test --workspace --release --no-fail-fast
	$(MAKE) test-go
	scripts/check-packaging.sh
	$(MAKE) package-test
	$(MAKE) fuzz-smoke

# The Go client and the example web app (clients/go/README.md): installs Go
# (scripts/go.sh), then gofmt, go vet, their tests against real brokers and
# headless Chromium, and GO_FUZZ_SECONDS (default 10) per Go fuzz target.
test-go: deps libtorch
	$(CARGO) build --workspace --release --bins
	scripts/test-go.sh

# Fuzzing (docs/RELIABILITY.md): every cargo-fuzz target for FUZZ_SECONDS
# each (default 300), then executions per target. fuzz-smoke (in `test`)
# gives each FUZZ_SMOKE_SECONDS from the committed seeds; a crash fails it.
fuzz: deps
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} scripts/fuzz.sh run

fuzz-smoke: deps
	FUZZ_SECONDS=$${FUZZ_SMOKE_SECONDS:-10} scripts/fuzz.sh smoke

# docs/PERFORMANCE.md: every bench, ratios measured within one run. The
# engine-vs-diffusers bench needs diffusers (tools/bench/venv.sh installs it
# into .cache/venv-bench; WEAVE_BENCH_PYTHON=... uses another Python).
# BENCH_BIG=1 adds the SD 1.5-size and SDXL-size models through the daemon
# against diffusers (big_vs_diffusers; tens of minutes on a CPU): it builds
# their random-weight folders into .cache/bench-models first (≈ 8.5 GB,
# kept); BENCH_BIG_* and DEVICE tune it (tools/bench/big_vs_diffusers.sh).
BENCH_BIG ?= 0
bench: deps libtorch
	$(CARGO) build --workspace --release --bins  # the broker benches start the real binaries
	python="$$(tools/bench/venv.sh)" && \
	if [[ "$(BENCH_BIG)" == 1 ]]; then "$$python" tools/bench/make_big_models.py "$${BENCH_BIG_DIR:-$(ROOT)/.cache/bench-models}" --models "$${BENCH_BIG_MODELS:-sd15,sdxl}"; fi && \
	WEAVE_BENCH_PYTHON="$$python" WEAVE_BENCH_BIG=$(BENCH_BIG) $(CARGO) bench --workspace

# The load harness (docs/RELIABILITY.md): 60 s of valid, invalid,
# unauthorized, malformed and slow-reader clients against a user-mode broker.
# Needs root and models/digits. LOAD_SECONDS=600 for the long run.
LOAD_SECONDS ?= 60
load: deps libtorch
	$(CARGO) build --release --bins
	target/release/weave-load --seconds $(LOAD_SECONDS) --assert

# MODEL=digits (SD 1.x, the default) or MODEL=digits-xl (SDXL): the
# project's demo models in models/.
MODEL ?= digits
demo: libtorch
	$(CARGO) build --release --bins
	WEAVE_DEMO_ID=$(MODEL) scripts/demo.sh

# Where the packages put libtorch. The packaged worker's rpath names only this
# folder (patchelf below), so an installed package never reaches back into a
# build tree.
PKG_LIBDIR := /usr/lib/weave

$(TOOLS)/cargo-deb:
	$(CARGO) install cargo-deb --version 3.8.0 --locked --root $(ROOT)/.cache/tools

# Unused dependencies fail `make test` (cargo-machete reads the sources, so
# it is fast and needs no nightly toolchain).
$(TOOLS)/cargo-machete:
	$(CARGO) install cargo-machete --version 0.9.2 --locked --root $(ROOT)/.cache/tools

$(TOOLS)/cargo-generate-rpm:
	$(CARGO) install cargo-generate-rpm --locked --root $(ROOT)/.cache/tools

# Man page and completions, generated from sshmctl's clap definitions.
generated: release
	mkdir -p target/generated
	mkdir -p target/generated/man
	target/release/sshmctl man target/generated/man
	target/release/sshmctl completions bash > target/generated/sshmctl.bash
	target/release/sshmctl completions zsh > target/generated/_sshmctl
	target/release/sshmctl completions fish > target/generated/sshmctl.fish
	rm -rf target/generated/selinux && mkdir -p target/generated/selinux
	cp selinux/weave.te selinux/weave.if selinux/weave.fc target/generated/selinux/
	$(MAKE) -s -C target/generated/selinux -f /usr/share/selinux/devel/Makefile weave.pp
	cp target/generated/selinux/weave.pp target/generated/weave.pp
	rm -rf target/package && mkdir -p target/package
	cp target/release/weave-broker target/release/weave-worker target/release/sshmctl target/package/
	patchelf --set-rpath $(PKG_LIBDIR) target/package/weave-worker

deb: generated $(TOOLS)/cargo-deb
	rm -rf target/debian
	$(TOOLS)/cargo-deb -p weave-broker --no-build --fast --no-strip -o target/debian/

# RPM_COMPRESS=none makes a fast, uncompressed package for the checks in
# package-test; releases keep the default zstd.
RPM_COMPRESS ?= zstd
rpm: generated $(TOOLS)/cargo-generate-rpm
	rm -rf target/rpm && mkdir -p target/rpm
	$(TOOLS)/cargo-generate-rpm -p broker -o target/rpm/ --payload-compress $(RPM_COMPRESS)

# Builds both packages, installs the .deb, runs the daemon from it in system
# mode and generates an image as a client-group member, then purges it;
# checks the .rpm's files, scriptlets and config files (make test runs this).
package-test: deb
	$(MAKE) rpm RPM_COMPRESS=none
	scripts/test-deb.sh
	scripts/test-rpm.sh

# Regenerates the worker's seccomp allowlist evidence from the real workload:
# the demo (broker + sandboxed worker, load + generate of models/digits) under
# strace, counting only what runs after the worker installs its filter.
seccomp-trace: release
	command -v strace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace
	tools/seccomp-trace.sh --after seccomp -- scripts/demo.sh

# What tools/gpu/check.sh needs on the lent GPU machine, built here
# (docs/PERFORMANCE.md, "GPU check"): the FLAVOR=cuda binaries, stripped and
# compressed, and a slimmed diffusers, in target/gpu-check/.
gpu-bundle:
	$(MAKE) FLAVOR=cuda libtorch
	$(MAKE) FLAVOR=cuda CARGO_TARGET_DIR=$(ROOT)/target/cuda gpu-bins
	tools/gpu/bundle.sh $(ROOT)/target/cuda/release

gpu-bins:
	$(CARGO) build --release -p weave-worker -p weave-broker -p sshmctl --bins
