#!/usr/bin/env bash
# Runs every test: unit and end-to-end tests (cargo), then the slixmpp interop scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
bash interop/run.sh
