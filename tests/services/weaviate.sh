#!/usr/bin/env bash
# Single-node Weaviate (vector database) on loopback, for tests and CI. No docker: the server is
# built from source with the Go toolchain, modules come through the Go module proxy.
#
#   tests/services/weaviate.sh install   build weaviate-server into the cache (once; a cold build
#                                        takes ~5-6 min on 2 cores and runs under `nice`)
#   tests/services/weaviate.sh up        install if needed, start with a fresh data dir, wait for
#                                        /v1/.well-known/ready (~2.5 s); prints on stdout
#                                          WEAVIATE_URL=http://127.0.0.1:<port>
#                                          WEAVIATE_GRPC_PORT=<grpc port>
#   tests/services/weaviate.sh down      stop the server (SIGTERM, then SIGKILL), remove its data dir
#   tests/services/weaviate.sh status    exit 0 if running and ready, 1 if alive but not ready,
#                                        3 if not running
#
# Build: `go install github.com/weaviate/weaviate/cmd/weaviate-server@<tag>` with GOBIN in a temp
# dir under the cache, moved to $AGENTSTREAM_CACHE/weaviate-<tag>/bin once it succeeded. GOMODCACHE
# and GOCACHE stay at Go's defaults, so a rebuild (another tag) is incremental. CGO is off by
# default (no C toolchain needed; weaviate itself has no cgo code). Every tag needs the Go version
# of its go.mod `go` line: v1.37+ need Go 1.26, v1.36.x Go 1.25.
#
# Python clients: weaviate-client v4 talks REST for schema and gRPC for data and queries, so
# both ports are needed: weaviate.connect_to_local(host="127.0.0.1", port=<port>, grpc_port=<grpc>).
#
# Environment (all optional):
#   WEAVIATE_VERSION        one exact tag (e.g. v1.39.3); default: first of
#                           $WEAVIATE_CANDIDATE_VERSIONS that is cached, else the first that builds
#   WEAVIATE_PORT           REST port (default 18080), bound to 127.0.0.1
#   WEAVIATE_GRPC_PORT      public gRPC port (default 18051)
#   WEAVIATE_GOSSIP_PORT    memberlist gossip port (default 18946), bound to 127.0.0.1
#   WEAVIATE_DATA_PORT      internal cluster data port (default 18947)
#   WEAVIATE_RAFT_PORT      raft port (default 18300), bound to 127.0.0.1; the raft internal RPC
#                           port is WEAVIATE_RAFT_PORT+1 (with CLUSTER_IN_LOCALHOST weaviate
#                           derives the RPC address as raft port + 1)
#   WEAVIATE_RAFT_TIMEOUTS_MULTIPLIER  RAFT_TIMEOUTS_MULTIPLIER (default 1: weaviate's default 5 makes
#                           the single node wait ~5 s for its first raft election; 1 cuts start-up
#                           to ~2 s and is safe with one voter on loopback)
#   WEAVIATE_QUERY_LIMIT    QUERY_DEFAULTS_LIMIT (default 25)
#   WEAVIATE_LOG_LEVEL      LOG_LEVEL (default info)
#   WEAVIATE_GOMAXPROCS     GOMAXPROCS for the server (default 2)
#   WEAVIATE_EXTRA_ENV      extra NAME=value lines (newline-separated) added to the server's env
#   WEAVIATE_KEEP_DATA      1: `up` reuses and `down` keeps the data dir (default: fresh each time)
#   WEAVIATE_START_TIMEOUT  seconds `up` waits for readiness (default 120)
#   WEAVIATE_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 30)
#   WEAVIATE_BUILD_NICE     nice level of the build (default 10)
#   WEAVIATE_CGO_ENABLED    CGO_ENABLED for the build (default 0)
#   AGENTSTREAM_CACHE       default ~/.cache/agentstream
#   AGENTSTREAM_RUN         default /tmp/agentstream-services; this service uses <it>/weaviate
#
# Listeners: REST, gossip, raft and raft RPC bind 127.0.0.1. Weaviate (up to at least v1.39)
# binds the public gRPC port and the internal data port on all interfaces with no setting to
# change that; the Go profiling listener (:6060) is switched off with GO_PROFILING_DISABLE.
#
# Files in the run dir: data/, weaviate.log (server stdout/stderr, JSON lines), weaviate.pid,
# weaviate.version, weaviate.env (the ports of the running server).
set -euo pipefail

