#!/usr/bin/env bash
# Ensures the benchmark venv (.cache/venv-bench) with the diffusers stack the
# engine is compared against, idempotently, and prints its python.
# WEAVE_BENCH_PYTHON=/path/to/python skips the install and uses that one
# (a Python that already has these packages).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
if [[ -n "${WEAVE_BENCH_PYTHON:-}" ]]; then
	echo "$WEAVE_BENCH_PYTHON"
	exit 0
fi
VENV="$ROOT/.cache/venv-bench"
# torch as in the fixtures of docs/ENGINE.md; from PyPI (CUDA build on x86_64
# Linux, which also runs on CPU-only machines).
PY_PACKAGES=(torch==2.13.0 diffusers transformers safetensors)
if [[ ! -x "$VENV/bin/python" ]]; then
	python3 -m venv "$VENV" >&2
fi
if [[ ! -f "$VENV/.complete" ]] || [[ "$(cat "$VENV/.complete")" != "${PY_PACKAGES[*]}" ]]; then
	echo "bench: installing ${PY_PACKAGES[*]} into $VENV (about 3 GB)" >&2
	# The torch wheel scripts/libtorch.sh already downloaded is reused.
	"$VENV/bin/pip" install --quiet --disable-pip-version-check --find-links "$ROOT/.cache/wheels" "${PY_PACKAGES[@]}" >&2
	echo "${PY_PACKAGES[*]}" >"$VENV/.complete"
fi
echo "$VENV/bin/python"
