#!/usr/bin/env bash
# Starts xmppd (from target/debug unless XMPPD is set) on free loopback ports with a fresh
# data directory and its generated self-signed certificate, adds two accounts with the CLI,
# runs the slixmpp scenarios against it (with the pinned slixmpp, then a few with Debian's
# slixmpp 1.8.3), and stops it again. Extra arguments go to
# scenarios.py, e.g. `bash interop/run.sh -v --only offline_message`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash interop/setup.sh
XMPPD=${XMPPD:-target/debug/xmppd}
[ -x "$XMPPD" ] || cargo build --quiet
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
c2s=$(free_port); tls=$(free_port); metrics=$(free_port)
cat > "$work/xmppd.toml" <<TOML
[server]
data_dir = "$work/data"
[listen]
c2s = ["127.0.0.1:$c2s"]
c2s_direct_tls = ["127.0.0.1:$tls"]
metrics = "127.0.0.1:$metrics"
http = []
TOML
for user in alice bob; do
    "$XMPPD" --config "$work/xmppd.toml" user add "$user@localhost" --password interop-secret >/dev/null
done
"$XMPPD" --config "$work/xmppd.toml" serve 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $c2s), 0.2)" 2>/dev/null && break
    sleep 0.1
done
status=0
args=(--host 127.0.0.1 --port "$c2s" --tls-port "$tls" --domain localhost --user alice
      --user2 bob --password interop-secret --cafile "$work/data/certs/localhost.crt")
.venv/bin/python interop/scenarios.py "${args[@]}" "$@" || status=$?
# Debian's slixmpp 1.8.3, as poezio uses it: it negotiates SASL differently (tls-unique).
if [ $# -eq 0 ] && /usr/bin/python3 -c 'import slixmpp' 2>/dev/null; then
    echo "--- with Debian's slixmpp $(/usr/bin/python3 -c 'import slixmpp; print(slixmpp.__version__)') ---"
    /usr/bin/python3 interop/scenarios.py "${args[@]}" --only default_mechanism_login \
        --only chat_message || status=$?
fi
if [ "$status" -ne 0 ]; then
    echo "--- server log ---"; tail -n 50 "$work/server.log"
fi
exit "$status"