# v1.39.3 is the newest tag whose whole module graph the Go module proxy reachable here serves:
# v1.39.4..v1.39.7 differ from it only in github.com/weaviate/sroar (v0.0.17/v0.0.18), whose
# zips the proxy answers with "403 This module version is not available". v1.36.14 is the
# fallback for a Go 1.25 toolchain.
WEAVIATE_CANDIDATE_VERSIONS="${WEAVIATE_CANDIDATE_VERSIONS:-v1.39.3 v1.36.14}"
WEAVIATE_PORT="${WEAVIATE_PORT:-18080}"
WEAVIATE_GRPC_PORT="${WEAVIATE_GRPC_PORT:-18051}"
WEAVIATE_GOSSIP_PORT="${WEAVIATE_GOSSIP_PORT:-18946}"
WEAVIATE_DATA_PORT="${WEAVIATE_DATA_PORT:-18947}"
WEAVIATE_RAFT_PORT="${WEAVIATE_RAFT_PORT:-18300}"
WEAVIATE_RAFT_RPC_PORT=$((WEAVIATE_RAFT_PORT + 1))
WEAVIATE_RAFT_TIMEOUTS_MULTIPLIER="${WEAVIATE_RAFT_TIMEOUTS_MULTIPLIER:-1}"
WEAVIATE_QUERY_LIMIT="${WEAVIATE_QUERY_LIMIT:-25}"
WEAVIATE_LOG_LEVEL="${WEAVIATE_LOG_LEVEL:-info}"
WEAVIATE_GOMAXPROCS="${WEAVIATE_GOMAXPROCS:-2}"
WEAVIATE_EXTRA_ENV="${WEAVIATE_EXTRA_ENV:-}"
WEAVIATE_KEEP_DATA="${WEAVIATE_KEEP_DATA:-0}"
WEAVIATE_START_TIMEOUT="${WEAVIATE_START_TIMEOUT:-120}"
WEAVIATE_STOP_TIMEOUT="${WEAVIATE_STOP_TIMEOUT:-30}"
WEAVIATE_BUILD_NICE="${WEAVIATE_BUILD_NICE:-10}"
WEAVIATE_CGO_ENABLED="${WEAVIATE_CGO_ENABLED:-0}"
CACHE="${AGENTSTREAM_CACHE:-$HOME/.cache/agentstream}"
RUN_DIR="${AGENTSTREAM_RUN:-/tmp/agentstream-services}/weaviate"
HOST="127.0.0.1"
MODULE="github.com/weaviate/weaviate"
NODE_NAME="node1"

PID_FILE="$RUN_DIR/weaviate.pid"
DATA_DIR="$RUN_DIR/data"
SERVER_LOG="$RUN_DIR/weaviate.log"
STATE_FILE="$RUN_DIR/weaviate.env"

SERVICE=weaviate
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

weaviate_home() { printf '%s/weaviate-%s' "$CACHE" "$1"; }
weaviate_bin() { printf '%s/bin/weaviate-server' "$(weaviate_home "$1")"; }
is_installed() { [[ -f "$(weaviate_home "$1")/.complete" && -x "$(weaviate_bin "$1")" ]]; }

