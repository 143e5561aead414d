#!/usr/bin/env bash
# make test-go: gofmt, go vet and the tests of the Go client (clients/go)
# and the example web app (examples/web), then a short run of each Go fuzz
# target. The tests start real brokers from target/release (build them
# first: make test-go does) and headless Chromium (scripts/deps.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GO="$("$ROOT/scripts/go.sh")"
GOFMT="$(dirname "$GO")/gofmt"
# Everything Go writes stays under .cache; nothing is downloaded (standard
# library only) and the toolchain is the one scripts/go.sh installed.
export GOCACHE="$ROOT/.cache/go/build" GOPATH="$ROOT/.cache/go/path" GOMODCACHE="$ROOT/.cache/go/path/pkg/mod"
# cgo only for the race detector (gcc from scripts/deps.sh).
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS= GOTELEMETRY=off CGO_ENABLED=1
FUZZ_SECONDS="${GO_FUZZ_SECONDS:-10}"

for module in clients/go examples/web; do
	cd "$ROOT/$module"
	unformatted="$("$GOFMT" -l .)"
	if [[ -n "$unformatted" ]]; then
		echo "test-go: not gofmt-formatted (run $GOFMT -w $module):" >&2
		echo "$unformatted" >&2
		exit 1
	fi
	"$GO" vet ./...
	# -p 1: the tests start brokers and a browser; the machine is small.
	# -race: the client and the app share connections and jobs between
	# goroutines.
	"$GO" test -race -p 1 -count=1 ./...
done

cd "$ROOT/clients/go"
for target in FuzzDecodeResponse FuzzDecodeRequest FuzzReadFrame; do
	"$GO" test -run '^$' -fuzz "^$target\$" -fuzztime "${FUZZ_SECONDS}s" -parallel 2 .
done
