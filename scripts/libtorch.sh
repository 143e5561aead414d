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
#        torch depends on; the Makefile force-links torch_cuda for this flavor.
set -euo pipefail

FLAVOR="${1:-cpu}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="$ROOT/.cache"
WHEELS="$CACHE/wheels"
DEST="$CACHE/libtorch/$FLAVOR"
TORCH_VERSION="2.13.0" # the version tch 0.26 is written against
PY="${PYTHON:-python3}"

case "$FLAVOR" in
cpu | cuda) ;;
*)
	echo "libtorch.sh: unknown flavor '$FLAVOR' (use cpu or cuda)" >&2
	exit 2
	;;
esac

if [[ -f "$DEST/.complete" ]]; then
	echo "libtorch ($FLAVOR) already laid out in $DEST"
	exit 0
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
	# The full runtime set torch's metadata asks for; pip resolves the versions.
	"$PY" -m pip download --quiet --only-binary=:all: \
		-d "$WHEELS/cuda" "torch==$TORCH_VERSION"
	for w in "$WHEELS"/cuda/nvidia_*.whl "$WHEELS"/cuda/cuda_*.whl; do
		[[ -f "$w" ]] && unzip -q -o "$w" -d "$STAGE/nv"
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

rm -rf "$DEST"
mv "$STAGE" "$DEST"
echo "$TORCH_VERSION" >"$DEST/.complete"
echo "libtorch ($FLAVOR) laid out in $DEST"
