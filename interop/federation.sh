#!/usr/bin/env bash
# Federation with Prosody from Debian: xmppd serves one.test on 127.0.0.2, Prosody serves
# two.test on 127.0.0.3, each routing to the other statically (Prosody through the test
# plugin in interop/prosody/). Two rounds with slixmpp clients on both servers:
#   1. certificates from a test CA both trust: SASL EXTERNAL both ways (XEP-0178);
#   2. neither trusts the other's certificate: dialback both ways (XEP-0220);
#   3. Prosody with mod_s2s_bidi: one connection carries both directions (XEP-0288).
# Each round checks chat both ways, a subscription handshake, presence and a remote ping,
# then the servers' logs for how the links authenticated. The first round also runs an
# XEP-0114 component written with slixmpp against xmppd (interop/component.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash interop/setup.sh
XMPPD=${XMPPD:-target/debug/xmppd}
[ -x "$XMPPD" ] || cargo build --quiet
if ! command -v prosody >/dev/null; then
    echo "federation: prosody is not installed (run as root so interop/setup.sh can install it)" >&2
    exit 1
fi
work=$(mktemp -d)
pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    pids=()
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('$1', 0)); print(s.getsockname()[1])"; }
wait_port() {
    for _ in $(seq 1 100); do
        python3 -c "import socket; socket.create_connection(('$1', $2), 0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1:$2" >&2; return 1
}

# A test CA and a certificate per domain (serverAuth and clientAuth: OpenSSL, under
# Prosody, checks the clientAuth usage of incoming peers).
cert() {
    local name=$1 ca=$2
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
        -keyout "$work/$name.key" -out "$work/$name.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s,DNS:*.%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$name" "$name" \
        > "$work/$name.ext"
    openssl x509 -req -in "$work/$name.csr" -CA "$work/$ca.crt" -CAkey "$work/$ca.key" \
        -CAcreateserial -days 2 -extfile "$work/$name.ext" -out "$work/$name.crt" 2>/dev/null
}
for ca in ca other-ca; do
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=xmppd interop $ca" -keyout "$work/$ca.key" -out "$work/$ca.crt" 2>/dev/null
done
cert one.test ca
cert two.test ca

x_c2s=$(free_port 127.0.0.2); x_s2s=$(free_port 127.0.0.2); x_comp=$(free_port 127.0.0.2)
p_c2s=$(free_port 127.0.0.3); p_s2s=$(free_port 127.0.0.3)
password=federation-secret

