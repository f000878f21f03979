#!/usr/bin/env bash
# Runs every test: unit and end-to-end tests (cargo), the slixmpp interop scenarios,
# federation with Prosody, the systemd unit's verification, and the benchmark harness in
# smoke mode (so it cannot rot; it asserts no timings).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
bash interop/run.sh
bash interop/web/run.sh
bash interop/federation.sh
bash dist/systemd/verify.sh
bash bench/run.sh --smoke
