#!/usr/bin/env bash
# End-to-end demo (run by `make demo` after `cargo build --release --bins`):
# starts a user-mode weave-broker on a private socket with a digits demo
# model, generates one digit with `sshmctl generate` (a progress bar when
# stderr is a terminal), prints where the PNG is and how to look at it, and
# stops the broker.
#
# WEAVE_DEMO_ID (`make demo MODEL=...`) picks the model: `digits` (SD 1.x,
# the default) or `digits-xl` (SDXL), both in models/ (models/README.md).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${WEAVE_BIN_DIR:-$ROOT/target/release}"
ID="${WEAVE_DEMO_ID:-digits}"
case "$ID" in
digits) KIND=sd1 SCHEDULER=ddim PNG_NAME=digit ;;
digits-xl) KIND=sdxl SCHEDULER=euler PNG_NAME=digit-xl ;;
*)
	echo "demo: unknown demo model '$ID'; use MODEL=digits or MODEL=digits-xl (models/README.md)" >&2
	exit 2
	;;
esac
MODEL="${WEAVE_DEMO_MODEL:-$ROOT/models/$ID}"
OUT_DIR="${WEAVE_DEMO_OUT:-$ROOT/target/demo}"
DIGIT="${DIGIT:-7}"

for exe in weave-broker weave-worker sshmctl; do
	if [[ ! -x "$BIN/$exe" ]]; then
		echo "demo: $BIN/$exe is missing; run 'cargo build --release --bins' (make demo does)" >&2
		exit 1
	fi
done
if [[ ! -d "$MODEL" ]]; then
	echo "demo: $MODEL is missing; the digits demo models are produced by tools/ (see models/README.md)" >&2
	exit 1
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/weave-demo.XXXXXX")"
chmod 700 "$WORK"
mkdir -m 700 "$WORK/config"
CONFIG="$WORK/config/weave.toml"
SOCKET="$WORK/run/weave.sock"
LOG="$WORK/broker.log"
# Audit records go to syslog when there is one; otherwise the broker writes
# them to its log (stderr).
SINK=/dev/log
[[ -S $SINK ]] || SINK="$WORK/no-syslog.sock"

cat >"$CONFIG" <<TOML
# weave-broker demo config (user mode), written by scripts/demo.sh
[limits]
job_timeout_s = 120

[audit]
sink = "$SINK"

[worker]
device = "cpu"

[[model]]
id = "$ID"
kind = "$KIND"
path = "$MODEL"

[model.defaults]
width = 32
height = 32
steps = 20
guidance = 5.0
scheduler = "$SCHEDULER"
TOML
chmod 600 "$CONFIG"

# A user-mode broker refuses to run as root (it would keep uid 0); the
# demo's broker is a throwaway on a private socket, so as root (a CI
# container) it uses the documented escape hatch.
if [ "$(id -u)" = 0 ]; then
	export WEAVE_ALLOW_ROOT_USER_MODE=1
fi
"$BIN/weave-broker" --user --config "$CONFIG" --socket "$SOCKET" >"$LOG" 2>&1 &
BROKER=$!
cleanup() {
	if kill -0 "$BROKER" 2>/dev/null; then
		kill -TERM "$BROKER"
		wait "$BROKER" || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
	[[ -S $SOCKET ]] && break
	if ! kill -0 "$BROKER" 2>/dev/null; then
		echo "demo: the broker exited during start-up:" >&2
		cat "$LOG" >&2
		exit 1
	fi
	sleep 0.1
done
[[ -S $SOCKET ]] || { echo "demo: the broker socket never appeared" >&2; cat "$LOG" >&2; exit 1; }
echo "demo: broker pid $BROKER listening on $SOCKET"

mkdir -p "$OUT_DIR"
PNG="$OUT_DIR/$PNG_NAME-$DIGIT.png"
if ! "$BIN/sshmctl" --socket "$SOCKET" generate --model "$ID" \
	--prompt "the number $DIGIT" --seed 42 --force -o "$PNG"; then
	echo "demo: generation failed; broker log:" >&2
	cat "$LOG" >&2
	exit 1
fi
echo "demo: the PNG is at $PNG"
echo "demo: look at it with an image viewer, e.g. \`xdg-open $PNG\`; it is 32x32, so zoom in"
kill -TERM "$BROKER"
wait "$BROKER" && echo "demo: broker stopped cleanly"
