#!/usr/bin/env bash
# Checks dist/systemd/xmppd.service with `systemd-analyze verify` (installing systemd's
# tools when missing and root), against the built binary in place of /usr/local/bin/xmppd.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v systemd-analyze >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
    else
        echo "systemd-analyze missing and not root: cannot verify the unit" >&2
        exit 1
    fi
fi
XMPPD=${XMPPD:-$PWD/target/debug/xmppd}
[ -x "$XMPPD" ] || cargo build --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s#/usr/local/bin/xmppd#$XMPPD#" dist/systemd/xmppd.service > "$work/xmppd.service"
# verify prints problems and exits 0 for some of them: any output fails the check.
out=$(systemd-analyze verify "$work/xmppd.service" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "systemd unit: verified"
