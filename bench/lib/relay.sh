# The relay for bench/run.sh: same interface as xmppd.sh. `xmppd-bench relay` is a minimal
# TLS relay (no XML parser, no storage, no accounts): the floor for the chat scenario, the
# least work any server must do per message on this machine. It runs chat only
# (relay_supports); SERVER_PID is the relay process itself.

relay_supports() { [ "$1" = chat ] || { echo "the relay runs only chat"; false; }; }

relay_setup() {
    RELAY_DIR=$1
    mkdir -p "$RELAY_DIR"
    SERVER_PORT=$("$BENCH" free-port)
    SERVER_HTTP_PORT=
    # Any account logs in; the password only enters the SCRAM signature the generator checks.
    if [ ! -s "$CERT_DIR/localhost.crt" ]; then
        log "relay: no certificate in $CERT_DIR (is openssl installed?)"
        return 1
    fi
}

relay_start() {
    "$BENCH" relay --listen "127.0.0.1:$SERVER_PORT" --domain localhost \
        --cert "$CERT_DIR/localhost.crt" --key "$CERT_DIR/localhost.key" \
        --password "$PASSWORD" 2>>"$RELAY_DIR/relay.log" &
    SERVER_PID=$!
    wait_port "$SERVER_PORT" 30
}

relay_stop() {
    stop_pid "$SERVER_PID"
    SERVER_PID=
}

relay_version() {
    local built
    built=$(date -u -r "$BENCH" +%Y-%m-%dT%H:%MZ)
    echo "xmppd-bench relay: TLS relay, the floor for chat, not a server (binary built $built)"
}
