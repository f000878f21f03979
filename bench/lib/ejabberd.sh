# ejabberd for bench/run.sh: same interface as xmppd.sh. Runs `ejabberdctl … foreground`
# (as the ejabberd user, which must own DIR); SERVER_PID is its beam.smp process. Erlang
# distribution uses a fixed loopback port instead of epmd, so no epmd is left behind.
# For s2s: ejabberd finds no SRV record (it asks DNS only) and falls back to the A record of
# the peer's domain, which it resolves with getaddrinfo (not the node's inetrc), on
# outgoing_s2s_port. So the server runs in a mount namespace of its own where DIR/hosts (the
# machine's /etc/hosts plus the peer's domain) is bind-mounted over /etc/hosts: the
# machine's file is never touched. Only certificates the test CA signed are accepted (no
# mod_s2s_dialback: SASL EXTERNAL both ways).

# ejabberd_ctl ARGS…: ejabberdctl with our directories, as the ejabberd user, bounded to
# 60 s (`foreground` runs without a bound: it is the server). ejabberdctl would switch user
# with su, whose PAM session resets the open-files limit to 1024 — ejabberd then stops
# accepting near 1,000 sessions and spins on accept. setpriv keeps the raised limit.
ejabberd_ctl() {
    local bound=(timeout 60)
    if [ "$1" = foreground ]; then
        bound=()
        if [ -s "$EJABBERD_DIR/hosts" ]; then
            # shellcheck disable=SC2016
            bound=(unshare -m sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$EJABBERD_DIR/hosts")
        fi
    fi
    (cd "$EJABBERD_DIR" && HOME=/var/lib/ejabberd "${bound[@]}" \
        setpriv --reuid ejabberd --regid ejabberd --init-groups \
        ejabberdctl --config-dir "$EJABBERD_DIR" \
        --ctl-config "$EJABBERD_DIR/ejabberdctl.cfg" --config "$EJABBERD_DIR/ejabberd.yml" \
        --spool "$EJABBERD_DIR/spool" --logs "$EJABBERD_DIR/logs" "$@")
}

ejabberd_setup() {
    EJABBERD_DIR=$1
    local accounts=$2 s2s_listen="" s2s=""
    mkdir -p "$EJABBERD_DIR/spool" "$EJABBERD_DIR/logs"
    if [ -n "${S2S_PORT:-}" ]; then
        s2s_listen=$(printf '  -\n    port: %s\n    ip: "%s"\n    module: ejabberd_s2s_in\n    backlog: 1024' \
            "$S2S_PORT" "$BENCH_IP")
        s2s=$(printf 's2s_use_starttls: required\ns2s_cafile: "%s"\noutgoing_s2s_port: %s\noutgoing_s2s_families:\n  - ipv4\ns2s_dns_timeout: 1\ns2s_dns_retries: 1' \
            "$S2S_CA" "$PEER_S2S_PORT")
    fi
    SERVER_PORT=$("$BENCH" free-port)
    EJABBERD_API_PORT=$("$BENCH" free-port)
    SERVER_HTTP_PORT=$("$BENCH" free-port)
    WS_PATH=/ws
    BOSH_PATH=/bosh
    fill "$BENCH_ROOT/configs/ejabberd.yml" DIR="$EJABBERD_DIR" CERTFILE="$CERTFILE" \
        DOMAIN="$BENCH_DOMAIN" IP="$BENCH_IP" S2S_LISTEN="$s2s_listen" S2S="$s2s" \
        C2S_PORT="$SERVER_PORT" HTTP_PORT="$SERVER_HTTP_PORT" API_PORT="$EJABBERD_API_PORT" >"$EJABBERD_DIR/ejabberd.yml"
    fill "$BENCH_ROOT/configs/ejabberdctl.cfg" DIST_PORT="$("$BENCH" free-port)" \
        >"$EJABBERD_DIR/ejabberdctl.cfg"
    cp /etc/ejabberd/inetrc "$EJABBERD_DIR/inetrc"
    if [ -n "${S2S_PORT:-}" ]; then
        { cat /etc/hosts; printf '%s %s\n' "$PEER_IP" "$PEER_DOMAIN"; } >"$EJABBERD_DIR/hosts"
        chmod 644 "$EJABBERD_DIR/hosts"
    fi
    chown -R ejabberd:ejabberd "$EJABBERD_DIR"
    # ejabberdctl su's to the ejabberd user, who must be able to reach DIR.
    chmod o+x "$(dirname "$EJABBERD_DIR")"
    ejabberd_start || return 1
    # One `ejabberdctl register` starts an Erlang VM (about a second): create the accounts
    # through ejabberd's HTTP admin API instead, the same `register` command, in one curl.
    local i cfg="$EJABBERD_DIR/register.curl"
    for ((i = 1; i <= accounts; i++)); do
        ((i > 1)) && echo next
        printf 'url = "http://%s:%s/api/register"\n' "$BENCH_IP" "$EJABBERD_API_PORT"
        printf 'data = "{\\"user\\":\\"bench%s\\",\\"host\\":\\"%s\\",\\"password\\":\\"%s\\"}"\n' "$i" "$BENCH_DOMAIN" "$PASSWORD"
        echo 'output = "/dev/null"'
    done >"$cfg"
    curl -sS --fail-early -K "$cfg" || { ejabberd_stop; return 1; }
    local registered
    registered=$(curl -sS -d "{\"host\":\"$BENCH_DOMAIN\"}" \
        "http://$BENCH_IP:$EJABBERD_API_PORT/api/registered_users" | grep -o bench | wc -l)
    ejabberd_stop
    [ "$registered" -ge "$accounts" ] || { log "ejabberd has $registered of $accounts accounts"; return 1; }
}

ejabberd_start() {
    ejabberd_ctl foreground >>"$EJABBERD_DIR/foreground.log" 2>&1 &
    EJABBERD_TOP=$!
    wait_port "$SERVER_PORT" 60 || return 1
    SERVER_PID=$(descendant "$EJABBERD_TOP" beam.smp)
}

ejabberd_stop() {
    ejabberd_ctl stop >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 20))
    while [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    stop_pid "$SERVER_PID" 5
    stop_pid "$EJABBERD_TOP" 5
    SERVER_PID=
    EJABBERD_TOP=
}

ejabberd_version() { echo "ejabberd $(dpkg-query -W -f='${Version}' ejabberd)"; }
