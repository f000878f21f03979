#!/usr/bin/env bash
# Benchmarks xmppd side by side with Prosody and ejabberd on loopback: the same scenarios,
# accounts, certificate and SCRAM settings on each, one server at a time, then a table in
# bench/results/latest.md and latest.json. The `relay` target (chat only) is the machine's
# floor: a TLS relay that does nothing else. The `s2s` scenario runs two servers of the same
# kind federating on loopback (one.bench.test on 127.0.0.12, two.bench.test on 127.0.0.13,
# certificates from a test CA) and chats across the link. See bench/README.md.
#
#   bench/run.sh                 # all servers (+ relay for chat), all scenarios
#   bench/run.sh --smoke         # xmppd only, tiny sizes, a few seconds, no apt (for CI)
#   bench/run.sh --servers "xmppd prosody" --scenarios "chat"
#   IDLE_N="1000 10000" bench/run.sh --scenarios idle   # one idle run per size
set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH_ROOT")
# shellcheck source=lib/common.sh
source "$BENCH_ROOT/lib/common.sh"
source "$BENCH_ROOT/lib/xmppd.sh"
source "$BENCH_ROOT/lib/prosody.sh"
source "$BENCH_ROOT/lib/ejabberd.sh"
source "$BENCH_ROOT/lib/relay.sh"

SMOKE=0
SERVERS=""
SCENARIOS="idle login chat presence idle_ws idle_bosh chat_ws pep muc_join muc muc_big muc_rooms s2s"
OUT=""
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SMOKE=1 ;;
        --servers) SERVERS=$2; shift ;;
        --scenarios) SCENARIOS=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

# Sizes: environment variables override these defaults.
if [ "$SMOKE" = 1 ]; then
    : "${SERVERS:=xmppd}" "${PROFILE:=debug}"
    : "${IDLE_N:=20}" "${LOGIN_N:=20}" "${CHAT_PAIRS:=10}" "${CHAT_RATE:=200}" "${CHAT_SECS:=2}"
    : "${PRESENCE_N:=20}" "${PRESENCE_R:=3}" "${PRESENCE_RATE:=20}" "${PRESENCE_SECS:=2}"
    : "${WEB_IDLE_N:=20}" "${CHAT_WS_PAIRS:=10}"
    : "${PEP_N:=20}" "${PEP_R:=3}" "${PEP_RATE:=10}" "${PEP_SECS:=2}"
    : "${MUC_JOIN_N:=10}" "${MUC_JOIN_RATE:=0}" "${MUC_N:=10}" "${MUC_SENDERS:=3}" "${MUC_RATE:=5}" "${MUC_SECS:=2}"
    : "${MUC_BIG_N:=15}" "${MUC_BIG_RATE:=2}" "${MUC_BIG_SECS:=1}" "${MUC_ROOMS:=6}" "${MUC_ROOMS_SESSIONS:=2}"
    : "${S2S_PAIRS:=5}" "${S2S_RATE:=100}" "${S2S_SECS:=2}"
    : "${HOLD:=1}" "${TIMEOUT:=10}" "${SETUP_TIMEOUT:=10}" "${QUIET_WAIT:=0}"
else
    : "${SERVERS:=xmppd prosody ejabberd relay}" "${PROFILE:=release}"
    : "${IDLE_N:=1000}" "${LOGIN_N:=500}" "${CHAT_PAIRS:=200}" "${CHAT_RATE:=3000}" "${CHAT_SECS:=10}"
    : "${PRESENCE_N:=500}" "${PRESENCE_R:=10}" "${PRESENCE_RATE:=500}" "${PRESENCE_SECS:=10}"
    : "${WEB_IDLE_N:=1000}" "${CHAT_WS_PAIRS:=$CHAT_PAIRS}"
    : "${PEP_N:=500}" "${PEP_R:=50}" "${PEP_RATE:=50}" "${PEP_SECS:=10}"
    : "${MUC_JOIN_N:=1000}" "${MUC_JOIN_RATE:=0}" "${MUC_N:=1000}" "${MUC_SENDERS:=20}" "${MUC_RATE:=20}" "${MUC_SECS:=10}"
    : "${MUC_BIG_N:=10000}" "${MUC_BIG_RATE:=2}" "${MUC_BIG_SECS:=10}" "${MUC_ROOMS:=1000}" "${MUC_ROOMS_SESSIONS:=10}"
    : "${S2S_PAIRS:=200}" "${S2S_RATE:=1000}" "${S2S_SECS:=10}"
    : "${HOLD:=5}" "${TIMEOUT:=30}" "${SETUP_TIMEOUT:=120}"
    : "${OUT:=$BENCH_ROOT/results}"
