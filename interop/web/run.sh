#!/usr/bin/env bash
# Web clients against the server's HTTP listener: strophe.js over BOSH (XEP-0124/0206) and
# over WebSocket (RFC 7395), @xmpp/client over WebSocket, the XEP-0156 host-meta files,
# then Converse.js in headless Chromium (Debian's, driven by playwright-core) served from
# another origin, so CORS is exercised. The other side of each conversation is a TCP
# client (@xmpp/client with STARTTLS, trusting the server's certificate).
#
# Installs what is missing (npm ci from package-lock.json; Debian's chromium as root),
# starts a fresh server on free loopback ports with accounts alice and bob, runs the tests
# and stops the server. Every step is bounded in time.
#
#   bash interop/web/run.sh                  # xmppd from ${XMPPD:-target/debug/xmppd}
#   SERVER=prosody bash interop/web/run.sh   # the same tests against Debian's Prosody
#   bash interop/web/run.sh node             # only the Node tests (or: browser)
set -euo pipefail
cd "$(dirname "$0")/../.."
SERVER=${SERVER:-xmppd}
what=${1:-all}
web=interop/web
password=web-interop-secret
started=$SECONDS

as_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
    as_root || { echo "web interop: missing $*, and not root to install it" >&2; exit 1; }
    timeout 600 apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- what the tests need -------------------------------------------------------------
command -v node >/dev/null || { echo "web interop: node is not installed" >&2; exit 1; }
if [ "$what" != node ] && [ ! -x /usr/bin/chromium ]; then
    apt_install chromium fonts-liberation
fi
if [ "$SERVER" = prosody ] && ! command -v prosody >/dev/null; then
    apt_install prosody
fi
command -v openssl >/dev/null || apt_install openssl
stamp=$web/node_modules/.interop-package-lock.json
if ! cmp -s "$web/package-lock.json" "$stamp"; then
    (cd "$web" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$web/package-lock.json" "$stamp"
fi

# --- the server ------------------------------------------------------------------------
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        # Bounded: SIGKILL if it has not gone within 10 s.
        for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0
        kill -0 "$server_pid" 2>/dev/null || { echo "web interop: the server exited" >&2; return 1; }
        sleep 0.1
    done
    echo "web interop: nothing listens on 127.0.0.1:$1" >&2; return 1
}
c2s=$(free_port); http=$(free_port); metrics=$(free_port)
data=$work/data
log=$work/server.log

case "$SERVER" in
xmppd)
    XMPPD=${XMPPD:-target/debug/xmppd}
    [ -x "$XMPPD" ] || cargo build --quiet
    cat > "$work/xmppd.toml" <<TOML
[server]
data_dir = "$data"
[listen]
c2s = ["127.0.0.1:$c2s"]
c2s_direct_tls = []
metrics = "127.0.0.1:$metrics"
http = ["127.0.0.1:$http"]
[http]
cors_origins = ["*"]
# Short, so the test of a vanished BOSH client (XEP-0124 §10) finishes quickly.
bosh_inactivity_secs = 5
TOML
    for user in alice bob; do
        "$XMPPD" --config "$work/xmppd.toml" user add "$user@localhost" --password "$password" >/dev/null
    done
    "$XMPPD" --config "$work/xmppd.toml" serve 2>"$log" &
    server_pid=$!
    cert=$data/certs/localhost.crt
    ;;
prosody)
    mkdir -p "$data/certs" "$work/prosody-data"
    cert=$data/certs/localhost.crt
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,DNS:*.localhost" \
        -keyout "$data/certs/localhost.key" -out "$cert" 2>/dev/null
    cat > "$work/prosody.cfg.lua" <<LUA
run_as_root = true
daemonize = false
pidfile = "$work/prosody.pid"
data_path = "$work/prosody-data"
plugin_paths = { "$PWD/$web/prosody" }
interfaces = { "127.0.0.1" }
c2s_ports = { $c2s }
s2s_ports = { }
http_ports = { $http }
http_interfaces = { "127.0.0.1" }
https_ports = { }
modules_enabled = { "roster"; "saslauth"; "tls"; "disco"; "ping"; "bosh"; "websocket"; "web_host_meta" }
authentication = "internal_hashed"
c2s_require_encryption = true
consider_bosh_secure = true
consider_websocket_secure = true
cross_domain_bosh = true
cross_domain_websocket = true
bosh_max_inactivity = 5
ssl = { certificate = "$cert"; key = "$data/certs/localhost.key" }
http_default_host = "localhost"
web_host_meta_bosh = "http://127.0.0.1:$http/http-bind"
web_host_meta_websocket = "ws://127.0.0.1:$http/xmpp-websocket"
log = { debug = "$log" }
VirtualHost "localhost"
LUA
    for user in alice bob; do
        prosodyctl --config "$work/prosody.cfg.lua" register "$user" localhost "$password" >/dev/null
    done
    prosody --config "$work/prosody.cfg.lua" >"$work/prosody.out" 2>&1 &
    server_pid=$!
    ;;
*) echo "web interop: SERVER must be xmppd or prosody" >&2; exit 2 ;;
esac
wait_port "$c2s"
wait_port "$http"
# xmppd writes its certificate on first start, before it listens.
[ -s "$cert" ] || { echo "web interop: no certificate at $cert" >&2; exit 1; }

export SERVER XMPP_DOMAIN=localhost XMPP_C2S_PORT=$c2s XMPP_PASSWORD=$password
export XMPP_HTTP_BASE=http://127.0.0.1:$http
export XMPP_BOSH_URL=$XMPP_HTTP_BASE/http-bind XMPP_WS_URL=ws://127.0.0.1:$http/xmpp-websocket
# The TCP clients verify the server's self-signed certificate against itself.
export NODE_EXTRA_CA_CERTS=$cert
export WEB_TEST_SCREENSHOT=${WEB_TEST_SCREENSHOT:-$PWD/target/web-tests/converse.png}

status=0
if [ "$what" = all ] || [ "$what" = node ]; then
    echo "--- web interop ($SERVER): Node clients ---"
    timeout -k 5 80 node --test --test-concurrency=1 --test-timeout=40000 \
        $web/test/host-meta.test.js $web/test/http-protocol.test.js $web/test/strophe-bosh.test.js \
        $web/test/strophe-websocket.test.js $web/test/xmpp-client-websocket.test.js || status=$?
fi
if [ "$what" = all ] || [ "$what" = browser ]; then
    echo "--- web interop ($SERVER): Converse.js in headless Chromium ---"
    timeout -k 5 55 node --test --test-timeout=45000 $web/browser/converse.test.js || status=$?
fi
if [ "$status" -ne 0 ]; then
    echo "--- server log (tail) ---"; tail -n 60 "$log" 2>/dev/null || true
    [ -f "$work/prosody.out" ] && tail -n 20 "$work/prosody.out"
fi
echo "web interop ($SERVER): $([ $status -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - started)) s"
exit "$status"
