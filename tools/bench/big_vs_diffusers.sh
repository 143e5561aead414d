#!/usr/bin/env bash
# Issue 14: SD 1.5-size and SDXL-size random-weight models through the real
# daemon (broker + sandboxed worker) against diffusers on the same folder:
# seconds per image, load time, peak RSS (docs/PERFORMANCE.md). Builds the
# models first (tools/bench/make_big_models.py, into .cache/bench-models,
# kept between runs) and the release binaries the bench starts.
#
#   DEVICE=cpu|cuda|cuda:N      (default cpu; cuda lays out FLAVOR=cuda libtorch)
#   BENCH_BIG_MODELS=sd15,sdxl  which models (default both)
#   BENCH_BIG_SIZE=N            image side (default: CPU sd15 256, sdxl 512; CUDA 512, 1024)
#   BENCH_BIG_STEPS=N           steps (default CPU 4, CUDA 20)
#   BENCH_BIG_ROUNDS=N          timed images per side (default CPU 3, CUDA 5)
#   BENCH_BIG_LOADS=N           loads per side (default CPU 1, CUDA 3)
#   BENCH_BIG_THREADS=N         torch intra-op threads per side (default CPU 1, CUDA all CPUs)
#   BENCH_BIG_SCHEDULER=ddim|euler  (default sd15 ddim, sdxl euler)
#   BENCH_BIG_EXEC_MAPPINGS=0|1 the worker's seccomp_exec_mappings: 1 keeps oneDNN on (default 0)
#   BENCH_BIG_SEQUENTIAL=auto|0|1  the sides take turns, each freeing its memory (default auto: when both do not fit at once)
#   BENCH_BIG_DIR=path          where the models are (default .cache/bench-models)
#   WEAVE_BENCH_PYTHON=...      use this Python instead of installing .cache/venv-bench
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PYTHON="$(tools/bench/venv.sh)"
DEVICE="${DEVICE:-cpu}"
FLAVOR="${FLAVOR:-$([[ "$DEVICE" == cuda* ]] && echo cuda || echo cpu)}"
scripts/libtorch.sh "$FLAVOR" >&2
export LIBTORCH="$ROOT/.cache/libtorch/$FLAVOR" LIBTORCH_CXX11_ABI=1 WEAVE_TORCH_FLAVOR="$FLAVOR"
if [[ "$FLAVOR" == cuda ]]; then
	# As the Makefile's FLAVOR=cuda: torch 2.11.0 (the GPU machine's build),
	# tch's version check skipped, the stubs of docs/PERFORMANCE.md's GPU
	# check force-included, its own target folder.
	export CUDA_TORCH_VERSION="${CUDA_TORCH_VERSION:-2.11.0}" LIBTORCH_BYPASS_VERSION_CHECK=1
	export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/cuda}"
	compat="$ROOT/scripts/tch-compat/torch-$CUDA_TORCH_VERSION.h"
	if [[ -f "$compat" ]]; then export CXXFLAGS="${CXXFLAGS:-} -include $compat"; fi
fi
DIR="${BENCH_BIG_DIR:-$ROOT/.cache/bench-models}"
"$PYTHON" tools/bench/make_big_models.py "$DIR" --models "${BENCH_BIG_MODELS:-sd15,sdxl}" >&2
cargo build --release --bins >&2
WEAVE_BENCH_BIG=1 WEAVE_BENCH_PYTHON="$PYTHON" DEVICE="$DEVICE" BENCH_BIG_DIR="$DIR" \
	cargo bench -p weave-worker --bench big_vs_diffusers
