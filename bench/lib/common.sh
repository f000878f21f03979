# Helpers shared by bench/run.sh and the per-server scripts. Sourced, not run.

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# fill TEMPLATE KEY=VALUE...: the template with every @KEY@ replaced.
fill() {
    local template=$1 text
    shift
    text=$(<"$template")
    local kv
    for kv in "$@"; do
        text=${text//@${kv%%=*}@/${kv#*=}}
    done
    printf '%s\n' "$text"
}

# wait_port PORT SECONDS: true once something accepts on BENCH_IP:PORT (127.0.0.1).
wait_port() {
    local port=$1 deadline=$((SECONDS + $2)) ip=${BENCH_IP:-127.0.0.1}
    while ((SECONDS < deadline)); do
        if (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    log "nothing listens on $ip:$port after $2 s"
    return 1
}

# stop_pid PID [SECONDS]: SIGTERM, wait (bounded), then SIGKILL. Only the given PID.
stop_pid() {
    local pid=$1 deadline=$((SECONDS + ${2:-15}))
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "PID $pid ignored SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# descendant PID NAME: the first descendant of PID whose command name is NAME.
descendant() {
    local pid=$1 name=$2 child found
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
        if [ "$(ps -o comm= -p "$child" 2>/dev/null)" = "$name" ]; then
            echo "$child"
            return 0
        fi
        found=$(descendant "$child" "$name") && { echo "$found"; return 0; }
    done
    return 1
}

# One self-signed ECDSA P-256 certificate for "localhost", used by every server so that
# TLS handshakes cost the same key type everywhere.
make_cert() {
    local dir=$1
    [ -s "$dir/localhost.pem" ] && return 0
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,DNS:*.localhost \
        -keyout "$dir/localhost.key" -out "$dir/localhost.crt" 2>/dev/null
    cat "$dir/localhost.crt" "$dir/localhost.key" >"$dir/localhost.pem"
    chmod 644 "$dir"/*
}

# make_s2s_certs DIR DOMAIN…: a test CA (DIR/ca.crt) and for each domain a P-256 certificate
# it signed (DIR/DOMAIN.crt, .key, and DOMAIN.pem = key + certificate + CA for ejabberd),
# with serverAuth and clientAuth (OpenSSL under Prosody checks clientAuth on incoming peers).
make_s2s_certs() {
    local dir=$1 domain
    shift
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=xmppd bench test CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    for domain in "$@"; do
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=$domain" -keyout "$dir/$domain.key" -out "$dir/$domain.csr" 2>/dev/null
        printf 'subjectAltName=DNS:%s,DNS:*.%s\nextendedKeyUsage=serverAuth,clientAuth\n' \
            "$domain" "$domain" >"$dir/$domain.ext"
        openssl x509 -req -in "$dir/$domain.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
            -CAcreateserial -days 30 -extfile "$dir/$domain.ext" -out "$dir/$domain.crt" 2>/dev/null
        cat "$dir/$domain.key" "$dir/$domain.crt" "$dir/ca.crt" >"$dir/$domain.pem"
    done
    chmod 644 "$dir"/*
}

# The variables a server script keeps an instance's state in. The s2s scenario runs two
# instances of one server: save_state/load_state switch between them.
STATE_VARS="SERVER_PORT SERVER_PID SERVER_HTTP_PORT WS_PATH BOSH_PATH XMPPD_DIR PROSODY_DIR
    EJABBERD_DIR EJABBERD_API_PORT EJABBERD_TOP BENCH_DOMAIN BENCH_IP CERT KEY CERTFILE S2S_PORT
    PEER_DOMAIN PEER_IP PEER_S2S_PORT S2S_CA"

# save_state FILE: the instance's variables, to be restored by load_state FILE.
save_state() {
    local v
    for v in $STATE_VARS; do printf '%s=%q\n' "$v" "${!v-}"; done >"$1"
}

load_state() {
    # shellcheck disable=SC1090
    source "$1"
}

# cpu_ticks PID: utime+stime of PID in clock ticks.
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    set -- $stat
    echo $((${12} + ${13}))
}

# wait_quiet PID SECONDS: waits until PID uses under 2% CPU over half a second (a server
# still starting up, e.g. ejabberd loading modules after its port opened), at most SECONDS.
wait_quiet() {
    local pid=$1 deadline=$((SECONDS + $2)) before after
    while ((SECONDS < deadline)); do
        before=$(cpu_ticks "$pid") || return 0
        sleep 0.5
        after=$(cpu_ticks "$pid") || return 0
        ((after - before <= 1)) && return 0
    done
    log "PID $pid still busy after $2 s"
}

# machine_ticks: busy clock ticks of the whole machine (all CPUs, not idle or iowait).
machine_ticks() {
    local cpu user nice system idle iowait irq softirq steal rest
    read -r cpu user nice system idle iowait irq softirq steal rest </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}

# wait_machine_quiet SECONDS: on a shared machine, waits until everything together uses
# under 15% of one core over two seconds (no build or test running beside the benchmark),
# at most SECONDS. Disturbance that remains shows in the "other processes' CPU" rows.
wait_machine_quiet() {
    local deadline=$((SECONDS + $1)) before after
    (($1 > 0)) || return 0
    while ((SECONDS < deadline)); do
        before=$(machine_ticks)
        sleep 2
        after=$(machine_ticks)
        ((after - before <= 30)) && return 0
    done
    log "the machine is still busy after $1 s (other processes); measuring anyway"
}