fi
: "${RATE:=500}" "${INFLIGHT:=64}" "${JOBS:=4}" "${PASSWORD:=bench-secret}"
# Longest wait for other processes (a build beside the benchmark) to calm down before a run.
: "${QUIET_WAIT:=120}"

# Each session is a socket on both ends of loopback; 10k sessions need more than 20k fds.
ulimit -Hn 200000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Binaries: given, or built (one cargo build for both).
if [ -z "${XMPPD:-}" ] || [ -z "${BENCH:-}" ]; then
    profile_flag=()
    [ "$PROFILE" = release ] && profile_flag=(--release)
    log "building xmppd and xmppd-bench ($PROFILE)"
    (cd "$REPO" && cargo build --quiet "${profile_flag[@]}" -p xmppd -p xmppd-bench)
    : "${XMPPD:=$REPO/target/$PROFILE/xmppd}" "${BENCH:=$REPO/target/$PROFILE/xmppd-bench}"
fi

# The other servers come from Debian, installed on first use (never in smoke mode).
missing=()
for server in $SERVERS; do
    case $server in
        xmppd | relay) ;;
        prosody) command -v prosody >/dev/null || missing+=(prosody) ;;
        ejabberd) command -v ejabberdctl >/dev/null || missing+=(ejabberd) ;;
        *) echo "unknown server: $server" >&2; exit 2 ;;
    esac
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$SMOKE" = 1 ] && { echo "smoke mode runs xmppd only" >&2; exit 2; }
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

WORK=$(mktemp -d /tmp/xmppd-bench.XXXXXX)
chmod 755 "$WORK"
CURRENT=""
cleanup() {
    if [ -n "$S2S_ACTIVE" ]; then s2s_stop "$S2S_ACTIVE"; fi
    if [ -n "$CURRENT" ]; then "${CURRENT}_stop" || true; fi
    [ "${KEEP_WORK:-0}" = 1 ] && log "work directory kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
[ -n "$OUT" ] || OUT=$WORK/out
mkdir -p "$OUT" "$WORK/results"
CERT_DIR=$WORK/cert
if command -v openssl >/dev/null; then make_cert "$CERT_DIR"; fi
# The instance every scenario but s2s runs: domain localhost on 127.0.0.1, the shared
# certificate, no federation. (s2s switches between two instances with save/load_state.)
BENCH_DOMAIN=localhost BENCH_IP=127.0.0.1 S2S_PORT="" PEER_DOMAIN="" PEER_IP="" PEER_S2S_PORT=""
CERT=$CERT_DIR/localhost.crt KEY=$CERT_DIR/localhost.key CERTFILE=$CERT_DIR/localhost.pem
S2S_CA=""
S2S_DOMAINS=(one.bench.test two.bench.test)
S2S_IPS=(127.0.0.12 127.0.0.13)
S2S_CERTS=$WORK/s2s-cert
S2S_ACTIVE=""

accounts=0
for scenario in $SCENARIOS; do
    case $scenario in
        idle) n=$(printf '%s\n' $IDLE_N | sort -n | tail -n 1) ;;
        login) n=$LOGIN_N ;;
        chat) n=$((CHAT_PAIRS * 2)) ;;
        presence) n=$PRESENCE_N ;;
        idle_ws | idle_bosh) n=$WEB_IDLE_N ;;
        chat_ws) n=$((CHAT_WS_PAIRS * 2)) ;;
        pep) n=$PEP_N ;;
        muc_join) n=$MUC_JOIN_N ;;
        muc) n=$MUC_N ;;
        muc_big) n=0 ;; # xmppd only: see accounts_for
        muc_rooms) n=$((MUC_ROOMS_SESSIONS + 1)) ;;
        s2s) n=0 ;; # its two servers get accounts of their own
        *) echo "unknown scenario: $scenario" >&2; exit 2 ;;
    esac
    ((n > accounts)) && accounts=$n
