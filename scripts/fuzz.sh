#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (fuzz/, cargo-fuzz with libFuzzer) on the stable
# toolchain, each for a given time:
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); TARGETs among decode, admin_line, http, server (default:
# all).
# Installs cargo-fuzz if it is missing. Each target starts from its checked-in seeds
# (fuzz/seeds/<target>, which hold the regression inputs of bugs found) and grows a working
# corpus in fuzz/corpus/<target> (not checked in) that later runs reuse. A failing input is
# written to fuzz/artifacts/<target>/ and the script exits non-zero; reproduce one with
#   cd fuzz && cargo fuzz run -s none <target> artifacts/<target>/<file>
# and see what a server script does with `cargo fuzz fmt -s none server <file>` or by running
# it with GEARSHIFT_FUZZ_VERBOSE=1.
#
# `--sanitizer none` is what makes the stable toolchain enough: the coverage instrumentation
# is plain rustc flags, only the sanitizers need nightly. Rust's checks (bounds, overflow with
# the debug assertions cargo-fuzz turns on) and the targets' own assertions do the finding.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

CARGO_FUZZ_VERSION=0.13.2
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decode admin_line http server)
fi

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# One build for every target (the instrumented build of the whole crate graph is the slow part).
cargo fuzz build --sanitizer none

for target in "${targets[@]}"; do
    # Per target: the server target's scripts need room; its inputs are slow (real sockets),
    # so a generous per-input timeout, while its own deadline (10 s) reports a stall first.
    extra=()
    case "$target" in
        server) extra=(-max_len=4096 -timeout=60) ;;
        decode) extra=(-max_len=4096) ;;
        admin_line) extra=(-max_len=4096) ;;
        http) extra=(-max_len=16384) ;;
        *) echo "unknown fuzz target $target" >&2; exit 2 ;;
    esac
    mkdir -p "corpus/$target"
    echo "== fuzz $target for ${seconds}s"
    log=$(mktemp)
    status=0
    cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" \
        >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb))' "$log" || true
    if [ "$status" -ne 0 ]; then
        # The panic, the input as the target saw it, and how to reproduce it.
        grep -v -E '^(#[0-9]+ |"|INFO:|MS: )' "$log" | tail -n 80 >&2
        echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
done
