#!/usr/bin/env bash
# The local choreo stack, in the background: nats-server (JetStream, file
# storage) and whichever service binaries are built.
#
#   scripts/stack.sh up      start what is not running, wait until healthy, print addresses
#   scripts/stack.sh status  one line per component: name, pid, address, state, health
#   scripts/stack.sh down    SIGTERM everything, wait (10 s, then SIGKILL), remove pid files
#
# Everything listens on 127.0.0.1 only: this is a developer stack, not a
# deployment. Logs go to .run/<name>.log, pids to .run/<name>.pid, JetStream
# data to ${CHOREO_DATA_DIR:-.data}/nats. Ports, overridable by environment:
#   CHOREO_NATS_PORT (4222)  CHOREO_NATS_HTTP_PORT (8222, monitoring)
#   CHOREO_ORDERS_PORT (50051)  CHOREO_INVENTORY_PORT (50052)
#   CHOREO_PAYMENT_PORT (50053)  CHOREO_NOTIFICATIONS_PORT (50054)
# CHOREO_BUILD_DIR (build) says where the binaries are; CHOREO_STACK_WAIT_S
# (30) bounds each wait for health.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

HOST=127.0.0.1
BUILD_DIR=${CHOREO_BUILD_DIR:-build}
DATA_DIR=${CHOREO_DATA_DIR:-.data}
RUN_DIR=.run
NATS_PORT=${CHOREO_NATS_PORT:-4222}
NATS_HTTP_PORT=${CHOREO_NATS_HTTP_PORT:-8222}
WAIT_S=${CHOREO_STACK_WAIT_S:-30}
STOP_WAIT_S=10
SERVICES=(orders inventory payment notifications)

die() {
    echo "stack: $*" >&2
    exit 1
}

service_port() {
    case $1 in
    orders) echo "${CHOREO_ORDERS_PORT:-50051}" ;;
    inventory) echo "${CHOREO_INVENTORY_PORT:-50052}" ;;
    payment) echo "${CHOREO_PAYMENT_PORT:-50053}" ;;
    notifications) echo "${CHOREO_NOTIFICATIONS_PORT:-50054}" ;;
    *) die "unknown service $1" ;;
    esac
}

service_bin() {
    echo "$BUILD_DIR/services/$1/choreo-$1"
}

nats_bin() {
    if [ -n "${CHOREO_NATS_SERVER:-}" ]; then
        echo "$CHOREO_NATS_SERVER"
    elif command -v nats-server >/dev/null 2>&1; then
        command -v nats-server
    else
        echo /usr/sbin/nats-server # Debian puts it in sbin, often not on a user's PATH
    fi
}

# True while pid exists and is not a zombie (a zombie has exited already).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# The pid in .run/<name>.pid when that process is alive and is still the
# program we started (its command line names it); empty otherwise.
live_pid() {
    local name=$1 prog=$2 pidfile="$RUN_DIR/$1.pid" pid
    [ -f "$pidfile" ] || return 0
    pid=$(head -c 32 "$pidfile" | tr -dc 0-9)
    [ -n "$pid" ] || return 0
    alive "$pid" || return 0
    if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$prog"; then
        return 0 # the pid was reused by something else
    fi
    echo "$pid"
}

# True when something accepts TCP connections on HOST:port.
port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# True when GET http://HOST:port/path answers 200.
http_ok() {
    local port=$1 path=$2 status
    status=$({
        exec 3<>"/dev/tcp/$HOST/$port" || exit 1
        printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$HOST" >&3
        IFS= read -r -t 3 line <&3 || exit 1
        echo "$line"
    } 2>/dev/null) || return 1
    [[ $status == "HTTP/1."?" 200"* ]]
}

# Sets PY_GRPC to a python3 that has Debian's grpcio (python3-grpcio), or to
# "" when none does. Call outside $(...) so that the answer is kept.
PY_GRPC="?"
find_python_grpc() {
    [ "$PY_GRPC" = "?" ] || return 0
    PY_GRPC=""
    local p
    for p in /usr/bin/python3 python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import grpc' 2>/dev/null; then
            PY_GRPC=$p
            return 0
        fi
    done
}