done

# accounts_for SERVER: the accounts its instance needs (muc_big's 10,000 only where it runs).
accounts_for() {
    if supports "$1" muc_big >/dev/null && [[ " $SCENARIOS " == *" muc_big "* ]] && ((MUC_BIG_N > accounts)); then
        echo "$MUC_BIG_N"
    else
        echo "$accounts"
    fi
}

# The runs of a scenario: "idle" once per size in IDLE_N (named idle-N when several).
runs_of() {
    local n
    if [ "$1" = idle ] && [ "$(echo $IDLE_N | wc -w)" -gt 1 ]; then
        for n in $IDLE_N; do echo "idle-$n"; done
    else
        echo "$1"
    fi
}

# scenario_args RUN: the generator's arguments for a run named by runs_of.
scenario_args() {
    local scenario=${1%%-*}
    [ "$scenario" = muc_big ] && scenario=muc # the fan-out, in a room of MUC_BIG_N
    local common=(--scenario "$scenario" --name "$1" --rate "$RATE" --max-inflight "$INFLIGHT"
        --timeout "$TIMEOUT" --password "$PASSWORD" --user-prefix bench --domain localhost)
    # The web transports: the server's plain-HTTP listener and its endpoint paths.
    if [ -n "${SERVER_HTTP_PORT:-}" ]; then
        common+=(--http-addr "127.0.0.1:$SERVER_HTTP_PORT" --ws-path "$WS_PATH" --bosh-path "$BOSH_PATH")
    fi
    case $1 in
        idle_ws | idle_bosh) echo "${common[@]}" -n "$WEB_IDLE_N" --hold "$HOLD" ;;
        chat_ws) echo "${common[@]}" -n $((CHAT_WS_PAIRS * 2)) --msg-rate "$CHAT_RATE" --duration "$CHAT_SECS" ;;
        pep) echo "${common[@]}" -n "$PEP_N" --contacts "$PEP_R" --publish-rate "$PEP_RATE" \
            --duration "$PEP_SECS" --setup-timeout "$SETUP_TIMEOUT" ;;
        muc_join) echo "${common[@]}" -n "$MUC_JOIN_N" --join-rate "$MUC_JOIN_RATE" \
            --setup-timeout "$SETUP_TIMEOUT" ;;
        muc) echo "${common[@]}" -n "$MUC_N" --senders "$MUC_SENDERS" --msg-rate "$MUC_RATE" \
            --duration "$MUC_SECS" --setup-timeout "$SETUP_TIMEOUT" ;;
        # Only the owner's presence is broadcast: 10,000 occupants seeing each other would be
        # 50 million presences, which no client wants either.
        muc_big) echo "${common[@]}" -n "$MUC_BIG_N" --senders "$MUC_SENDERS" --msg-rate "$MUC_BIG_RATE" \
            --duration "$MUC_BIG_SECS" --setup-timeout "$SETUP_TIMEOUT" --presence-broadcast moderator ;;
        muc_rooms) echo "${common[@]}" -n "$MUC_ROOMS_SESSIONS" --rooms "$MUC_ROOMS" ;;
        idle-*) echo "${common[@]}" -n "${1#idle-}" --hold "$HOLD" ;;
        idle) echo "${common[@]}" -n "$IDLE_N" --hold "$HOLD" ;;
        login) echo "${common[@]}" -n "$LOGIN_N" ;;
        chat) echo "${common[@]}" -n $((CHAT_PAIRS * 2)) --msg-rate "$CHAT_RATE" --duration "$CHAT_SECS" ;;
        presence) echo "${common[@]}" -n "$PRESENCE_N" --contacts "$PRESENCE_R" \
            --presence-rate "$PRESENCE_RATE" --duration "$PRESENCE_SECS" \
            --setup-timeout "$SETUP_TIMEOUT" ;;
    esac
}

# supports SERVER RUN: whether SERVER takes part in RUN (a server script may define
# SERVER_supports SCENARIO; the relay's accepts chat only). The 10,000-occupant room is
# xmppd's alone: the peers' configurations cap a room at 1,000 (ejabberd's max_users).
# Prints why not when SERVER does not take part.
supports() {
    if [ "${2%%-*}" = muc_big ] && [ "$1" != xmppd ]; then
        echo "the 10,000-occupant room is xmppd's alone (the peers cap a room at 1,000)"
        return 1
    fi
    if declare -F "${1}_supports" >/dev/null; then "${1}_supports" "${2%%-*}"; else true; fi
}

