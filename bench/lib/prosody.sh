# Prosody for bench/run.sh: same interface as xmppd.sh. Runs in the foreground as root
# (run_as_root) with its own config, data and socket under DIR.

prosody_ctl() { prosodyctl --config "$PROSODY_DIR/prosody.cfg.lua" "$@"; }

prosody_setup() {
    PROSODY_DIR=$1
    local accounts=$2
    mkdir -p "$PROSODY_DIR/data"
    SERVER_PORT=$("$BENCH" free-port)
    SERVER_HTTP_PORT=$("$BENCH" free-port)
    WS_PATH=/xmpp-websocket
    BOSH_PATH=/http-bind
    fill "$BENCH_ROOT/configs/prosody.cfg.lua" DIR="$PROSODY_DIR" CERT_DIR="$CERT_DIR" \
        C2S_PORT="$SERVER_PORT" HTTP_PORT="$SERVER_HTTP_PORT" >"$PROSODY_DIR/prosody.cfg.lua"
    # prosodyctl writes the account files itself (no server needed), about 0.1 s each.
    seq 1 "$accounts" | xargs -P "$JOBS" -I{} \
        prosodyctl --config "$PROSODY_DIR/prosody.cfg.lua" register "bench{}" localhost "$PASSWORD"
}

prosody_start() {
    prosody --config "$PROSODY_DIR/prosody.cfg.lua" >>"$PROSODY_DIR/stdout.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$SERVER_PORT" 30
}

prosody_stop() {
    stop_pid "$SERVER_PID"
    SERVER_PID=
}

# `prosody --version` would start a server: ask the package instead.
prosody_version() { echo "Prosody $(dpkg-query -W -f='${Version}' prosody)"; }