# Does the local toolchain satisfy <tag>'s go.mod `go` line? (Unknown: assume yes, let go decide.)
go_satisfies() {
    local tag="$1" need have
    need="$(go list -m -f '{{.GoVersion}}' "$MODULE@$tag" 2>/dev/null || true)"
    have="$(go env GOVERSION 2>/dev/null || true)"
    have="${have#go}"
    have="${have%%[!0-9.]*}"
    [[ -n "$need" && -n "$have" ]] || return 0
    if [[ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n 1)" == "$need" ]]; then
        return 0
    fi
    if [[ "$(go env GOTOOLCHAIN 2>/dev/null)" != local* ]]; then
        log "$tag needs Go $need (have $have); GOTOOLCHAIN=$(go env GOTOOLCHAIN) may fetch it"
        return 0
    fi
    log "skipping $tag: its go.mod needs Go $need, the local toolchain is $have (GOTOOLCHAIN=local)"
    return 1
}

# Build one tag into a temp dir and move it into place; non-zero if it does not build.
build_version() {
    local tag="$1" home tmp t0 secs
    home="$(weaviate_home "$tag")"
    go_satisfies "$tag" || return 1
    mkdir -p "$CACHE"
    tmp="$(mktemp -d "$CACHE/.weaviate-$tag.XXXXXX")"
    t0="$(date +%s)"
    log "building $MODULE/cmd/weaviate-server@$tag (nice $WEAVIATE_BUILD_NICE, CGO_ENABLED=$WEAVIATE_CGO_ENABLED);"
    log "a cold build downloads over 1 GB of modules and compiles for several minutes; log: $tmp/build.log"
    if ! GOBIN="$tmp/bin" CGO_ENABLED="$WEAVIATE_CGO_ENABLED" nice -n "$WEAVIATE_BUILD_NICE" \
        go install -trimpath -ldflags "-s -w" "$MODULE/cmd/weaviate-server@$tag" \
        >"$tmp/build.log" 2>&1 || [[ ! -x "$tmp/bin/weaviate-server" ]]; then
        log "$tag did not build; go said:"
        tail -n 30 "$tmp/build.log" >&2 || true
        rm -rf "$tmp"
        return 1
    fi
    secs=$(($(date +%s) - t0))
    rm -f "$tmp/build.log"
    printf 'tag=%s\ngo=%s\ncgo=%s\nbuild_seconds=%s\n' "$tag" "$(go env GOVERSION)" \
        "$WEAVIATE_CGO_ENABLED" "$secs" >"$tmp/.complete"
    rm -rf "$home"
    mv "$tmp" "$home"
    log "built weaviate-server $tag in ${secs}s ($(du -h "$(weaviate_bin "$tag")" | cut -f1)): $(weaviate_bin "$tag")"
}

# Prints the tag to use, building it if needed.
ensure_installed() {
    local v lock_fd
    if [[ -n "${WEAVIATE_VERSION:-}" ]]; then
        is_installed "$WEAVIATE_VERSION" && { echo "$WEAVIATE_VERSION"; return; }
    else
        for v in $WEAVIATE_CANDIDATE_VERSIONS; do
            is_installed "$v" && { echo "$v"; return; }
        done
    fi
    command -v go >/dev/null || die "go not found (needed once to build weaviate-server)"
    mkdir -p "$CACHE"
    # Serialise concurrent installs (two CI steps, two shells).
    if command -v flock >/dev/null; then
        exec {lock_fd}>"$CACHE/.weaviate-install.lock"
        flock "$lock_fd"
    fi
    if [[ -n "${WEAVIATE_VERSION:-}" ]]; then
        is_installed "$WEAVIATE_VERSION" || build_version "$WEAVIATE_VERSION" \
            || die "weaviate $WEAVIATE_VERSION could not be built"
        echo "$WEAVIATE_VERSION"
        return
    fi
    for v in $WEAVIATE_CANDIDATE_VERSIONS; do
        if is_installed "$v" || build_version "$v"; then
            echo "$v"
            return
        fi
    done
    die "none of these weaviate tags built: $WEAVIATE_CANDIDATE_VERSIONS"
}

# ---------------------------------------------------------------------------------------------
# process helpers
# ---------------------------------------------------------------------------------------------

# Is <pid> a live weaviate-server started by this script with this run dir? (A zombie has no
# cmdline; the data path is only in the environment, which we can read for our own processes.)
is_our_server() {
    local pid="$1" cmd
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
    [[ "$cmd" == *"/weaviate-server --host $HOST "* ]] || return 1
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "PERSISTENCE_DATA_PATH=$DATA_DIR"
}

# Is <pid> alive and not a zombie? (Used while starting: during the setsid/nohup/env exec chain
# the process does not yet have the server's environment.)
# Pid of our server: from the pid file, else by its data path in /proc.
server_pid() { find_pid "$PID_FILE" is_our_server; }

# GET <path> on <port>; succeeds on HTTP 2xx.
http_ok() { # <port> <path>
    if command -v curl >/dev/null; then
        curl -fsS -m 3 -o /dev/null "http://$HOST:$1$2" 2>/dev/null
    else
        local status
        status="$(timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$1 \
            && printf 'GET $2 HTTP/1.0\r\nHost: $HOST:$1\r\n\r\n' >&3 && head -n 1 <&3" 2>/dev/null)" \
            || return 1
        [[ "$status" =~ ^HTTP/[0-9.]+\ 2[0-9][0-9] ]]
    fi
}