# grpc.health.v1.Health/Check with an empty request (the whole server); the
# reply b'\x08\x01' is status SERVING. Prints the state, exits 0 only on SERVING.
HEALTH_PY='
import sys
import grpc
ch = grpc.insecure_channel(sys.argv[1])
check = ch.unary_unary("/grpc.health.v1.Health/Check")
try:
    reply = check(b"", timeout=2)
except grpc.RpcError as e:
    print(e.code().name)
    sys.exit(1)
finally:
    ch.close()
state = {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING", b"": "UNKNOWN"}.get(reply, "UNKNOWN")
print(state)
sys.exit(0 if state == "SERVING" else 1)
'

# Prints the health of the gRPC server at addr (SERVING, NOT_SERVING,
# UNAVAILABLE, ...); exits 0 only when SERVING. Uses the project CLI when it
# is built, else python3-grpcio, else only checks that the port accepts.
grpc_health() {
    local addr=$1 out rc
    if [ -x "$BUILD_DIR/tools/choreo/choreo" ]; then
        out=$("$BUILD_DIR/tools/choreo/choreo" health "$addr" 2>/dev/null) && rc=0 || rc=$?
        echo "${out:-UNAVAILABLE}" | tail -n 1
        return $rc
    fi
    find_python_grpc
    if [ -n "$PY_GRPC" ]; then
        out=$("$PY_GRPC" -c "$HEALTH_PY" "$addr" 2>/dev/null) && rc=0 || rc=$?
        echo "${out:-UNAVAILABLE}" | tail -n 1
        return $rc
    fi
    if port_open "${addr##*:}"; then
        echo "LISTENING (no health client: build tools/choreo or install python3-grpcio)"
        return 0
    fi
    echo "UNAVAILABLE"
    return 1
}

nats_health() {
    if http_ok "$NATS_HTTP_PORT" "/healthz?js-enabled-only=true"; then
        echo "ok (JetStream)"
        return 0
    fi
    echo "failing"
    return 1
}

show_log_tail() {
    echo "---- last lines of $RUN_DIR/$1.log ----" >&2
    tail -n 20 "$RUN_DIR/$1.log" >&2 || true
    echo "----" >&2
}

# Waits until `check...` succeeds, the process dies, or WAIT_S passes.
wait_healthy() {
    local name=$1 pid=$2
    shift 2
    local deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        if ! alive "$pid"; then
            echo "stack: $name exited during start-up" >&2
            show_log_tail "$name"
            rm -f "$RUN_DIR/$name.pid"
            return 1
        fi
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.3
    done
    echo "stack: $name (pid $pid) not healthy after ${WAIT_S}s; it is left running (make down stops it)" >&2
    show_log_tail "$name"
    return 1
}

# Starts a program in the background with its output in .run/<name>.log and
# its pid in .run/<name>.pid; prints the pid.
spawn() {
    local name=$1
    shift
    {
        echo "==== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting: $*"
    } >>"$RUN_DIR/$name.log"
    nohup "$@" >>"$RUN_DIR/$name.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$RUN_DIR/$name.pid"
    echo "$pid"
}

up_nats() {
    local bin pid
    bin=$(nats_bin)
    pid=$(live_pid nats nats-server)
    if [ -n "$pid" ]; then
        echo "nats: already running (pid $pid)"
        return 0
    fi
    [ -x "$bin" ] || die "nats-server not found (looked for $bin); run: make deps"
    if port_open "$NATS_PORT"; then
        die "nats: port $HOST:$NATS_PORT is taken by another process; stop it or set CHOREO_NATS_PORT"
    fi
    if port_open "$NATS_HTTP_PORT"; then
        die "nats: monitoring port $HOST:$NATS_HTTP_PORT is taken; stop it or set CHOREO_NATS_HTTP_PORT"
    fi
    mkdir -p "$DATA_DIR/nats"
    pid=$(spawn nats "$bin" --jetstream --store_dir "$DATA_DIR/nats" --addr "$HOST" --port "$NATS_PORT" \
        --http_port "$NATS_HTTP_PORT" --server_name choreo-local)
    echo "nats: started (pid $pid), waiting for JetStream"
    wait_healthy nats "$pid" http_ok "$NATS_HTTP_PORT" "/healthz?js-enabled-only=true" || exit 1
}

# Returns 0 when started (or already running) and healthy, 2 when not built,
# 1 on failure.
up_service() {
    local svc=$1 bin port pid
    bin=$(service_bin "$svc")
    port=$(service_port "$svc")
    if [ ! -x "$bin" ]; then
        echo "$svc: not built ($bin missing), skipped"
        return 2
    fi
    pid=$(live_pid "$svc" "choreo-$svc")
    if [ -n "$pid" ]; then
        echo "$svc: already running (pid $pid)"
        return 0
    fi
    if port_open "$port"; then
        echo "stack: $svc: port $HOST:$port is taken by another process; stop it or set CHOREO_${svc^^}_PORT" >&2
        return 1
    fi
    pid=$(CHOREO_LISTEN_ADDR="$HOST:$port" CHOREO_NATS_URL="nats://$HOST:$NATS_PORT" spawn "$svc" "$bin")
    echo "$svc: started (pid $pid), waiting for SERVING"
    wait_healthy "$svc" "$pid" grpc_health "$HOST:$port"
}

cmd_up() {
    local svc rc failed=0
    local -a started=()
    mkdir -p "$RUN_DIR"
    find_python_grpc
    up_nats
    for svc in "${SERVICES[@]}"; do
        up_service "$svc" && rc=0 || rc=$?
        case $rc in
        0) started+=("$svc") ;;
        2) ;;
        *) failed=1 ;;
        esac
    done
    echo
    echo "choreo local stack (127.0.0.1 only):"
    printf '  %-14s nats://%s:%s   monitoring http://%s:%s\n' nats "$HOST" "$NATS_PORT" "$HOST" "$NATS_HTTP_PORT"
    for svc in "${started[@]}"; do
        printf '  %-14s %s:%s   (gRPC, plaintext)\n' "$svc" "$HOST" "$(service_port "$svc")"
    done
    echo "logs in $RUN_DIR/, data in $DATA_DIR/; stop with: make down"
    if ((failed)); then
        echo "stack: some components did not start (see above)" >&2
    fi
    return $failed
}

