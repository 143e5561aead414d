#!/usr/bin/env bash
# Lays out libtorch for tch 0.26 from the PyPI wheels, without a model hub or a
# system-wide install. Idempotent: wheels are cached under .cache/wheels and a
# flavor that is already laid out is left alone (a second run downloads nothing).
#
#   scripts/libtorch.sh [cpu|cuda]
#
# cpu  : .cache/libtorch/cpu  — include/ + lib/ without the CUDA libraries, plus
#        libcudart/libcupti (libtorch_cpu has a NEEDED entry for them even on CPU).
# cuda : .cache/libtorch/cuda — the whole lib/ plus every nvidia-* runtime wheel
#        torch's metadata names (≈ 2 GB of wheels, ≈ 4.5 GB laid out); the
#        worker's build.rs force-links torch_cuda for this flavor.
#
# Versions: cpu is torch 2.13.0, the release tch 0.26 is written against.
# cuda defaults to 2.11.0 (CUDA 13.0), the torch of the GPU machine
# tools/gpu/check.sh runs on: libtorch is too big to carry there, so the worker
# built here must link against the same build as the one installed there
# (docs/PERFORMANCE.md, "GPU check"). tch's C++ wrappers compile against 2.11's
# headers; the Makefile sets LIBTORCH_BYPASS_VERSION_CHECK for this flavor.
# CUDA_TORCH_VERSION=2.13.0 lays out the version tch expects instead.
set -euo pipefail

FLAVOR="${1:-cpu}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="$ROOT/.cache"
WHEELS="$CACHE/wheels"
DEST="$CACHE/libtorch/$FLAVOR"
PY="${PYTHON:-python3}"

case "$FLAVOR" in
cpu) TORCH_VERSION="2.13.0" ;;
cuda) TORCH_VERSION="${CUDA_TORCH_VERSION:-2.11.0}" ;;
*)
	echo "libtorch.sh: unknown flavor '$FLAVOR' (use cpu or cuda)" >&2
	exit 2
	;;
esac

if [[ -f "$DEST/.complete" ]]; then
	if [[ "$(cat "$DEST/.complete")" == "$TORCH_VERSION" ]]; then
		echo "libtorch ($FLAVOR) already laid out in $DEST"
		exit 0
	fi
	echo "libtorch ($FLAVOR): $DEST holds torch $(cat "$DEST/.complete"), want $TORCH_VERSION; laying it out again" >&2
fi

mkdir -p "$WHEELS"
fetch() {
	# pip download is itself a no-op when the wheel is already in $WHEELS,
	# but checking first keeps a cached run from touching the network at all.
	local spec="$1" pattern="$2"
	if ! compgen -G "$WHEELS/$pattern" >/dev/null; then
		"$PY" -m pip download --quiet --no-deps --only-binary=:all: \
			-d "$WHEELS" "$spec"
	fi
}

fetch "torch==$TORCH_VERSION" "torch-$TORCH_VERSION-*.whl"
fetch "nvidia-cuda-runtime==13.0.*" "nvidia_cuda_runtime-13.0.*.whl"
fetch "nvidia-cuda-cupti==13.0.*" "nvidia_cuda_cupti-13.0.*.whl"

STAGE="$CACHE/libtorch/.stage-$FLAVOR"
rm -rf "$STAGE"
mkdir -p "$STAGE/lib"

unzip -q -o "$WHEELS"/torch-"$TORCH_VERSION"-*.whl 'torch/include/*' 'torch/lib/*' -d "$STAGE/wheel"
mv "$STAGE/wheel/torch/include" "$STAGE/include"
for lib in "$STAGE"/wheel/torch/lib/*.so*; do
	name="$(basename "$lib")"
	if [[ "$FLAVOR" == cpu ]]; then
		case "$name" in
		libtorch_cuda* | libc10_cuda* | libcaffe2_nvrtc* | libtorch_nvshmem* | libtorch_python*) continue ;;
		esac
	fi
	mv "$lib" "$STAGE/lib/"
done

extract_nvidia_libs() {
	local wheel="$1"
	unzip -q -o "$wheel" -d "$STAGE/nv"
}
extract_nvidia_libs "$(ls "$WHEELS"/nvidia_cuda_runtime-13.0.*.whl | head -1)"
extract_nvidia_libs "$(ls "$WHEELS"/nvidia_cuda_cupti-13.0.*.whl | head -1)"

if [[ "$FLAVOR" == cuda ]]; then
	# The CUDA runtime set torch's own metadata pins (the Linux-only nvidia-*
	# and cuda-toolkit requirements; not triton or cuda-bindings, which are
	# Python-only). --no-deps on torch keeps sympy & co. out; the cuda-toolkit
	# meta package's extras resolve to the nvidia-* wheels.
	CUDA_WHEELS="$WHEELS/cuda-$TORCH_VERSION"
	if [[ ! -f "$CUDA_WHEELS/.complete" ]]; then
		mapfile -t specs < <(unzip -p "$WHEELS"/torch-"$TORCH_VERSION"-*.whl "torch-$TORCH_VERSION.dist-info/METADATA" |
			sed -n 's/^Requires-Dist: \(\(nvidia-\|cuda-toolkit\)[^;]*\); platform_system == "Linux"$/\1/p' | tr -d ' ')
		if [[ ${#specs[@]} -eq 0 ]]; then
			echo "libtorch.sh: torch $TORCH_VERSION names no nvidia runtime wheels; is it a CPU-only build?" >&2
			exit 1
		fi
		mkdir -p "$CUDA_WHEELS"
		"$PY" -m pip download --quiet --only-binary=:all: -d "$CUDA_WHEELS" "${specs[@]}"
		printf '%s\n' "${specs[@]}" >"$CUDA_WHEELS/.complete"
	fi
	for w in "$CUDA_WHEELS"/nvidia_*.whl; do
		unzip -q -o "$w" -d "$STAGE/nv"
	done
fi

# Every shared object the nvidia wheels carry lands next to libtorch, so one
# rpath entry finds them all.
find "$STAGE/nv" -name '*.so*' -type f -exec cp -n {} "$STAGE/lib/" \;
if [[ "$FLAVOR" == cpu ]]; then
	# Keep only the two CUDA libraries libtorch_cpu needs at load time.
	find "$STAGE/lib" -maxdepth 1 -name 'lib*.so*' | while read -r f; do
		case "$(basename "$f")" in
		libcudart.so.13* | libcupti.so.13* | libtorch* | libc10* | libgomp* | libshm*) ;;
		lib*cu* | libnv*) rm -f "$f" ;;
		esac
	done
fi
rm -rf "$STAGE/wheel" "$STAGE/nv"

# torch-sys compares this with the version tch expects (unless bypassed).
echo "$TORCH_VERSION" >"$STAGE/build-version"
rm -rf "$DEST"
mv "$STAGE" "$DEST"
echo "$TORCH_VERSION" >"$DEST/.complete"
echo "libtorch ($FLAVOR) laid out in $DEST"
