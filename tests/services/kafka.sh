#!/usr/bin/env bash
# Single-node Apache Kafka 4.x (KRaft, combined broker+controller) on loopback, for tests and CI.
#
#   tests/services/kafka.sh install   resolve Kafka + runtime jars with Maven into the cache (once)
#   tests/services/kafka.sh up        install if needed, format a fresh data dir, start, wait ready;
#                                     prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port> on stdout
#   tests/services/kafka.sh down      stop the broker (SIGTERM, then SIGKILL), remove its data dir
#   tests/services/kafka.sh status    exit 0 if running and answering, 1 if alive but not
#                                     answering, 3 if not running
#
# No docker, no tarball download: `org.apache.kafka:kafka_2.13` and its runtime dependencies come
# from the Maven repository mvn is configured for (`mvn dependency:copy-dependencies` on a small
# generated pom), plus the slf4j -> log4j2 binding that the Kafka distribution ships in libs/ but
# that the kafka_2.13 pom does not pull in (without it the broker logs nothing). The jars land in
# $AGENTSTREAM_CACHE/kafka-<version>/lib; a complete cache is reused without calling mvn.
#
# Environment (all optional):
#   KAFKA_VERSION           one exact version; default: first of $KAFKA_CANDIDATE_VERSIONS that is
#                           cached, else the first that resolves
#   KAFKA_PORT              broker listener port (default 19092), bound to 127.0.0.1
#   KAFKA_CONTROLLER_PORT   KRaft controller port (default 19093), bound to 127.0.0.1
#   KAFKA_HEAP_OPTS         default "-Xms128m -Xmx512m"
#   KAFKA_JIT_OPTS          default "-XX:TieredStopAtLevel=1" (fast start); "" for full C2
#   KAFKA_JVM_OPTS          extra JVM options appended to the defaults
#   KAFKA_LOG_LEVEL         root log level (default INFO; noisy loggers stay at WARN)
#   KAFKA_EXTRA_PROPERTIES  extra server.properties lines (newline-separated), appended last
#   KAFKA_START_TIMEOUT     seconds to wait for the broker (default 90)
#   KAFKA_STOP_TIMEOUT      seconds to wait after SIGTERM before SIGKILL (default 30)
#   AGENTSTREAM_CACHE       default ~/.cache/agentstream
#   AGENTSTREAM_RUN         default /tmp/agentstream-services; this service uses <it>/kafka
#
# Files in the run dir: server.properties, log4j2.properties, data/, server.log (log4j2),
# kafka.out (JVM stdout/stderr), kafka.pid, kafka.version.
set -euo pipefail

KAFKA_CANDIDATE_VERSIONS="${KAFKA_CANDIDATE_VERSIONS:-4.4.0 4.3.0 4.2.0 4.1.1 4.1.0 4.0.1 4.0.0}"
KAFKA_LOG4J_VERSION="${KAFKA_LOG4J_VERSION:-2.24.3}" # only if Kafka's own deps have no log4j
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
KAFKA_LOG_LEVEL="${KAFKA_LOG_LEVEL:-INFO}"
KAFKA_EXTRA_PROPERTIES="${KAFKA_EXTRA_PROPERTIES:-}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
CACHE="${AGENTSTREAM_CACHE:-${HOME:-/root}/.cache/agentstream}"
RUN_DIR="${AGENTSTREAM_RUN:-/tmp/agentstream-services}/kafka"
HOST="127.0.0.1"

PID_FILE="$RUN_DIR/kafka.pid"
PROPS="$RUN_DIR/server.properties"
LOG4J_CONF="$RUN_DIR/log4j2.properties"
DATA_DIR="$RUN_DIR/data"
SERVER_LOG="$RUN_DIR/server.log"
JVM_OUT="$RUN_DIR/kafka.out"

# Client-compiler only: the broker answers in about half the time (and the JIT competes less with
# the tests for 2 cores); set KAFKA_JIT_OPTS="" for full C2 peak performance (benchmarks).
KAFKA_JIT_OPTS="${KAFKA_JIT_OPTS--XX:TieredStopAtLevel=1}"
# Small, deterministic JVM for a 2-core box (GC flags as in Kafka's kafka-run-class.sh).
JVM_BASE_OPTS="-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
-XX:+ExplicitGCInvokesConcurrent -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1 \
-XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true"

SERVICE=kafka
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

kafka_home() { printf '%s/kafka-%s' "$CACHE" "$1"; }
is_installed() { [[ -f "$(kafka_home "$1")/.complete" ]]; }

