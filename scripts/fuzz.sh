#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer) on stable Rust: RUSTC_BOOTSTRAP=1 lets
# stable rustc take the nightly-only flags cargo-fuzz passes (sanitizer
# coverage, -Zsanitizer=address).
#
#   scripts/fuzz.sh run [TARGET...]     each target for $FUZZ_SECONDS (default 300), then a table
#   scripts/fuzz.sh smoke               each target for $FUZZ_SECONDS (default 10), from the seeds only
#   scripts/fuzz.sh repro TARGET FILE   replay one input (a crash artifact) against TARGET
#   scripts/fuzz.sh seed                regenerate fuzz/corpus/ from docs/ and packaging/
#
# Seeds are fuzz/corpus/<target>/ (committed, never written by a run); what a
# run discovers goes to fuzz/target/work-corpus/<target>/ (ignored, kept
# between runs), crashes to fuzz/artifacts/<target>/. Exit status 1 if any
# target crashed; the table says which.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ_DIR=$ROOT/fuzz
TOOLS=$ROOT/.cache/tools
export PATH=$TOOLS/bin:$PATH
export RUSTC_BOOTSTRAP=1
# ASan on by default; FUZZ_SANITIZER=none for a plain (faster) build.
SANITIZER=${FUZZ_SANITIZER:-address}
TARGETS=(proto_request proto_response proto_roundtrip shm_slot config tokenizer tokenizer_merges safetensors_header prompt_syntax png_input lora_keys)

ensure_cargo_fuzz() {
    if ! command -v cargo-fuzz >/dev/null; then
        cargo install cargo-fuzz --version 0.13.2 --locked --root "$TOOLS"
    fi
}

build() {
    ensure_cargo_fuzz
    (cd "$FUZZ_DIR" && cargo fuzz build -O --sanitizer "$SANITIZER")
}

# run_target TARGET SECONDS WORK_CORPUS -> prints "TARGET EXECS SECONDS CRASHES"
run_target() {
    local target=$1 seconds=$2 work=$3 log rc=0 extra=()
    # A config file full of type errors is re-parsed once per error (up to
    # 50): keep inputs to 1 KiB so time goes into variety, not length.
    [[ $target == config ]] && extra=(-max_len=1024)
    mkdir -p "$work" "$FUZZ_DIR/artifacts/$target"
    log=$FUZZ_DIR/target/fuzz-$target.log
    # -rss_limit_mb: the 2 GB default is tight for ASan plus a big corpus.
    (cd "$FUZZ_DIR" && cargo fuzz run -O --sanitizer "$SANITIZER" "$target" \
        "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096 \
        -timeout=10 "${extra[@]}") >"$log" 2>&1 || rc=$?
    local execs elapsed crashes=0
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
    if [[ -z $execs ]]; then
        execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
    fi
    elapsed=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 | awk '{print $5}' || true)
    if [[ $rc -ne 0 ]]; then
        crashes=1
        echo "== $target FAILED (exit $rc); log: $log" >&2
        grep -E 'panicked|ERROR: |SUMMARY|Test unit written|artifact_prefix' "$log" | head -20 >&2 || true
    fi
    printf '%-18s %12s %8s %8s\n' "$target" "${execs:-0}" "${elapsed:-$seconds}" "$crashes"
    return "$rc"
}

