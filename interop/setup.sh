#!/usr/bin/env bash
# Installs the interop clients: Debian's go-sendxmpp and python3-slixmpp (1.8.3, what
# poezio runs on), Prosody and openssl for the federation test, when missing and we are
# root, and the repo-root .venv with the pinned slixmpp from interop/requirements.txt.
# Idempotent: does nothing that is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v go-sendxmpp >/dev/null || missing+=(go-sendxmpp)
command -v prosody >/dev/null || missing+=(prosody)
command -v openssl >/dev/null || missing+=(openssl)
/usr/bin/python3 -c 'import slixmpp' 2>/dev/null || missing+=(python3-slixmpp)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
req=interop/requirements.txt
stamp=.venv/.interop-requirements.txt
if [ -x .venv/bin/python ] && cmp -s "$req" "$stamp"; then
    exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