server_ready() { http_ok "${1:-$WEAVIATE_PORT}" /v1/.well-known/ready; }

# Value of NAME in the state file of the running server.
state_get() { # <name>
    local line
    line="$(grep -m 1 "^$1=" "$STATE_FILE" 2>/dev/null || true)"
    echo "${line#*=}"
}

print_endpoints() { # <rest port> <grpc port>
    echo "WEAVIATE_URL=http://$HOST:$1"
    echo "WEAVIATE_GRPC_PORT=$2"
}

# WEAVIATE_EXTRA_ENV as NAME=value words (one per non-empty line) in the array EXTRA_ENV.
EXTRA_ENV=()
parse_extra_env() {
    local line
    EXTRA_ENV=()
    while IFS= read -r line; do
        [[ -z "$line" ]] && continue
        [[ "$line" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "WEAVIATE_EXTRA_ENV: not NAME=value: $line"
        EXTRA_ENV+=("$line")
    done <<<"$WEAVIATE_EXTRA_ENV"
}

launch_server() {
    local bin="$1" launcher=()
    # New session, so signals sent to a CI step's or a terminal's process group don't reach it.
    # The script runs without job control, so the child is no group leader and setsid execs in
    # place: $! is the server's own pid.
    if command -v setsid >/dev/null; then launcher=(setsid); fi
    # env -i: a clean, explicit environment (no inherited GOMEMLIMIT, proxies, cloud credentials
    # or Weaviate settings from the caller's shell).
    "${launcher[@]}" nohup env -i \
        PATH="/usr/local/bin:/usr/bin:/bin" HOME="$RUN_DIR" TMPDIR="$RUN_DIR/tmp" \
        AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED=true \
        AUTHORIZATION_ADMINLIST_ENABLED=false \
        PERSISTENCE_DATA_PATH="$DATA_DIR" \
        DEFAULT_VECTORIZER_MODULE=none \
        ENABLE_MODULES= \
        API_BASED_MODULES_DISABLED=true \
        CLUSTER_HOSTNAME="$NODE_NAME" \
        CLUSTER_IN_LOCALHOST=true \
        CLUSTER_BIND_ADDR="$HOST" \
        CLUSTER_ADVERTISE_ADDR="$HOST" \
        CLUSTER_GOSSIP_BIND_PORT="$WEAVIATE_GOSSIP_PORT" \
        CLUSTER_DATA_BIND_PORT="$WEAVIATE_DATA_PORT" \
        RAFT_JOIN="$NODE_NAME:$WEAVIATE_RAFT_PORT" \
        RAFT_BOOTSTRAP_EXPECT=1 \
        RAFT_PORT="$WEAVIATE_RAFT_PORT" \
        RAFT_INTERNAL_RPC_PORT="$WEAVIATE_RAFT_RPC_PORT" \
        RAFT_TIMEOUTS_MULTIPLIER="$WEAVIATE_RAFT_TIMEOUTS_MULTIPLIER" \
        GRPC_PORT="$WEAVIATE_GRPC_PORT" \
        DISABLE_TELEMETRY=true \
        LIMIT_RESOURCES=true \
        GOMAXPROCS="$WEAVIATE_GOMAXPROCS" \
        GO_PROFILING_DISABLE=true \
        QUERY_DEFAULTS_LIMIT="$WEAVIATE_QUERY_LIMIT" \
        PROMETHEUS_MONITORING_ENABLED=false \
        LOG_LEVEL="$WEAVIATE_LOG_LEVEL" \
        "${EXTRA_ENV[@]}" \
        "$bin" --host "$HOST" --port "$WEAVIATE_PORT" --scheme http \
        >"$SERVER_LOG" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
}

# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------

cmd_install() {
    local tag
    tag="$(ensure_installed)"
    log "weaviate $tag ready: $(weaviate_bin "$tag")"
}

cmd_up() {
    local tag bin pid start_ms elapsed_ms deadline port
    parse_extra_env
    if pid="$(server_pid)"; then
        if [[ "$(state_get WEAVIATE_PORT)" == "$WEAVIATE_PORT" \
            && "$(state_get WEAVIATE_GRPC_PORT)" == "$WEAVIATE_GRPC_PORT" ]] && server_ready; then
            log "already running (pid $pid) on $HOST:$WEAVIATE_PORT"
            print_endpoints "$WEAVIATE_PORT" "$WEAVIATE_GRPC_PORT"
            return 0
        fi
        log "a server (pid $pid) is running but not ready on these ports; restarting it"
        cmd_down
    fi
    rm -f "$PID_FILE" "$STATE_FILE"

    tag="$(ensure_installed)"
    bin="$(weaviate_bin "$tag")"

    for port in "$WEAVIATE_PORT" "$WEAVIATE_GRPC_PORT" "$WEAVIATE_GOSSIP_PORT" \
        "$WEAVIATE_DATA_PORT" "$WEAVIATE_RAFT_PORT" "$WEAVIATE_RAFT_RPC_PORT"; do
        port_open "$port" && die "port $HOST:$port is already in use by another process"
    done

    start_ms="$(date +%s%3N)"
    mkdir -p "$RUN_DIR"
    if [[ "$WEAVIATE_KEEP_DATA" != 1 ]]; then rm -rf "$DATA_DIR"; fi
    rm -rf "$RUN_DIR/tmp"
    mkdir -p "$DATA_DIR" "$RUN_DIR/tmp"
    rm -f "$SERVER_LOG"
    printf '%s\n' "$tag" >"$RUN_DIR/weaviate.version"

    log "starting weaviate $tag on $HOST:$WEAVIATE_PORT (gRPC $WEAVIATE_GRPC_PORT, data $DATA_DIR)"
    launch_server "$bin"
    pid="$(cat "$PID_FILE")"
    printf 'WEAVIATE_PORT=%s\nWEAVIATE_GRPC_PORT=%s\n' "$WEAVIATE_PORT" "$WEAVIATE_GRPC_PORT" >"$STATE_FILE"

    deadline=$(($(date +%s) + WEAVIATE_START_TIMEOUT))
    while :; do
        # (not `kill -0`: a server that died is our zombie child until this script exits)
        if ! pid_alive "$pid"; then
            rm -f "$PID_FILE" "$STATE_FILE"
            show_log_tail "$SERVER_LOG"
            die "weaviate process $pid exited during start-up"
        fi
        if server_ready; then break; fi
        if (($(date +%s) >= deadline)); then
            show_log_tail "$SERVER_LOG"
            log "not ready on $HOST:$WEAVIATE_PORT within ${WEAVIATE_START_TIMEOUT}s; stopping it"
            cmd_down >/dev/null 2>&1 || true
            die "weaviate start-up timed out"
        fi
        sleep 0.25
    done
    elapsed_ms=$(($(date +%s%3N) - start_ms))
    log "ready in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s (pid $pid); log: $SERVER_LOG"
    print_endpoints "$WEAVIATE_PORT" "$WEAVIATE_GRPC_PORT"
}

cmd_down() {
    local pid waited=0
    if ! pid="$(server_pid)"; then
        log "not running"
        rm -f "$PID_FILE" "$STATE_FILE"
        if [[ "$WEAVIATE_KEEP_DATA" != 1 ]]; then rm -rf "$DATA_DIR"; fi
        return 0
    fi
    log "stopping weaviate (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while is_our_server "$pid"; do
        if ((waited >= WEAVIATE_STOP_TIMEOUT * 2)); then
            log "still alive after ${WEAVIATE_STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    rm -f "$PID_FILE" "$STATE_FILE"
    if [[ "$WEAVIATE_KEEP_DATA" != 1 ]]; then rm -rf "$DATA_DIR"; fi
    log "stopped"
}

cmd_status() {
    local pid port grpc
    if ! pid="$(server_pid)"; then
        log "not running"
        return 3
    fi
    port="$(state_get WEAVIATE_PORT)"
    port="${port:-$WEAVIATE_PORT}"
    grpc="$(state_get WEAVIATE_GRPC_PORT)"
    grpc="${grpc:-$WEAVIATE_GRPC_PORT}"
    if server_ready "$port"; then
        log "running (pid $pid, weaviate $(cat "$RUN_DIR/weaviate.version" 2>/dev/null || echo '?')) on $HOST:$port"
        print_endpoints "$port" "$grpc"
        return 0
    fi
    log "process $pid alive but not ready on $HOST:$port"
    return 1
}

case "${1:-}" in
install) cmd_install ;;
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
    echo "usage: $0 {install|up|down|status}" >&2
    exit 2
    ;;
esac
