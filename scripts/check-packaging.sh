#!/usr/bin/env bash
# Validates the MAC policies and systemd units with the real tools, offline:
#   - AppArmor: apparmor_parser -Q -K against the 3.0 ABI, warnings as errors;
#   - SELinux: the refpolicy devel Makefile builds weave.pp, then semodule -n -i
#     links it against Debian's selinux-policy-default (this catches unresolved
#     requirements that checkmodule alone accepts), then removes it again;
#   - systemd: `systemd-analyze verify` must print nothing, and the system
#     service's `systemd-analyze security --offline` exposure must be <= 2.0.
# Each check is first shown to fail on a deliberately broken input, so a
# validator that silently accepts everything cannot pass this script.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
fail() {
	echo "check-packaging: $*" >&2
	exit 1
}
for tool in apparmor_parser checkmodule semodule systemd-analyze; do
	command -v "$tool" >/dev/null || fail "$tool is missing; run scripts/deps.sh"
done

# --- scripts/deps.sh's self-check ---------------------------------------------
# It must name a missing command and its package (shown on an empty PATH, where
# only sbin is searched), and pass on this machine's PATH.
mkdir -p "$WORK/empty-path"
if out="$(PATH="$WORK/empty-path" /bin/bash "$ROOT/scripts/deps.sh" --self-check 2>&1)"; then
	fail "deps.sh --self-check passed with an empty PATH"
fi
grep -qF "'rpm' (Debian package rpm)" <<<"$out" || fail "deps.sh --self-check did not name rpm and its package: $out"
grep -qF "'setpriv' (Debian package util-linux)" <<<"$out" || fail "deps.sh --self-check did not name setpriv: $out"
"$ROOT/scripts/deps.sh" --self-check >/dev/null || fail "deps.sh --self-check fails on this machine"
echo "deps: self-check names what is missing, passes here"

# --- AppArmor -------------------------------------------------------------
aa_check() {
	apparmor_parser -Q -K -M /etc/apparmor.d/abi/3.0 --Werror \
		-I "$ROOT/apparmor" -I /etc/apparmor.d "$1"
}
printf 'abi <abi/3.0>,\nprofile broken /x { /etc/passwd rq, }\n' >"$WORK/broken.aa"
if aa_check "$WORK/broken.aa" 2>/dev/null; then fail "apparmor_parser accepted a broken profile"; fi
for profile in "$ROOT"/apparmor/usr.*; do
	aa_check "$profile" || fail "AppArmor profile $(basename "$profile") does not parse"
	echo "apparmor: $(basename "$profile") ok"
done

# --- SELinux --------------------------------------------------------------
se_build() { # dir module
	make -s -C "$1" -f /usr/share/selinux/devel/Makefile "$2.pp" >/dev/null
}
# A first semodule call on a fresh store rebuilds it; do that up front so a
# failure below is ours.
semodule -n -B >/dev/null 2>&1 || true
mkdir -p "$WORK/se-bad"
printf 'policy_module(weavebroken, 0.1.0)\ngen_require(`\n\ttype no_such_type_t;\n'"'"')\ntype weavebroken_t;\nallow weavebroken_t no_such_type_t:file read;\n' >"$WORK/se-bad/weavebroken.te"
touch "$WORK/se-bad/weavebroken.fc" "$WORK/se-bad/weavebroken.if"
se_build "$WORK/se-bad" weavebroken
if semodule -n -i "$WORK/se-bad/weavebroken.pp" >/dev/null 2>&1; then
	semodule -n -r weavebroken >/dev/null 2>&1 || true
	fail "semodule linked a module with an unresolved requirement"
fi
mkdir -p "$WORK/se"
cp "$ROOT"/selinux/weave.{te,if,fc} "$WORK/se/"
se_build "$WORK/se" weave || fail "selinux/weave.te does not compile"
semodule -n -i "$WORK/se/weave.pp" || fail "selinux weave.pp does not link against the installed policy"
semodule -n -r weave >/dev/null 2>&1 || true
echo "selinux: weave.pp builds and links"

