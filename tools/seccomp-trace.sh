#!/usr/bin/env bash
# Lists the syscalls a command makes, to build or check a seccomp allowlist
# (policy/src/seccomp.rs). Developer-time only; needs strace.
#
#   tools/seccomp-trace.sh [--after SYSCALL] [--keep FILE] -- COMMAND [ARGS...]
#
# --after SYSCALL  only count syscalls made after the LAST call of SYSCALL by
#                  any thread; `--after seccomp` gives the steady state of a
#                  process that locks itself with seccomp (the worker's
#                  "initialization complete" boundary). Default: whole run.
# --keep FILE      keep the raw strace log in FILE.
#
# Output: one line per syscall, "count name", sorted by name; then the
# signals/exit status strace saw. Threads are followed (-f); syscalls that
# failed are counted too (the allowlist must allow a call to let it fail).
set -euo pipefail

after=""
keep=""
while (($#)); do
	case "$1" in
	--after) after="$2"; shift 2 ;;
	--keep) keep="$2"; shift 2 ;;
	--) shift; break ;;
	-h | --help) sed -n '2,16p' "$0"; exit 0 ;;
	*) break ;;
	esac
done
if (($# == 0)); then
	echo "usage: $0 [--after SYSCALL] [--keep FILE] -- COMMAND [ARGS...]" >&2
	exit 2
fi
if ! command -v strace >/dev/null; then
	echo "seccomp-trace: strace is not installed (apt-get install strace)" >&2
	exit 2
fi

log="${keep:-$(mktemp /tmp/seccomp-trace.XXXXXX)}"
[[ -n "$keep" ]] || trap 'rm -f "$log"' EXIT

set +e
strace -f -qq -o "$log" -- "$@"
status=$?
set -e

# Each line: "PID syscall(args) = ret" or "PID <... syscall resumed> ...".
# Unfinished calls are counted once, at their start.
awk -v after="$after" '
	{
		line = $0
		sub(/^[0-9]+ +/, "", line)
		if (line ~ /^<\.\.\. /) next
		if (line !~ /^[a-z_0-9]+\(/) next
		name = line
		sub(/\(.*/, "", name)
		n++
		seq[n] = name
		if (after != "" && name == after) mark = n
	}
	END {
		start = (after == "") ? 1 : mark + 1
		if (after != "" && mark == 0) {
			printf "seccomp-trace: no %s() call seen; showing nothing\n", after > "/dev/stderr"
			exit 1
		}
		for (i = start; i <= n; i++) count[seq[i]]++
		for (s in count) printf "%7d %s\n", count[s], s
	}
' "$log" | sort -k2

echo "--- signals and exits:"
grep -E -- '--- SIG|\+\+\+ ' "$log" | sed -E 's/^[0-9]+ +//' | sort | uniq -c || true
echo "--- command exit status: $status"
