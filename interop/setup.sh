#!/usr/bin/env bash
# Create/refresh the repo-root .venv with the interop client deps.
# Idempotent: does nothing when .venv already matches interop/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
req=interop/requirements.txt
stamp=.venv/.interop-requirements.txt
if [ -x .venv/bin/python ] && cmp -s "$req" "$stamp"; then
    exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
