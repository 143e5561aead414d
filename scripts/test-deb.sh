#!/usr/bin/env bash
# Installs the .deb on this machine, runs the daemon from the installed files
# in system mode, generates an image as a member of the client group, then
# purges the package. systemd is not PID 1 here, so systemd-socket-activate
# stands in for weave.socket. Must run as root (CI does).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEB="$(ls -t "$ROOT"/target/debian/weave-compute_*.deb | head -1)"
CLIENT=weave-pkgtest
WORK="$(mktemp -d)"
ACT_PID=
cleanup() {
	[[ -n "$ACT_PID" ]] && kill "$ACT_PID" 2>/dev/null || true
	pkill -f '^/usr/bin/weave-broker' 2>/dev/null || true
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
if ! runuser -u "$CLIENT" -- /usr/bin/sshmctl --socket /run/weave/weave.sock generate \
	--model digits --prompt "a handwritten digit three" --seed 3 -o "$WORK/three.png" >"$WORK/client.log" 2>&1; then
	cat "$WORK/client.log" "$WORK/broker.log" >&2
	fail "generation through the installed daemon failed"
fi
head -c 8 "$WORK/three.png" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a' || fail "output is not a PNG"
# The daemon runs as weave, not root.
pid="$(pgrep -f '^/usr/bin/weave-broker' | head -1)"
[[ -n "$pid" ]] || fail "broker not running"
[[ "$(stat -c %U /proc/"$pid")" == weave ]] || fail "broker runs as $(stat -c %U /proc/"$pid"), not weave"
grep -q '^CapEff:\s*0000000000000000' /proc/"$pid"/status || fail "broker kept capabilities"
echo "test-deb: installed, generated $(stat -c %s "$WORK/three.png")-byte PNG as $CLIENT, broker uid weave with no capabilities"

kill "$ACT_PID" 2>/dev/null || true
pkill -f '^/usr/bin/weave-broker' 2>/dev/null || true
ACT_PID=
dpkg --purge weave-compute >/dev/null || fail "purge failed"
for f in /usr/bin/weave-broker /etc/weave /usr/lib/weave; do
	[[ ! -e "$f" ]] || fail "purge left $f"
done
echo "test-deb: purged cleanly"
