#!/usr/bin/env bash
# Installs the .deb on this machine, runs the daemon from the installed files
# in system mode with a pool of two CPU workers, generates two images at once
# as a member of the client group, checks `status --json` lists both workers,
# then purges the package. systemd is not PID 1 here, so
# systemd-socket-activate stands in for weave.socket. Must run as root (CI
# does).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEB="$(ls -t "$ROOT"/target/debian/weave-compute_*.deb | head -1)"
CLIENT=weave-pkgtest
WORK="$(mktemp -d)"
ACT_PID=
# The broker's process tree (spawners, workers), by id: only what this
# script started is ever signalled.
descendants() {
	local child
	for child in $(pgrep -P "$1" || true); do
		echo "$child"
		descendants "$child"
	done
}
stop_daemon() {
	[[ -n "$ACT_PID" ]] || return 0
	local tree
	tree="$(descendants "$ACT_PID")"
	kill "$ACT_PID" 2>/dev/null || true
	for _ in $(seq 50); do kill -0 "$ACT_PID" 2>/dev/null || break; sleep 0.1; done
	# shellcheck disable=SC2086 # a list of ids
	kill -9 "$ACT_PID" $tree 2>/dev/null || true
	wait "$ACT_PID" 2>/dev/null || true
	ACT_PID=
}
cleanup() {
	stop_daemon
	dpkg --purge weave-compute >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
	echo "test-deb: $*" >&2
	exit 1
}
[[ $(id -u) -eq 0 ]] || fail "needs root (installs a package)"
command -v systemd-socket-activate >/dev/null || fail "systemd-socket-activate missing (Debian package systemd)"

dpkg --purge weave-compute >/dev/null 2>&1 || true
dpkg -i "$DEB" >/dev/null || fail "dpkg -i $DEB failed"

# What the postinst promised.
getent passwd weave >/dev/null || fail "postinst did not create the weave user"
getent group weave-clients >/dev/null || fail "postinst did not create weave-clients"
getent group weave-admins >/dev/null || fail "postinst did not create weave-admins"
[[ "$(stat -c '%U:%G %a' /etc/weave/weave.toml)" == "root:root 644" ]] || fail "config owner/mode wrong"
for f in /usr/bin/weave-broker /usr/bin/sshmctl /usr/libexec/weave/weave-worker \
	/usr/lib/weave/libtorch_cpu.so /usr/share/weave/models/digits/model_index.json /usr/share/weave/models/loras/digits-bold.safetensors \
	/lib/systemd/system/weave.service /lib/systemd/system/weave.socket \
	/etc/apparmor.d/usr.bin.weave-broker /usr/share/man/man1/sshmctl.1.gz \
	/usr/share/man/man8/weave-broker.8.gz /usr/share/man/man5/weave.toml.5.gz; do
	[[ -e "$f" ]] || fail "package lacks $f"
done
# The worker finds libtorch through its rpath only: no LD_LIBRARY_PATH.
if env -u LD_LIBRARY_PATH ldd /usr/libexec/weave/weave-worker | grep -q 'not found'; then
	fail "installed worker has unresolved libraries: $(ldd /usr/libexec/weave/weave-worker | grep 'not found')"
fi

# A pool of two CPU workers (issue 17): the packaged config's [worker]
# device line becomes device = "cpu", count = 2, one libtorch thread each.
CONFIG=/etc/weave/weave.toml
grep -q '^device = "auto"' "$CONFIG" || fail "$CONFIG has no device = \"auto\" line to turn into a pool"
sed -i 's/^device = "auto".*/device = "cpu"\ncount = 2\ntorch_threads = 1/' "$CONFIG"
grep -q '^count = 2$' "$CONFIG" || fail "could not set count = 2 in $CONFIG"

id -u "$CLIENT" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin "$CLIENT"
usermod -a -G weave-clients "$CLIENT"

# Socket activation stand-in: the socket as weave.socket would make it.
mkdir -p /run/weave
rm -f /run/weave/weave.sock
systemd-socket-activate -l /run/weave/weave.sock /usr/bin/weave-broker --system \
	>"$WORK/broker.log" 2>&1 &
ACT_PID=$!
for _ in $(seq 100); do [[ -S /run/weave/weave.sock ]] && break; sleep 0.1; done
[[ -S /run/weave/weave.sock ]] || fail "socket never appeared"
chgrp weave-clients /run/weave/weave.sock
chmod 0660 /run/weave/weave.sock

chmod 0777 "$WORK"
sshmctl_as_client() {
	runuser -u "$CLIENT" -- /usr/bin/sshmctl --socket /run/weave/weave.sock "$@"
}
# Two jobs at once, so the pool may run them side by side; both must succeed.
GEN_PIDS=()
for digit in three seven; do
	sshmctl_as_client generate --model digits --prompt "a handwritten digit $digit" --seed 3 \
		-o "$WORK/$digit.png" >"$WORK/client-$digit.log" 2>&1 &
	GEN_PIDS+=("$!")
done
for i in 0 1; do
	if ! wait "${GEN_PIDS[$i]}"; then
		cat "$WORK"/client-*.log "$WORK/broker.log" >&2
		fail "generation through the installed daemon failed"
	fi
done
for digit in three seven; do
	head -c 8 "$WORK/$digit.png" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a' || fail "$digit.png is not a PNG"
done
# The pool as the daemon reports it: StatusReport.workers in --json.
sshmctl_as_client --json status >"$WORK/status.json" 2>"$WORK/status.err" ||
	{ cat "$WORK/status.err" >&2; fail "sshmctl --json status failed"; }
workers="$(jq '.workers | length' "$WORK/status.json")" || fail "status --json is not JSON: $(cat "$WORK/status.json")"
[[ "$workers" == 2 ]] || fail "status lists $workers workers, expected 2 (count = 2): $(cat "$WORK/status.json")"
jq -e '[.workers[].device] == ["cpu", "cpu"]' "$WORK/status.json" >/dev/null ||
	fail "the workers are not both on the CPU: $(jq -c '[.workers[].device]' "$WORK/status.json")"
jq -e '[.workers[] | select(.state == "ready")] | length >= 1' "$WORK/status.json" >/dev/null ||
	fail "no worker is ready after two generations: $(jq -c '[.workers[].state]' "$WORK/status.json")"
echo "test-deb: pool of $workers CPU workers, states $(jq -c '[.workers[].state]' "$WORK/status.json"), loads $(jq -c '[.workers[].loads]' "$WORK/status.json")"
# The daemon runs as weave, not root. systemd-socket-activate execs the
# broker in its own process, so its pid is the broker's.
pid="$ACT_PID"
[[ "$(readlink /proc/"$pid"/exe)" == /usr/bin/weave-broker ]] || fail "broker not running"
[[ "$(stat -c %U /proc/"$pid")" == weave ]] || fail "broker runs as $(stat -c %U /proc/"$pid"), not weave"
grep -q '^CapEff:\s*0000000000000000' /proc/"$pid"/status || fail "broker kept capabilities"
echo "test-deb: installed, generated $(stat -c %s "$WORK/three.png")- and $(stat -c %s "$WORK/seven.png")-byte PNGs as $CLIENT, broker uid weave with no capabilities"

stop_daemon
dpkg --purge weave-compute >/dev/null || fail "purge failed"
for f in /usr/bin/weave-broker /etc/weave /usr/lib/weave; do
	[[ ! -e "$f" ]] || fail "purge left $f"
done
echo "test-deb: purged cleanly"
