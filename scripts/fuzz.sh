#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for a bounded time, starting from the
# committed seeds (fuzz/seeds/TARGET) and a scratch corpus. Any crash fails the run; the
# crashing input is kept under fuzz/artifacts/TARGET/ and becomes a regression test.
#
#   bash scripts/fuzz.sh                    # 60 s per target (CI runs 20 s: .ci/run)
#   FUZZ_SECONDS=3600 bash scripts/fuzz.sh  # a longer local run
#   FUZZ_TARGETS="sasl" bash scripts/fuzz.sh
#   FUZZ_PROFILE=dev bash scripts/fuzz.sh   # opt-level 1, no debuginfo: quicker to build (CI)
#
# Needs a nightly toolchain (cargo fuzz builds with sanitizers); without one it says so and
# skips. Installs cargo-fuzz (pinned) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"stream_parser addressing sasl c2s_session"}
# The release build of every dependency with sanitizer coverage took 15 minutes on CI's 2
# cores; a dev build runs fewer executions per second, plenty for a short run.
profile=()
[ "${FUZZ_PROFILE:-release}" = dev ] && profile=(--dev)
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: skipped: no nightly toolchain here (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install --quiet --locked cargo-fuzz --version 0.13.2
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build "${profile[@]}" --fuzz-dir fuzz
for target in $targets; do
    mkdir -p "$scratch/$target"
    echo "fuzz: $target for ${secs}s"
    log="$scratch/$target.log"
    status=0
    cargo +nightly fuzz run "${profile[@]}" --fuzz-dir fuzz "$target" "$scratch/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    # The progress lines are noise; the summary and any crash report are not.
    grep -E "^(INFO: seed corpus|stat::number_of_executed_units|stat::peak_rss_mb)|panicked|ERROR|SUMMARY|artifact" "$log" || true
    if [ "$status" -ne 0 ]; then
        echo "fuzz: $target FAILED (exit $status); the input is under fuzz/artifacts/$target/"
        tail -n 40 "$log"
        exit "$status"
    fi
done
echo "fuzz: every target ran without a crash"
