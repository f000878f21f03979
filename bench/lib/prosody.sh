# Prosody for bench/run.sh: same interface as xmppd.sh. Runs in the foreground as root
# (run_as_root) with its own config, data and socket under DIR. For s2s, static routes come
# from the test plugin interop/prosody/mod_test_s2s_routes.lua (Prosody 0.12 has no option for
# them and its resolver ignores /etc/hosts); peers must present a certificate the test CA
# signed (s2s_secure_auth).

prosody_ctl() { prosodyctl --config "$PROSODY_DIR/prosody.cfg.lua" "$@"; }

prosody_setup() {
    PROSODY_DIR=$1
    local accounts=$2 s2s_ports="" s2s_modules="" s2s_ca="" s2s=""
    mkdir -p "$PROSODY_DIR/data"
    if [ -n "${S2S_PORT:-}" ]; then
        s2s_ports=$S2S_PORT
        s2s_modules='"dialback"; "test_s2s_routes";'
        s2s_ca="cafile = \"$S2S_CA\";"
        s2s=$(printf 'plugin_paths = { "%s" }\ns2s_require_encryption = true\ns2s_secure_auth = true\ntest_s2s_routes = { ["%s"] = { "%s", %s } }' \
            "$REPO/interop/prosody" "$PEER_DOMAIN" "$PEER_IP" "$PEER_S2S_PORT")
    fi
    SERVER_PORT=$("$BENCH" free-port)
    SERVER_HTTP_PORT=$("$BENCH" free-port)
    WS_PATH=/xmpp-websocket
    BOSH_PATH=/http-bind
    fill "$BENCH_ROOT/configs/prosody.cfg.lua" DIR="$PROSODY_DIR" CERT_DIR="$(dirname "$CERT")" \
        CERT="$CERT" KEY="$KEY" DOMAIN="$BENCH_DOMAIN" IP="$BENCH_IP" S2S_PORTS="$s2s_ports" \
        S2S_MODULES="$s2s_modules" S2S_CA="$s2s_ca" S2S="$s2s" \
        C2S_PORT="$SERVER_PORT" HTTP_PORT="$SERVER_HTTP_PORT" >"$PROSODY_DIR/prosody.cfg.lua"
    # prosodyctl writes the account files itself (no server needed), about 0.1 s each.
    seq 1 "$accounts" | xargs -P "$JOBS" -I{} \
        prosodyctl --config "$PROSODY_DIR/prosody.cfg.lua" register "bench{}" "$BENCH_DOMAIN" "$PASSWORD"
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
