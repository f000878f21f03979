#!/usr/bin/env bash
# Runs every test: unit and end-to-end tests (cargo), the slixmpp interop scenarios, the
# web clients in Node and headless Chromium, federation with Prosody, the systemd unit's
# verification, and the benchmark harness in smoke mode (so it cannot rot; it asserts no
# timings). Each step says how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
step() {
    local started=$SECONDS
    "$@"
    echo "test: $* took $((SECONDS - started)) s"
}
step cargo test --workspace --locked
step bash interop/run.sh
step bash interop/web/run.sh
step bash interop/federation.sh
step bash dist/systemd/verify.sh
# The binaries `cargo test` built (a build of its own would take two more minutes).
target=${CARGO_TARGET_DIR:-target}/debug
step env XMPPD="$target/xmppd" BENCH="$target/xmppd-bench" bash bench/run.sh --smoke
