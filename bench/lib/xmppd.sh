# xmppd for bench/run.sh: SERVER_PORT, SERVER_PID; xmppd_setup DIR ACCOUNTS, xmppd_start,
# xmppd_stop, xmppd_version. Needs XMPPD (the binary), PASSWORD, CERT_DIR, JOBS, BENCH.

xmppd_setup() {
    XMPPD_DIR=$1
    local accounts=$2 certificates=""
    mkdir -p "$XMPPD_DIR"
    SERVER_PORT=$("$BENCH" free-port)
    SERVER_HTTP_PORT=$("$BENCH" free-port)
    WS_PATH=/xmpp-websocket
    BOSH_PATH=/http-bind
    if [ -s "$CERT_DIR/localhost.crt" ]; then
        certificates="certificates = [{ domain = \"localhost\", cert = \"$CERT_DIR/localhost.crt\", key = \"$CERT_DIR/localhost.key\" }]"
    fi
    fill "$BENCH_ROOT/configs/xmppd.toml" DIR="$XMPPD_DIR" CERTIFICATES="$certificates" \
        C2S_PORT="$SERVER_PORT" HTTP_PORT="$SERVER_HTTP_PORT" TLS_PORT="$("$BENCH" free-port)" \
        METRICS_PORT="$("$BENCH" free-port)" >"$XMPPD_DIR/xmppd.toml"
    # Each `user add` derives the SCRAM keys (PBKDF2) for SHA-1 and SHA-256: run a few at once
    # (the first ones to open the fresh database take turns at its migrations).
    seq 1 "$accounts" | xargs -r -P "$JOBS" -I{} "$XMPPD" --config "$XMPPD_DIR/xmppd.toml" \
        user add "bench{}@localhost" --password "$PASSWORD" >/dev/null
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