run_all() {
    local seconds=$1 fresh=$2; shift 2
    local targets=("$@") failed=0
    [[ ${#targets[@]} -eq 0 ]] && targets=("${TARGETS[@]}")
    build
    printf '%-18s %12s %8s %8s\n' target executions seconds crashes
    for target in "${targets[@]}"; do
        local work=$FUZZ_DIR/target/work-corpus/$target
        if [[ $fresh == yes ]]; then
            work=$FUZZ_DIR/target/smoke-corpus/$target
            rm -rf "$work"
        fi
        run_target "$target" "$seconds" "$work" || failed=1
    done
    return "$failed"
}

seed() {
    local corpus=$FUZZ_DIR/corpus
    mkdir -p "$corpus"/{proto_request,proto_response,proto_roundtrip,config,shm_slot,tokenizer,tokenizer_merges,safetensors_header}
    python3 - "$ROOT/docs/PROTOCOL.md" "$corpus" <<'PY'
import pathlib, re, sys
doc, corpus = pathlib.Path(sys.argv[1]).read_text(), pathlib.Path(sys.argv[2])
for name, block in re.findall(r"```hex example=(\S+)\n(.*?)```", doc, re.S):
    frame = bytes.fromhex("".join(line.split("#")[0] for line in block.splitlines()))
    file = name.replace("/", "_")
    if name.startswith("request/"):
        (corpus / "proto_request" / file).write_bytes(frame)
    else:
        # First byte picks the client's body limit: 3 = the default.
        (corpus / "proto_response" / file).write_bytes(b"\x03" + frame)
    (corpus / "proto_roundtrip" / file).write_bytes(frame[4:])
PY
    # The example configs without their comments, so they fit the config
    # target's 1 KiB input limit.
    rm -f "$corpus"/config/*
    grep -v '^[[:space:]]*#' "$ROOT/docs/weave.example.toml" | sed 's/[[:space:]]*#.*$//' | grep -v '^$' >"$corpus/config/user_example"
    grep -v '^[[:space:]]*#' "$ROOT/packaging/weave.toml.example" | sed 's/[[:space:]]*#.*$//' | grep -v '^$' >"$corpus/config/system_example"
    # The target picks user mode for an even length, system for an odd one.
    (($(wc -c <"$corpus/config/user_example") % 2 == 0)) || echo >>"$corpus/config/user_example"
    (($(wc -c <"$corpus/config/system_example") % 2 == 1)) || echo >>"$corpus/config/system_example"
    # shm_slot programs (ops: 0 send, 1 raw overwrite, 2 header field with
    # valid CRC, 3 body bit flip, 4 replay, 5 forge head, 6 receive, 7 rotate).
    local s=$corpus/shm_slot
    printf '\x00\x01\x00\x05hello\x06' >"$s/send_receive"
    printf '\x00\x01\x00\x03abc\x00\x02\x00\x03def\x00\x03\x00\x03ghi\x06\x06\x06' >"$s/three_in_order"
    printf '\x00\x01\x00\x10sixteen bytes!!!\x02\x00\x01\x02\x06' >"$s/header_seq_rewritten"
    printf '\x00\x01\x00\x04ping\x06\x00\x01\x00\x04pong\x04\x00\x00\x06' >"$s/replay_first_slot"
    printf '\x00\x01\x00\x04ping\x03\x00\x05\x00\x01\x06' >"$s/body_bit_flip"
    printf '\x00\x01\x00\x04ping\x07\x04\x06\x07\x05\x00\x01\x00\x04pong\x06\x06' >"$s/rotate_writer_then_reader"
    printf '\x00\x01\x00\x04ping\x05\x09\x06\x06' >"$s/forged_head"
    printf 'a photo of a cat' >"$corpus/tokenizer/plain"
    printf '<|startoftext|>The  CAT\n\tsat on 42 mats!! <|endoftext|> caf\xc3\xa9 \xe2\x84\xab' >"$corpus/tokenizer/specials_and_unicode"
    printf '#version: 0.2\na t</w>\nc a\nc at</w>\n\x00the cat' >"$corpus/tokenizer_merges/valid"
    printf 'a b c\n\x00abc' >"$corpus/tokenizer_merges/three_symbols"
    # safetensors_header: each real model file's first 8 + N bytes (length,
    # JSON header), then its data section's length as a u64 LE.
    python3 - "$ROOT" "$corpus/safetensors_header" <<'PY'
import pathlib, struct, sys
root, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for old in out.glob("*"):
    old.unlink()
files = sorted(root.glob("models/*/*/*.safetensors")) + sorted(root.glob("worker/tests/fixtures/**/*.safetensors"))
for path in files:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = f.read(n)
    data_len = path.stat().st_size - 8 - n
    name = str(path.relative_to(root)).replace("/", "_").removesuffix(".safetensors")
    (out / name).write_bytes(struct.pack("<Q", n) + header + struct.pack("<Q", data_len))
PY
}

case ${1:-} in
run) shift; run_all "${FUZZ_SECONDS:-300}" no "$@" ;;
smoke) shift; run_all "${FUZZ_SECONDS:-10}" yes "$@" ;;
repro)
    [[ $# -eq 3 ]] || { echo "usage: $0 repro TARGET FILE" >&2; exit 2; }
    ensure_cargo_fuzz
    file=$(realpath "$3")
    cd "$FUZZ_DIR" && exec cargo fuzz run -O --sanitizer "$SANITIZER" "$2" "$file"
    ;;
seed) seed ;;
*) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
