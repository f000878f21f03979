# xmppd for bench/run.sh: SERVER_PORT, SERVER_PID; xmppd_setup DIR ACCOUNTS, xmppd_start,
# xmppd_stop, xmppd_version. Needs XMPPD (the binary), PASSWORD, CERT, KEY, JOBS, BENCH, and
# the instance's BENCH_DOMAIN and BENCH_IP; for s2s also S2S_PORT, PEER_DOMAIN, PEER_IP,
# PEER_S2S_PORT and S2S_CA (see bench/run.sh).

xmppd_setup() {
    XMPPD_DIR=$1
    local accounts=$2 certificates="" s2s_listen="" s2s=""
    mkdir -p "$XMPPD_DIR"
    SERVER_PORT=$("$BENCH" free-port)
    SERVER_HTTP_PORT=$("$BENCH" free-port)
    WS_PATH=/xmpp-websocket
    BOSH_PATH=/http-bind
    if [ -s "$CERT" ]; then
        certificates="certificates = [{ domain = \"$BENCH_DOMAIN\", cert = \"$CERT\", key = \"$KEY\" }]"
    fi
    # Federation: the peer's certificate must verify against the test CA (no dialback).
    if [ -n "${S2S_PORT:-}" ]; then
        s2s_listen="s2s = [\"$BENCH_IP:$S2S_PORT\"]"
        s2s=$(printf '[s2s]\nca_file = "%s"\ndialback = false\n[s2s.routes]\n"%s" = "%s:%s"' \
            "$S2S_CA" "$PEER_DOMAIN" "$PEER_IP" "$PEER_S2S_PORT")
    fi
    fill "$BENCH_ROOT/configs/xmppd.toml" DIR="$XMPPD_DIR" CERTIFICATES="$certificates" \
        DOMAIN="$BENCH_DOMAIN" IP="$BENCH_IP" S2S_LISTEN="$s2s_listen" S2S="$s2s" \
        C2S_PORT="$SERVER_PORT" HTTP_PORT="$SERVER_HTTP_PORT" TLS_PORT="$("$BENCH" free-port)" \
        METRICS_PORT="$("$BENCH" free-port)" >"$XMPPD_DIR/xmppd.toml"
    # Each `user add` derives the SCRAM keys (PBKDF2) for SHA-1 and SHA-256: run a few at once
    # (the first ones to open the fresh database take turns at its migrations).
    seq 1 "$accounts" | xargs -r -P "$JOBS" -I{} "$XMPPD" --config "$XMPPD_DIR/xmppd.toml" \
        user add "bench{}@$BENCH_DOMAIN" --password "$PASSWORD" >/dev/null
}

xmppd_start() {
    "$XMPPD" --config "$XMPPD_DIR/xmppd.toml" serve 2>>"$XMPPD_DIR/server.log" &
    SERVER_PID=$!
    wait_port "$SERVER_PORT" 30
}

xmppd_stop() {
    stop_pid "$SERVER_PID"
    SERVER_PID=
}

# The binary may be older than the checkout: say both.
xmppd_version() {
    local rev built
    rev=$(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    built=$(date -u -r "$XMPPD" +%Y-%m-%dT%H:%MZ)
    echo "$("$XMPPD" --version) (binary built $built; checkout at git $rev)"
}
