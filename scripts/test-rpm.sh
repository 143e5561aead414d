#!/usr/bin/env bash
# Checks the .rpm's contents, scriptlets and config files with rpm itself
# (Debian's rpm can query packages; installing one is not the point here).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RPM="$(ls -t "$ROOT"/target/rpm/weave-compute-*.rpm | head -1)"
fail() {
	echo "test-rpm: $*" >&2
	exit 1
}
files="$(rpm -qlp "$RPM" 2>/dev/null)"
for f in /usr/bin/weave-broker /usr/bin/sshmctl /usr/libexec/weave/weave-worker \
	/usr/lib/weave/libtorch_cpu.so /etc/weave/weave.toml \
	/usr/share/selinux/packages/weave.pp /usr/lib/systemd/system/weave.service \
	/usr/share/weave/models/digits/model_index.json /usr/share/weave/models/loras/digits-bold.safetensors /usr/share/man/man1/sshmctl.1 \
	/usr/share/man/man8/weave-broker.8 /usr/share/man/man5/weave.toml.5; do
	grep -qx "$f" <<<"$files" || fail "rpm lacks $f"
done
rpm -qp --configfiles "$RPM" 2>/dev/null | grep -qx /etc/weave/weave.toml || fail "/etc/weave/weave.toml is not a config file"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$RPM" 2>/dev/null | grep -q '^cn /etc/weave/weave.toml$' ||
	fail "/etc/weave/weave.toml is not %config(noreplace)"
scripts="$(rpm -qp --scripts "$RPM" 2>/dev/null)"
grep -q 'useradd -r' <<<"$scripts" || fail "preinstall does not create the weave user"
grep -q 'semodule -i /usr/share/selinux/packages/weave.pp' <<<"$scripts" || fail "postinstall does not load the SELinux module"
echo "test-rpm: $(wc -l <<<"$files") files, config noreplace, scriptlets ok"