# round NAME XMPPD_CA PROSODY_CA SECURE_AUTH EXPECT_IN EXPECT_OUT [bidi]
# With `bidi`, Prosody loads mod_s2s_bidi (XEP-0288) and everything must go over the one
# connection xmppd opens (EXPECT_IN is then unused: no link comes in).
round() {
    local name=$1 our_ca=$2 their_ca=$3 secure=$4 expect_in=$5 expect_out=$6 bidi=${7:-}
    local extra_modules=""
    [ "$bidi" = bidi ] && extra_modules='"s2s_bidi";'
    echo "--- federation with Prosody: $name ---"
    rm -rf "$work/xmppd-data" "$work/prosody-data"; mkdir -p "$work/prosody-data"
    cat > "$work/xmppd.toml" <<TOML
[server]
domains = ["one.test"]
data_dir = "$work/xmppd-data"
[listen]
c2s = ["127.0.0.2:$x_c2s"]
c2s_direct_tls = []
s2s = ["127.0.0.2:$x_s2s"]
component = ["127.0.0.2:$x_comp"]
[components."echo.one.test"]
secret = "component-secret"
[[tls.certificates]]
domain = "one.test"
cert = "$work/one.test.crt"
key = "$work/one.test.key"
[s2s]
ca_file = "$work/$our_ca.crt"
[s2s.routes]
"two.test" = "127.0.0.3:$p_s2s"
TOML
    cat > "$work/prosody.cfg.lua" <<LUA
run_as_root = true
daemonize = false
pidfile = "$work/prosody.pid"
data_path = "$work/prosody-data"
plugin_paths = { "$PWD/interop/prosody" }
interfaces = { "127.0.0.3" }
c2s_ports = { $p_c2s }
s2s_ports = { $p_s2s }
http_ports = { }
https_ports = { }
modules_enabled = { "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "test_s2s_routes"; $extra_modules }
authentication = "internal_hashed"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = $secure
test_s2s_routes = { ["one.test"] = { "127.0.0.2", $x_s2s } }
ssl = { certificate = "$work/two.test.crt"; key = "$work/two.test.key"; cafile = "$work/$their_ca.crt" }
log = { debug = "$work/prosody.log" }
VirtualHost "two.test"
LUA
    "$XMPPD" --config "$work/xmppd.toml" user add alice@one.test --password "$password" >/dev/null
    prosodyctl --config "$work/prosody.cfg.lua" register bob two.test "$password" >/dev/null
    "$XMPPD" --config "$work/xmppd.toml" serve 2>"$work/xmppd.log" &
    pids+=($!)
    prosody --config "$work/prosody.cfg.lua" >"$work/prosody.out" 2>&1 &
    pids+=($!)
    wait_port 127.0.0.2 "$x_c2s"; wait_port 127.0.0.3 "$p_c2s"
    local status=0
    .venv/bin/python interop/federation.py --local one.test --local-host 127.0.0.2 \
        --local-port "$x_c2s" --remote two.test --remote-host 127.0.0.3 --remote-port "$p_c2s" \
        --password "$password" --cafile "$work/ca.crt" || status=$?
    if [ $status -eq 0 ] && [ "$bidi" = bidi ]; then
        local links
        links=$(grep -cE 'connection opened.*kind="?s2s-(in|out)' "$work/xmppd.log" || true)
        [ "$links" = 1 ] || { echo "FAIL $links server-to-server connections, expected 1 (bidi)"; status=1; }
        grep -q "incoming server link authenticated" "$work/xmppd.log" \
            && { echo "FAIL Prosody opened a link of its own despite bidi"; status=1; }
    elif [ $status -eq 0 ]; then
        grep -q "incoming server link authenticated.*method=\"\?$expect_in" "$work/xmppd.log" \
            || { echo "FAIL incoming link not authenticated by $expect_in"; status=1; }
        grep -q "outgoing server link authenticated.*method=\"\?$expect_out" "$work/xmppd.log" \
            || { echo "FAIL outgoing link not authenticated by $expect_out"; status=1; }
        [ $status -eq 0 ] && echo "PASS links authenticated by $expect_in (in) and $expect_out (out)"
    fi
    if [ $status -eq 0 ] && [ "$bidi" = bidi ]; then
        grep -q "outgoing server link authenticated.*method=\"\?$expect_out" "$work/xmppd.log" \
            || { echo "FAIL outgoing link not authenticated by $expect_out"; status=1; }
        [ $status -eq 0 ] && echo "PASS one connection both ways (XEP-0288), authenticated by $expect_out"
    fi
    if [ $status -eq 0 ] && [ "$name" = "verified certificates" ]; then
        echo "--- an XEP-0114 component (slixmpp ComponentXMPP) ---"
        .venv/bin/python interop/component.py --component echo.one.test --secret component-secret \
            --host 127.0.0.2 --port "$x_comp" --c2s-port "$x_c2s" --user alice@one.test \
            --password "$password" --cafile "$work/ca.crt" || status=$?
    fi
    stop_all
    if [ $status -ne 0 ]; then
        echo "--- xmppd log ---"; tail -n 40 "$work/xmppd.log"
        echo "--- prosody log ---"; grep -iE "s2s|error|warn|dialback|cert" "$work/prosody.log" | tail -n 40
        exit $status
    fi
}
round "verified certificates" ca ca true sasl-external sasl-external
round "untrusted certificates" other-ca other-ca false dialback dialback
round "bidirectional streams" ca ca true - sasl-external bidi