cmd_status() {
    local svc pid state health addr
    find_python_grpc
    printf '%-14s %-8s %-24s %-8s %s\n' NAME PID ADDRESS STATE HEALTH
    pid=$(live_pid nats nats-server)
    if [ -n "$pid" ]; then
        state=running
        health=$(nats_health || true)
    else
        state=stopped pid=- health=-
    fi
    printf '%-14s %-8s %-24s %-8s %s\n' nats "$pid" "$HOST:$NATS_PORT" "$state" "$health"
    for svc in "${SERVICES[@]}"; do
        addr="$HOST:$(service_port "$svc")"
        pid=$(live_pid "$svc" "choreo-$svc")
        if [ -n "$pid" ]; then
            state=running
            health=$(grpc_health "$addr" || true)
        else
            state=stopped pid=- health=-
            [ -x "$(service_bin "$svc")" ] || health="(not built)"
        fi
        printf '%-14s %-8s %-24s %-8s %s\n' "$svc" "$pid" "$addr" "$state" "$health"
    done
}

# SIGTERM, wait up to STOP_WAIT_S, then SIGKILL with a warning.
stop_one() {
    local name=$1 prog=$2 pid i
    pid=$(live_pid "$name" "$prog")
    if [ -z "$pid" ]; then
        rm -f "$RUN_DIR/$name.pid"
        echo "$name: not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_WAIT_S * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        echo "stack: warning: $name (pid $pid) ignored SIGTERM for ${STOP_WAIT_S}s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
    fi
    if alive "$pid"; then
        echo "stack: $name (pid $pid) is still alive" >&2
        return 1
    fi
    rm -f "$RUN_DIR/$name.pid"
    echo "$name: stopped (pid $pid)"
}

cmd_down() {
    local i failed=0
    # Services first, NATS last, so that services can drain with their bus up.
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        stop_one "${SERVICES[i]}" "choreo-${SERVICES[i]}" || failed=1
    done
    stop_one nats nats-server || failed=1
    return $failed
}

case ${1:-} in
up) cmd_up ;;
status) cmd_status ;;
down) cmd_down ;;
*)
    echo "usage: $0 up|status|down" >&2
    exit 2
    ;;
esac