# A result for a scenario that could not run at all (the server did not start, say).
failed_result() {
    printf '{"label":"%s","scenario":"%s","status":"failed","metrics":{},"errors":{"%s":{"count":1,"example":"%s"}},"errors_total":1}\n' \
        "$1" "$2" "$3" "$4" >"$WORK/results/$1-$2.json"
}

# s2s_stop SERVER: stops both instances of a federated pair (each by its PID).
s2s_stop() {
    local side
    for side in 0 1; do
        [ -s "$WORK/s2s-$side.state" ] || continue
        load_state "$WORK/s2s-$side.state"
        "${1}_stop" || true
        save_state "$WORK/s2s-$side.state"
    done
    S2S_ACTIVE=""
}

# s2s_run SERVER: sets up two instances of SERVER, one per domain, each routing the other's
# domain to its s2s port and trusting the test CA; starts both, runs the s2s scenario, stops
# both. The single-server instance's state is kept aside meanwhile.
s2s_run() {
    local server=$1 side other rc=0 ports addrs=() pids=() s2s_ports=()
    ports=("$("$BENCH" free-port)" "$("$BENCH" free-port)")
    [ -s "$S2S_CERTS/ca.crt" ] || make_s2s_certs "$S2S_CERTS" "${S2S_DOMAINS[@]}"
    save_state "$WORK/main.state"
    for side in 0 1; do
        other=$((1 - side))
        BENCH_DOMAIN=${S2S_DOMAINS[side]} BENCH_IP=${S2S_IPS[side]}
        CERT=$S2S_CERTS/$BENCH_DOMAIN.crt KEY=$S2S_CERTS/$BENCH_DOMAIN.key
        CERTFILE=$S2S_CERTS/$BENCH_DOMAIN.pem S2S_CA=$S2S_CERTS/ca.crt S2S_PORT=${ports[side]}
        PEER_DOMAIN=${S2S_DOMAINS[other]} PEER_IP=${S2S_IPS[other]} PEER_S2S_PORT=${ports[other]}
        SERVER_PID=""
        log "$server: s2s: setting up $BENCH_DOMAIN on $BENCH_IP with $S2S_PAIRS accounts"
        if ! "${server}_setup" "$WORK/$server-s2s-$side" "$S2S_PAIRS"; then
            log "$server: s2s: setup of $BENCH_DOMAIN failed"
            failed_result "$server" s2s setup "setup of $BENCH_DOMAIN failed"
            load_state "$WORK/main.state"
            return 1
        fi
        save_state "$WORK/s2s-$side.state"
    done
    S2S_ACTIVE=$server
    for side in 0 1; do
        load_state "$WORK/s2s-$side.state"
        "${server}_start" || rc=1
        save_state "$WORK/s2s-$side.state"
        addrs+=("$BENCH_IP:$SERVER_PORT") pids+=("$SERVER_PID") s2s_ports+=("$S2S_PORT")
        [ $rc = 0 ] || break
    done
    if [ $rc != 0 ]; then
        failed_result "$server" s2s start "the server for $BENCH_DOMAIN did not start"
    else
        wait_quiet "${pids[0]}" 30
        wait_quiet "${pids[1]}" 30
        wait_machine_quiet "$QUIET_WAIT"
        log "$server: s2s (PIDs ${pids[*]}, ${addrs[*]})"
        "$BENCH" run --label "$server" --scenario s2s --name s2s \
            --addr "${addrs[0]}" --domain "${S2S_DOMAINS[0]}" --server-pid "${pids[0]}" \
            --peer-addr "${addrs[1]}" --peer-domain "${S2S_DOMAINS[1]}" --peer-pid "${pids[1]}" \
            --s2s-ports "${s2s_ports[0]},${s2s_ports[1]}" -n $((S2S_PAIRS * 2)) \
            --msg-rate "$S2S_RATE" --duration "$S2S_SECS" --rate "$RATE" \
            --max-inflight "$INFLIGHT" --timeout "$TIMEOUT" --password "$PASSWORD" \
            --user-prefix bench --out "$WORK/results/$server-s2s.json" || rc=1
    fi
    s2s_stop "$server"
    load_state "$WORK/main.state"
    return $rc
}

