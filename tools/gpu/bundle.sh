#!/usr/bin/env bash
# Prepares, on a development machine (Rust, network), everything
# tools/gpu/check.sh needs on the lent GPU machine, which has neither:
#
#   target/gpu-check/bin/*.xz        weave-broker, weave-worker, sshmctl (FLAVOR=cuda,
#                                    stripped, xz: ≈ 2.5 MB)
#   target/gpu-check/diffusers.tar.xz diffusers, slimmed to the SD pipeline (≈ 1 MB;
#                                    tools/gpu/slim_diffusers.py); the machine's Python
#                                    has torch, transformers, Pillow but not diffusers
#   target/gpu-check/MANIFEST        what was built, from which commit, against which torch
#
# The working tree itself is ≈ 58 MB of the 64 MiB that travel, hence xz.
#
#   tools/gpu/bundle.sh BIN_DIR       (make gpu-bundle builds BIN_DIR first)
#
# libtorch (≈ 4 GB with CUDA) cannot travel (64 MiB per run), so the worker is
# linked against the same torch build the GPU machine's Python has (2.11.0,
# CUDA 13.0; scripts/libtorch.sh cuda) and its rpath names that Python's
# torch/lib first (GPU_TORCH_LIB), then this checkout's copy, so the same
# bundle also runs here for the CPU rehearsal (check.sh --rehearse-cpu).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${1:?usage: bundle.sh BIN_DIR (the FLAVOR=cuda release binaries)}"
GPU_TORCH_LIB="${GPU_TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}"
LOCAL_LIB="$(cd "$ROOT/.cache/libtorch/cuda/lib" && pwd -P)"
DEST="$ROOT/target/gpu-check"
WHEELS="$ROOT/.cache/wheels/gpu-check"
# As in docs/PERFORMANCE.md's CPU runs.
DIFFUSERS=diffusers==0.42.1

for exe in weave-broker weave-worker sshmctl; do
	[[ -x "$BIN/$exe" ]] || { echo "bundle: $BIN/$exe is missing; run make gpu-bundle" >&2; exit 1; }
done
if ! grep -q libtorch_cuda <(readelf -d "$BIN/weave-worker"); then
	echo "bundle: $BIN/weave-worker is not linked against libtorch_cuda; build it with FLAVOR=cuda" >&2
	exit 1
fi

if ! compgen -G "$WHEELS/diffusers-${DIFFUSERS#*==}-*.whl" >/dev/null; then
	mkdir -p "$WHEELS"
	python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" "$DIFFUSERS"
fi

rm -rf "$DEST"
mkdir -p "$DEST/bin"
for exe in weave-broker weave-worker sshmctl; do
	cp "$BIN/$exe" "$DEST/bin/"
	strip "$DEST/bin/$exe"
done
patchelf --set-rpath "$GPU_TORCH_LIB:$LOCAL_LIB" "$DEST/bin/weave-worker"
python3 "$ROOT/tools/gpu/slim_diffusers.py" "$(ls "$WHEELS"/diffusers-"${DIFFUSERS#*==}"-*.whl | head -1)" "$DEST/diffusers.tar.xz"
{
	echo "built: $(date -u +%FT%TZ) on $(uname -n)"
	echo "commit: $(git -C "$ROOT" rev-parse HEAD)$(git -C "$ROOT" diff --quiet HEAD || echo ' (with uncommitted changes)')"
	echo "torch: $(cat "$ROOT/.cache/libtorch/cuda/.complete")"
	echo "worker rpath: $GPU_TORCH_LIB:$LOCAL_LIB"
	echo "glibc needed: $(objdump -T "$DEST"/bin/* | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
	echo "libstdc++ needed: $(objdump -T "$DEST/bin/weave-worker" | grep -o 'GLIBCXX_[0-9.]*' | sort -Vu | tail -1)"
	echo "diffusers: ${DIFFUSERS#*==} (slimmed)"
} >"$DEST/MANIFEST"
xz -9 -T1 "$DEST"/bin/*
cat "$DEST/MANIFEST"
sum_sizes() { xargs -0 stat -c %s | awk '{ s += $1 } END { print s + 0 }'; }
tree=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | sum_sizes)
bundle=$(find "$DEST" -type f -print0 | sum_sizes)
echo "bundle: $DEST, $((bundle / 1024)) KiB; with the working tree $(((tree + bundle) / 1048576)) of the 64 MiB that travel"
if ((tree + bundle > 64 * 1048576)); then
	echo "bundle: the working tree and the bundle are over the 64 MiB that travel to the GPU machine" >&2
	exit 1
fi