# --- Several GPUs (a pool of one worker per GPU) ----------------------------
# SELinux: the installed policy labels each GPU's node as it labels nvidiactl,
# with the type weave.te lets the worker use (dev_rw_xserver_misc).
se_label() { matchpathcon -m chr_file "$1" | awk '{print $2}'; }
[[ "$(se_label /dev/null)" != *:xserver_misc_device_t:* ]] || fail "matchpathcon labels /dev/null as a GPU node"
grep -q '^dev_rw_xserver_misc(weave_worker_t)' "$ROOT/selinux/weave.te" || fail "weave.te no longer grants xserver_misc_device_t"
# No DRM render nodes: the worker's Landlock view refuses them (docs/SANDBOX.md "GPU").
! grep -q '^dev_rw_dri(' "$ROOT/selinux/weave.te" || fail "weave.te grants DRM render nodes (dev_rw_dri), which the worker's Landlock view refuses"
for node in /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia0 /dev/nvidia1 /dev/nvidia7 /dev/nvidia15; do
	[[ "$(se_label "$node")" == *:xserver_misc_device_t:* ]] ||
		fail "SELinux labels $node $(se_label "$node"), not xserver_misc_device_t (what weave.te grants)"
done
# AppArmor: one glob for every GPU node; systemd: the driver's major, which
# every /dev/nvidiaN shares.
grep -qF '/dev/nvidia[0-9]* rw,' "$ROOT/apparmor/usr.libexec.weave.weave-worker" ||
	fail "the worker's AppArmor profile does not grant /dev/nvidia[0-9]*"
grep -qx 'DeviceAllow=char-nvidia-frontend rw' "$ROOT/packaging/systemd/system/weave.service" ||
	fail "weave.service does not allow the NVIDIA major (char-nvidia-frontend)"
echo "gpus: SELinux labels, the AppArmor glob and DeviceAllow cover /dev/nvidia0..15"

# --- systemd --------------------------------------------------------------
# verify needs ExecStart to exist: point it at /bin/true in a copy.
verify_units() { # mode dir units...
	local mode="$1" dir="$2"
	shift 2
	local out
	if [[ "$mode" == user ]]; then
		out="$(cd "$dir" && XDG_RUNTIME_DIR="$WORK/xdg" systemd-analyze --user verify "$@" 2>&1)" || true
	else
		out="$(cd "$dir" && systemd-analyze verify "$@" 2>&1)" || true
	fi
	printf '%s' "$out"
}
mkdir -p "$WORK/xdg" "$WORK/bad-unit"
printf '[Service]\nExecStart=/bin/true\nNoSuchKey=1\n' >"$WORK/bad-unit/weavebroken.service"
[[ -n "$(verify_units system "$WORK/bad-unit" weavebroken.service)" ]] ||
	fail "systemd-analyze verify was silent about an unknown key"
for mode in system user; do
	mkdir -p "$WORK/units-$mode"
	for unit in "$ROOT"/packaging/systemd/"$mode"/*; do
		sed 's|/usr/bin/weave-broker|/bin/true|' "$unit" >"$WORK/units-$mode/$(basename "$unit")"
	done
	out="$(verify_units "$mode" "$WORK/units-$mode" weave.socket weave.service)"
	[[ -z "$out" ]] || fail "systemd-analyze verify ($mode units):"$'\n'"$out"
	echo "systemd: $mode units verify clean"
done
exposure="$(systemd-analyze security --offline=yes "$ROOT/packaging/systemd/system/weave.service" |
	sed -n 's/.*Overall exposure level for weave.service: \([0-9.]*\).*/\1/p')"
[[ -n "$exposure" ]] || fail "could not read the exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' ||
	fail "system service exposure $exposure exceeds 2.0"
echo "systemd: weave.service exposure $exposure (<= 2.0)"