failures=0
meta=(--meta "date=$(date -u +%Y-%m-%dT%H:%MZ)")
meta+=(--meta "sizes=idle $IDLE_N, login $LOGIN_N, chat $CHAT_PAIRS pairs at $CHAT_RATE msg/s for $CHAT_SECS s, presence $PRESENCE_N accounts with $PRESENCE_R contacts at $PRESENCE_RATE changes/s for $PRESENCE_SECS s, idle_ws/idle_bosh $WEB_IDLE_N, chat_ws $CHAT_WS_PAIRS pairs, pep $PEP_N accounts with $PEP_R contacts at $PEP_RATE publishes/s for $PEP_SECS s, muc_join $MUC_JOIN_N occupants at $MUC_JOIN_RATE joins/s (0: all at once), muc $MUC_N occupants with $MUC_SENDERS senders at $MUC_RATE msg/s for $MUC_SECS s, muc_big $MUC_BIG_N occupants (only the owner's presence broadcast) at $MUC_BIG_RATE msg/s for $MUC_BIG_SECS s, muc_rooms $MUC_ROOMS persistent rooms by $MUC_ROOMS_SESSIONS sessions, s2s $S2S_PAIRS pairs across two federated servers at $S2S_RATE msg/s for $S2S_SECS s; logins at $RATE/s, at most $INFLIGHT at once")
for server in $SERVERS; do
    server_runs=()
    for run in $(for s in $SCENARIOS; do runs_of "$s"; done); do
        if why=$(supports "$server" "$run"); then
            server_runs+=("$run")
        else
            log "$server: skipping $run: ${why:-$server does not run this scenario}"
        fi
    done
    [ ${#server_runs[@]} -gt 0 ] || continue
    # The single-server instance, unless s2s (which sets up its own two) is all there is.
    if [ "${server_runs[*]}" != s2s ]; then
        server_accounts=$(accounts_for "$server")
        log "$server: setting up $server_accounts accounts"
        started=$SECONDS
        if ! "${server}_setup" "$WORK/$server" "$server_accounts"; then
            log "$server: setup failed"
            for run in "${server_runs[@]}"; do failed_result "$server" "$run" setup "setup failed"; done
            failures=$((failures + 1))
            continue
        fi
        log "$server: setup took $((SECONDS - started)) s"
    fi
    meta+=(--meta "$server=$("${server}_version")")
    for run in "${server_runs[@]}"; do
        if [ "$run" = s2s ]; then
            s2s_run "$server" || failures=$((failures + 1))
            continue
        fi
        # A fresh process per run: memory and CPU start from the same point everywhere.
        CURRENT=$server
        if ! "${server}_start"; then
            failed_result "$server" "$run" start "the server did not start"
            failures=$((failures + 1))
            "${server}_stop" || true
            CURRENT=""
            continue
        fi
        wait_quiet "$SERVER_PID" 30
        wait_machine_quiet "$QUIET_WAIT"
        log "$server: $run (PID $SERVER_PID, port $SERVER_PORT)"
        # shellcheck disable=SC2046
        if ! "$BENCH" run --label "$server" --server-pid "$SERVER_PID" \
            --addr "127.0.0.1:$SERVER_PORT" $(scenario_args "$run") \
            --out "$WORK/results/$server-$run.json"; then
            failures=$((failures + 1))
        fi
        "${server}_stop"
        CURRENT=""
    done
done

# A full run of some scenarios keeps the other scenarios' sections of the previous results.
keep=()
[ "$SMOKE" = 1 ] || keep=(--keep "$OUT/latest.json")
"$BENCH" summarize --ours xmppd --servers "${SERVERS// /,}" "${meta[@]}" "${keep[@]}" \
    --markdown "$OUT/latest.md" --json "$OUT/latest.json" "$WORK"/results/*.json
log "results: $OUT/latest.md and $OUT/latest.json"
if [ "$SMOKE" = 1 ]; then
    cat "$OUT/latest.md"
    # The smoke run checks that every scenario still completes; it asserts no timing.
    if [ "$failures" -gt 0 ]; then
        log "$failures scenario(s) failed"
        exit 1
    fi
fi
