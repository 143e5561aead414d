#!/usr/bin/env bash
# Issue 3: our pipeline against diffusers on models/digits, same device,
# steps, guidance, seed and thread count, interleaved rounds in one run;
# prints seconds per image (medians) and the ratios ours / diffusers.
#
#   DEVICE=cpu|cuda|cuda:N   (default cpu; cuda needs FLAVOR=cuda libtorch)
#   THREADS=N                intra-op threads on both sides (default 1)
#   ROUNDS=N                 interleaved rounds (default 9)
#   WEAVE_BENCH_PYTHON=...   use this Python instead of installing .cache/venv-bench
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PYTHON="$(tools/bench/venv.sh)"
FLAVOR="${FLAVOR:-$([[ "${DEVICE:-cpu}" == cuda* ]] && echo cuda || echo cpu)}"
scripts/libtorch.sh "$FLAVOR" >&2
export LIBTORCH="$ROOT/.cache/libtorch/$FLAVOR" LIBTORCH_CXX11_ABI=1 WEAVE_TORCH_FLAVOR="$FLAVOR"
WEAVE_BENCH_PYTHON="$PYTHON" WEAVE_BENCH_DEVICE="${DEVICE:-cpu}" \
	WEAVE_BENCH_THREADS="${THREADS:-1}" WEAVE_BENCH_ROUNDS="${ROUNDS:-9}" \
	cargo bench -p weave-worker --bench engine_vs_diffusers