write_pom() { # <file> <dependencies-xml>
    cat >"$1" <<EOF
<project>
  <modelVersion>4.0.0</modelVersion>
  <groupId>agentstream.services</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
$2
  </dependencies>
</project>
EOF
}

mvn_copy() { # <pom> <outdir> <logfile>
    mvn -B -q -f "$1" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$2" >"$3" 2>&1
}

jar_version() { # <lib> <artifact>: version of lib/<artifact>-<version>.jar, or nothing
    local jars=("$1/$2"-[0-9]*.jar) name
    [[ -f "${jars[0]}" ]] || return 0
    name="$(basename "${jars[0]}" .jar)"
    echo "${name#"$2"-}"
}

# Resolve one version into a temp dir and move it into place; returns non-zero if it won't resolve.
resolve_version() {
    local version="$1" home tmp lib log4j slf4j binding deps jar
    home="$(kafka_home "$version")"
    mkdir -p "$CACHE"
    tmp="$(mktemp -d "$CACHE/.kafka-$version.XXXXXX")"
    lib="$tmp/lib"
    log "resolving org.apache.kafka:kafka_2.13:$version and its runtime dependencies with mvn"
    write_pom "$tmp/pom.xml" "    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version>
    </dependency>"
    if ! mvn_copy "$tmp/pom.xml" "$lib" "$tmp/mvn.log" || [[ ! -f "$lib/kafka_2.13-$version.jar" ]]; then
        log "kafka_2.13:$version did not resolve; mvn said:"
        tail -n 15 "$tmp/mvn.log" >&2 || true
        rm -rf "$tmp"
        return 1
    fi

    # The distribution's libs/ also has log4j2 and the slf4j -> log4j2 binding; the kafka_2.13 pom
    # brings log4j-api/core in 4.4 but not in 4.0. Use the log4j version Kafka resolved (else
    # $KAFKA_LOG4J_VERSION) and the binding that matches the slf4j-api major, no transitive deps.
    log4j="$(jar_version "$lib" log4j-core)"
    log4j="${log4j:-$(jar_version "$lib" log4j-api)}"
    log4j="${log4j:-$KAFKA_LOG4J_VERSION}"
    slf4j="$(jar_version "$lib" slf4j-api)"
    [[ -n "$slf4j" ]] || { rm -rf "$tmp"; die "no slf4j-api among Kafka's dependencies"; }
    if [[ "$slf4j" == 1.* ]]; then binding="log4j-slf4j-impl"; else binding="log4j-slf4j2-impl"; fi
    log "adding log4j-api, log4j-core and $binding $log4j (slf4j-api $slf4j)"
    rm -f "$lib"/log4j-api-*.jar "$lib"/log4j-core-*.jar
    deps=""
    for jar in log4j-api log4j-core "$binding"; do
        deps+="    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>$jar</artifactId><version>$log4j</version>
      <exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions>
    </dependency>
"
    done
    write_pom "$tmp/logging.xml" "$deps"
    if ! mvn_copy "$tmp/logging.xml" "$lib" "$tmp/mvn-logging.log"; then
        tail -n 15 "$tmp/mvn-logging.log" >&2 || true
        rm -rf "$tmp"
        die "could not resolve log4j $log4j ($binding)"
    fi

    for jar in kafka_2.13 kafka-clients kafka-server kafka-server-common kafka-metadata kafka-raft \
        kafka-storage kafka-group-coordinator kafka-transaction-coordinator; do
        [[ -f "$lib/$jar-$version.jar" ]] || { rm -rf "$tmp"; die "missing $jar-$version.jar after resolve"; }
    done
    for jar in log4j-api log4j-core "$binding" scala-library; do
        compgen -G "$lib/$jar-*.jar" >/dev/null || { rm -rf "$tmp"; die "missing $jar after resolve"; }
    done

    rm -f "$tmp"/*.xml "$tmp"/mvn*.log
    printf '%s\n' "$version" >"$tmp/.complete"
    rm -rf "$home"
    mv "$tmp" "$home"
    local jars=("$home"/lib/*.jar)
    log "installed Kafka $version: ${#jars[@]} jars in $home/lib"
}

# Prints the version to use, installing it if needed.
ensure_installed() {
    local v lock_fd
    if [[ -n "${KAFKA_VERSION:-}" ]]; then
        is_installed "$KAFKA_VERSION" && { echo "$KAFKA_VERSION"; return; }
    else
        for v in $KAFKA_CANDIDATE_VERSIONS; do
            is_installed "$v" && { echo "$v"; return; }
        done
    fi
    command -v mvn >/dev/null || die "mvn not found (needed once to resolve Kafka's jars)"
    mkdir -p "$CACHE"
    # Serialise concurrent installs (two CI steps, two shells).
    if command -v flock >/dev/null; then
        exec {lock_fd}>"$CACHE/.kafka-install.lock"
        flock "$lock_fd"
    fi
    if [[ -n "${KAFKA_VERSION:-}" ]]; then
        is_installed "$KAFKA_VERSION" || resolve_version "$KAFKA_VERSION" \
            || die "Kafka $KAFKA_VERSION could not be resolved"
        echo "$KAFKA_VERSION"
        return
    fi
    for v in $KAFKA_CANDIDATE_VERSIONS; do
        if is_installed "$v" || resolve_version "$v"; then
            echo "$v"
            return
        fi
    done
    die "none of these Kafka versions resolved: $KAFKA_CANDIDATE_VERSIONS"
}

# ---------------------------------------------------------------------------------------------
# process helpers
# ---------------------------------------------------------------------------------------------

# Is <pid> a live broker started by this script with this run dir? (A zombie has no cmdline.)
is_our_broker() {
    local cmd
    cmd="$(cmdline_of "$1")" || return 1
    [[ "$cmd" == *" kafka.Kafka $PROPS"* ]]
}

# Pid of our broker: from the pid file, else by its exact server.properties path in /proc.
broker_pid() { find_pid "$PID_FILE" is_our_broker; }

# Kafka ApiVersions v0 request (header v1, client id "h", correlation id 7); ready when the broker
# echoes correlation id 7 with error code 0.
broker_answers() { # [port]
    local out port="${1:-$KAFKA_PORT}"
    out="$(timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$port \
        && printf '\x00\x00\x00\x0b\x00\x12\x00\x00\x00\x00\x00\x07\x00\x01h' >&3 \
        && head -c 10 <&3 | od -An -tx1" 2>/dev/null | tr -d ' \n')" || return 1
    [[ "${out:8:12}" == "000000070000" ]]
}

# Broker port of the running broker, from the server.properties it was started with.
running_port() {
    local line
    line="$(grep -m 1 '^listeners=' "$PROPS" 2>/dev/null || true)"
    line="${line#*PLAINTEXT://*:}"
    echo "${line%%,*}"
}

new_cluster_id() {
    # Same shape as `kafka-storage.sh random-uuid`: 16 random bytes, URL-safe base64, no padding,
    # not starting with '-'.
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && { echo "$id"; return; }
    done
}

write_configs() {
    cat >"$PROPS" <<EOF
# Generated by tests/services/kafka.sh; rewritten on every 'up'.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
log.dirs=$DATA_DIR

# single node: every internal topic with one replica, transactions with min.isr 1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1

# small footprint for a 2-core test machine
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
log.segment.bytes=16777216
log.index.size.max.bytes=1048576
offsets.topic.segment.bytes=16777216
transaction.state.log.segment.bytes=16777216
EOF
    if [[ -n "$KAFKA_EXTRA_PROPERTIES" ]]; then
        printf '\n# KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$PROPS"
    fi

    cat >"$LOG4J_CONF" <<EOF
# Generated by tests/services/kafka.sh; rewritten on every 'up'.
status = warn
# Kafka logs its own shutdown from a JVM shutdown hook; keep log4j's hook from closing the file first.
shutdownHook = disable
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $SERVER_LOG
appender.file.append = false
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = $KAFKA_LOG_LEVEL
rootLogger.appenderRef.file.ref = FILE
# quiet the chattiest loggers (config dumps, per-request and state-change traces)
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = WARN
logger.appinfo2.name = org.apache.kafka.common.utils.internals.AppInfoParser
logger.appinfo2.level = WARN
EOF
}

java_tool() { # <lib> <main-class> [args...]: a short-lived tool in the foreground
    local lib="$1"; shift
    # shellcheck disable=SC2086
    java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true $KAFKA_JVM_OPTS \
        -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$RUN_DIR" \
        -cp "$lib/*" "$@"
}

# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------

cmd_install() {
    local version
    version="$(ensure_installed)"
    log "Kafka $version ready in $(kafka_home "$version")/lib"
}

cmd_up() {
    local version lib pid cluster_id start start_ms elapsed_ms deadline now port
    command -v java >/dev/null || die "java not found (Java 17+ is required)"
    if pid="$(broker_pid)"; then
        if [[ "$(running_port)" == "$KAFKA_PORT" ]] && broker_answers; then
            log "already running (pid $pid) on $HOST:$KAFKA_PORT"
            echo "KAFKA_BOOTSTRAP_SERVERS=$HOST:$KAFKA_PORT"
            return 0
        fi
        log "a broker (pid $pid) is running but not answering on $HOST:$KAFKA_PORT; restarting it"
        cmd_down
    fi
    rm -f "$PID_FILE"

    version="$(ensure_installed)"
    lib="$(kafka_home "$version")/lib"

    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        port_open "$port" && die "port $HOST:$port is already in use by another process"
    done

    start="$(date +%s)"
    start_ms="$(date +%s%3N)"
    mkdir -p "$RUN_DIR"
    rm -rf "$DATA_DIR"
    rm -f "$SERVER_LOG" "$JVM_OUT"
    mkdir -p "$DATA_DIR"
    write_configs
    printf '%s\n' "$version" >"$RUN_DIR/kafka.version"

    cluster_id="$(new_cluster_id)"
    log "formatting $DATA_DIR (cluster id $cluster_id, Kafka $version)"
    # --standalone: this node alone forms the dynamic (KIP-853) controller quorum.
    if ! java_tool "$lib" kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS" --standalone \
        >"$RUN_DIR/format.out" 2>&1; then
        cat "$RUN_DIR/format.out" >&2
        die "kafka-storage format failed"
    fi

    log "starting broker+controller on $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT)"
    launch_broker "$lib"
    pid="$(cat "$PID_FILE")"

    deadline=$((start + KAFKA_START_TIMEOUT))
    while :; do
        # (not `kill -0`: a broker that died is our zombie child until this script exits)
        if ! is_our_broker "$pid"; then
            rm -f "$PID_FILE"
            show_log_tail "$JVM_OUT" "$SERVER_LOG"
            die "broker process $pid exited during start-up"
        fi
        if broker_answers; then break; fi
        now="$(date +%s)"
        if ((now >= deadline)); then
            show_log_tail "$JVM_OUT" "$SERVER_LOG"
            log "broker did not answer on $HOST:$KAFKA_PORT within ${KAFKA_START_TIMEOUT}s; stopping it"
            cmd_down >/dev/null 2>&1 || true
            die "Kafka start-up timed out"
        fi
        sleep 0.25
    done
    elapsed_ms=$(($(date +%s%3N) - start_ms))
    log "ready in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s (pid $pid); logs: $SERVER_LOG"
    echo "KAFKA_BOOTSTRAP_SERVERS=$HOST:$KAFKA_PORT"
}

launch_broker() {
    local lib="$1" launcher=()
    # New session, so signals sent to a CI step's or a terminal's process group don't reach it.
    # The script runs without job control, so the child is no group leader and setsid execs in
    # place: $! is java's own pid.
    if command -v setsid >/dev/null; then launcher=(setsid); fi
    # shellcheck disable=SC2086
    "${launcher[@]}" nohup java $KAFKA_HEAP_OPTS $JVM_BASE_OPTS $KAFKA_JIT_OPTS $KAFKA_JVM_OPTS \
        -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$RUN_DIR" \
        -cp "$lib/*" kafka.Kafka "$PROPS" >"$JVM_OUT" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
}

cmd_down() {
    local pid waited=0
    if ! pid="$(broker_pid)"; then
        log "not running"
        rm -f "$PID_FILE"
        rm -rf "$DATA_DIR"
        return 0
    fi
    log "stopping broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while is_our_broker "$pid"; do
        if ((waited >= KAFKA_STOP_TIMEOUT * 2)); then
            log "still alive after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    rm -f "$PID_FILE"
    rm -rf "$DATA_DIR"
    log "stopped"
}

cmd_status() {
    local pid port
    if ! pid="$(broker_pid)"; then
        log "not running"
        return 3
    fi
    port="$(running_port)"
    port="${port:-$KAFKA_PORT}"
    if broker_answers "$port"; then
        log "running (pid $pid, Kafka $(cat "$RUN_DIR/kafka.version" 2>/dev/null || echo '?')) on $HOST:$port"
        echo "KAFKA_BOOTSTRAP_SERVERS=$HOST:$port"
        return 0
    fi
    log "process $pid alive but not answering on $HOST:$port"
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
