#!/usr/bin/env bash
# Traces the broker's steady state (after its initialization-complete
# boundary) through a real workload, to build or check its seccomp
# allowlist (policy/src/broker.rs). Developer-time only; needs strace,
# python3 and a release build (cargo build --release --bins).
#
#   tools/seccomp-trace-broker.sh [--keep FILE]
#
# A user-mode broker serves the digits demo model; strace attaches to all
# its threads once the socket answers (the spawner, forked before the
# boundary, and the workers are not followed: they are other processes).
# Workload: status, a generate (the first load), key rotation, the audit
# sink going away and coming back (reconnect), kill -9 of the worker and
# the respawn, unload and reload, idle unload, SIGTERM.
# Output: "count name" per syscall, then how the broker ended.
set -euo pipefail
keep=""
[[ "${1:-}" == "--keep" ]] && keep="$2"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release"
work="$(mktemp -d /tmp/weave-broker-trace.XXXXXX)"
chmod 700 "$work"
log="${keep:-$work/strace.log}"
sink="$work/audit.sock"
cat >"$work/weave.toml" <<TOML
[limits]
idle_unload_s = 3
[audit]
sink = "$sink"
[worker]
device = "cpu"
[[model]]
id = "digits"
kind = "sd1"
path = "$root/models/digits"
[model.defaults]
width = 32
height = 32
steps = 4
guidance = 5.0
scheduler = "ddim"
TOML
chmod 600 "$work/weave.toml"
sinkd() { python3 -c 'import socket,sys,os
s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); s.bind(sys.argv[1])
while True: s.recv(65536)' "$sink" >/dev/null 2>&1 & echo $!; }
sink_pid=$(sinkd)
"$bin/weave-broker" --user --config "$work/weave.toml" --socket "$work/weave.sock" \
	>"$work/broker.log" 2>&1 &
broker=$!
for _ in $(seq 100); do [[ -S "$work/weave.sock" ]] && break; sleep 0.1; done
strace -f -qq -o "$log" -p "$broker" &
tracer=$!
sleep 1
ctl() { "$bin/sshmctl" --socket "$work/weave.sock" "$@"; }
ctl status >/dev/null
ctl generate -m digits -p "a digit 7" --seed 1 -o "$work/a.png" >/dev/null
ctl rotate-keys >/dev/null
kill "$sink_pid"; rm -f "$sink"; ctl status >/dev/null
sink_pid=$(sinkd); sleep 0.3; ctl status >/dev/null
worker=$(pgrep -P "$broker" -x weave-worker | head -1)
kill -9 "$worker"; sleep 1.5
ctl generate -m digits -p "a digit 3" --seed 2 -o "$work/b.png" >/dev/null
ctl unload >/dev/null; ctl load digits >/dev/null
sleep 5 # idle unload
ctl status >/dev/null
kill -TERM "$broker"
wait "$broker" && echo "--- broker exit status: 0" || echo "--- broker exit status: $?"
wait "$tracer" 2>/dev/null || true
kill "$sink_pid" 2>/dev/null || true
awk '{ l=$0; sub(/^[0-9]+ +/, "", l); if (l ~ /^<\.\.\. /) next; if (l !~ /^[a-z_0-9]+\(/) next; sub(/\(.*/, "", l); c[l]++ }
	END { for (s in c) printf "%7d %s\n", c[s], s }' "$log" | sort -k2
echo "--- signals and exits:"
grep -E -- '--- SIG|\+\+\+ ' "$log" | sed -E 's/^[0-9]+ +//' | sort | uniq -c || true
grep -i "seccomp\|SIGSYS" "$work/broker.log" || true
[[ -n "$keep" ]] || rm -rf "$work"
