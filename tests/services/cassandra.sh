#!/usr/bin/env bash
# Single-node Apache Cassandra 5.0.x on loopback, for tests and CI.
#
#   tests/services/cassandra.sh install   resolve Cassandra + runtime jars with Maven into the cache
#                                         (once)
#   tests/services/cassandra.sh up        install if needed, write config into a fresh run dir, start,
#                                         wait until CQL answers; prints
#                                         CASSANDRA_CONTACT=127.0.0.1:<port> on stdout
#   tests/services/cassandra.sh down      stop the node (SIGTERM = drain, then SIGKILL), remove its
#                                         data dir
#   tests/services/cassandra.sh status    exit 0 if running and answering CQL, 1 if alive but not
#                                         answering, 3 if not running
#
# No docker, no tarball download: `org.apache.cassandra:cassandra-all` and its runtime dependencies
# come from the Maven repository mvn is configured for (`mvn dependency:copy-dependencies` on a small
# generated pom) into $AGENTSTREAM_CACHE/cassandra-<version>/lib; a complete cache is reused without
# calling mvn. The JVM is started directly (no bin/cassandra, no cassandra-env.sh): the Java 17
# module flags of Cassandra's conf/jvm17-server.options, the jamm javaagent (from the resolved
# jars), and config from the templates in tests/services/cassandra/.
#
# Environment (all optional):
#   CASSANDRA_VERSION        one exact version; default: first of $CASSANDRA_CANDIDATE_VERSIONS that
#                            is cached, else the first that resolves
#   CASSANDRA_PORT           CQL native transport port (default 19042), bound to 127.0.0.1
#   CASSANDRA_STORAGE_PORT   internode/gossip port (default 19070), bound to 127.0.0.1
#   CASSANDRA_JMX_PORT       if set, local-only JMX on this port (for nodetool); default: no JMX
#   CASSANDRA_CLUSTER_NAME   default "agentstream-test"
#   CASSANDRA_HEAP_OPTS      default "-Xms512m -Xmx1g"
#   CASSANDRA_JIT_OPTS       default "-XX:TieredStopAtLevel=1" (faster start); "" for full C2
#   CASSANDRA_FAST_OPTS      test-only shortcuts, default: no wait for gossip to settle, 100 ms ring
#                            delay, no shutdown announcement delays, no fsync (cassandra.skip_sync),
#                            no forced flush of system tables (cassandra.unsafesystem), fixed memtable
#                            overhead estimate, no bytecode verification; "" for production-like
#   CASSANDRA_CDS            1 (default) = class-data sharing: the first `up`+`down` of a version
#                            dumps the loaded classes to an archive in the cache (that `down` takes
#                            ~3 s longer), later starts map it (~1 s faster, ~130 MB less RSS);
#                            0 = off
#   CASSANDRA_JVM_OPTS       extra JVM options appended last
#   CASSANDRA_MLOCK          1 = let Cassandra mlockall() its memory as in production (the whole
#                            committed heap becomes resident and locked); default: the mlockall
#                            fails harmlessly (RLIMIT_MEMLOCK, and CAP_IPC_LOCK dropped when root)
#   CASSANDRA_LOG_LEVEL      root log level (default INFO; a few chatty loggers stay at WARN)
#   CASSANDRA_EXTRA_YAML     extra cassandra.yaml lines (newline-separated), appended last
#                            (a key given twice is allowed: the last one wins)
#   CASSANDRA_KEEP_DATA      1 = keep the data dir across down/up (default: fresh node on every up)
#   CASSANDRA_START_TIMEOUT  seconds to wait for CQL (default 180)
#   CASSANDRA_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 60)
#   AGENTSTREAM_CACHE        default ~/.cache/agentstream
#   AGENTSTREAM_RUN          default /tmp/agentstream-services; this service uses <it>/cassandra
#
# Files in the run dir: cassandra.yaml, logback.xml, data/ (data, commitlog, hints, caches),
# system.log (logback), cassandra.out (JVM stdout/stderr), cassandra.pid, cassandra.version, tmp/,
# triggers/ (empty), cds.jsa + cds.target (only while a class-data archive is being recorded).
set -euo pipefail

CASSANDRA_CANDIDATE_VERSIONS="${CASSANDRA_CANDIDATE_VERSIONS:-5.0.9 5.0.8 5.0.7 5.0.6 5.0.5 5.0.4}"
CASSANDRA_PORT="${CASSANDRA_PORT:-19042}"
CASSANDRA_STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-19070}"
CASSANDRA_JMX_PORT="${CASSANDRA_JMX_PORT:-}"
CASSANDRA_CLUSTER_NAME="${CASSANDRA_CLUSTER_NAME:-agentstream-test}"
CASSANDRA_HEAP_OPTS="${CASSANDRA_HEAP_OPTS:--Xms512m -Xmx1g}"
CASSANDRA_JVM_OPTS="${CASSANDRA_JVM_OPTS:-}"
CASSANDRA_LOG_LEVEL="${CASSANDRA_LOG_LEVEL:-INFO}"
CASSANDRA_EXTRA_YAML="${CASSANDRA_EXTRA_YAML:-}"
CASSANDRA_KEEP_DATA="${CASSANDRA_KEEP_DATA:-0}"
CASSANDRA_MLOCK="${CASSANDRA_MLOCK:-0}"
CASSANDRA_CDS="${CASSANDRA_CDS:-1}"
CASSANDRA_START_TIMEOUT="${CASSANDRA_START_TIMEOUT:-180}"
CASSANDRA_STOP_TIMEOUT="${CASSANDRA_STOP_TIMEOUT:-60}"
CACHE="${AGENTSTREAM_CACHE:-${HOME:-/root}/.cache/agentstream}"
RUN_DIR="${AGENTSTREAM_RUN:-/tmp/agentstream-services}/cassandra"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATES="$HERE/cassandra"
HOST="127.0.0.1"
MAIN_CLASS="org.apache.cassandra.service.CassandraDaemon"

PID_FILE="$RUN_DIR/cassandra.pid"
CDS_DUMP="$RUN_DIR/cds.jsa"
CDS_TARGET="$RUN_DIR/cds.target"
YAML="$RUN_DIR/cassandra.yaml"
LOGBACK="$RUN_DIR/logback.xml"
DATA_DIR="$RUN_DIR/data"
TMP_DIR="$RUN_DIR/tmp"
SYSTEM_LOG="$RUN_DIR/system.log"
JVM_OUT="$RUN_DIR/cassandra.out"

# Client compiler only: start-up takes noticeably less CPU on 2 cores (and the JIT competes less
# with the tests); set CASSANDRA_JIT_OPTS="" for full C2 peak performance (benchmarks).
CASSANDRA_JIT_OPTS="${CASSANDRA_JIT_OPTS--XX:TieredStopAtLevel=1}"
# Safe only for a throwaway single node: skip the gossip settle wait and most of the ring delay,
# and at shutdown the 2 s shutdown announcement and the 2 s messaging quiesce (there are no peers to
# wait for or to tell); no fsync anywhere, no forced flushes of system/schema tables; a fixed
# memtable row-overhead estimate (180 bytes, what 5.0.9 measures on JDK 17) instead of measuring
# it at every start (~1.5 s of CPU); no bytecode verification of the jars (checksummed by Maven).
CASSANDRA_FAST_OPTS="${CASSANDRA_FAST_OPTS--Dcassandra.skip_wait_for_gossip_to_settle=0 \
-Dcassandra.ring_delay_ms=100 -Dcassandra.shutdown_announce_in_ms=0 \
-Dcassandra.test.messagingService.nonGracefulShutdown=true \
-Dcassandra.skip_sync=true -Dcassandra.unsafesystem=true \
-Dcassandra.memtable.row_overhead_size=180 \
-XX:+UnlockDiagnosticVMOptions -XX:-BytecodeVerificationRemote}"

SERVICE=cassandra
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

cassandra_home() { printf '%s/cassandra-%s' "$CACHE" "$1"; }
is_installed() { [[ -f "$(cassandra_home "$1")/.complete" ]]; }

write_pom() { # <file> <version>
    cat >"$1" <<EOF
<project>
  <modelVersion>4.0.0</modelVersion>
  <groupId>agentstream.services</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId><version>$2</version>
    </dependency>
  </dependencies>
</project>
EOF
}

# Resolve one version into a temp dir and move it into place; returns non-zero if it won't resolve.
resolve_version() {
    local version="$1" home tmp lib jar
    home="$(cassandra_home "$version")"
    mkdir -p "$CACHE"
    tmp="$(mktemp -d "$CACHE/.cassandra-$version.XXXXXX")"
    chmod 755 "$tmp" # mktemp makes it private; the installed copy is read by other users/CI steps
    lib="$tmp/lib"
    log "resolving org.apache.cassandra:cassandra-all:$version and its runtime dependencies with mvn"
    write_pom "$tmp/pom.xml" "$version"
    if ! mvn -B -q -f "$tmp/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$lib" >"$tmp/mvn.log" 2>&1 \
        || [[ ! -f "$lib/cassandra-all-$version.jar" ]]; then
        log "cassandra-all:$version did not resolve; mvn said:"
        tail -n 15 "$tmp/mvn.log" >&2 || true
        rm -rf "$tmp"
        return 1
    fi
    for jar in jamm logback-classic logback-core slf4j-api netty-all snakeyaml guava jna \
        chronicle-queue lz4-java snappy-java caffeine; do
        compgen -G "$lib/$jar-[0-9]*.jar" >/dev/null || { rm -rf "$tmp"; die "missing $jar after resolve"; }
    done
    # The jars are all a node needs; the unused per-OS native bundles (macOS, Windows) stay, they
    # are small and harmless on the classpath.
    rm -f "$tmp/pom.xml" "$tmp/mvn.log"
    printf '%s\n' "$version" >"$tmp/.complete"
    rm -rf "$home"
    mv "$tmp" "$home"
    local jars=("$home"/lib/*.jar)
    log "installed Cassandra $version: ${#jars[@]} jars ($(du -sh "$home/lib" | cut -f1)) in $home/lib"
}

# Prints the version to use, installing it if needed.
ensure_installed() {
    local v lock_fd
    if [[ -n "${CASSANDRA_VERSION:-}" ]]; then
        is_installed "$CASSANDRA_VERSION" && { echo "$CASSANDRA_VERSION"; return; }
    else
        for v in $CASSANDRA_CANDIDATE_VERSIONS; do
            is_installed "$v" && { echo "$v"; return; }
        done
    fi
    command -v mvn >/dev/null || die "mvn not found (needed once to resolve Cassandra's jars)"
    mkdir -p "$CACHE"
    # Serialise concurrent installs (two CI steps, two shells).
    if command -v flock >/dev/null; then
        exec {lock_fd}>"$CACHE/.cassandra-install.lock"
        flock "$lock_fd"
    fi
    if [[ -n "${CASSANDRA_VERSION:-}" ]]; then
        is_installed "$CASSANDRA_VERSION" || resolve_version "$CASSANDRA_VERSION" \
            || die "Cassandra $CASSANDRA_VERSION could not be resolved"
        echo "$CASSANDRA_VERSION"
        return
    fi
    for v in $CASSANDRA_CANDIDATE_VERSIONS; do
        if is_installed "$v" || resolve_version "$v"; then
            echo "$v"
            return
        fi
    done
    die "none of these Cassandra versions resolved: $CASSANDRA_CANDIDATE_VERSIONS"
}

# ---------------------------------------------------------------------------------------------
# process helpers
# ---------------------------------------------------------------------------------------------

# Is <pid> a live node started by this script with this run dir? (A zombie has no cmdline.)
is_our_node() {
    local cmd
    cmd="$(cmdline_of "$1")" || return 1
    [[ "$cmd" == *" -Dcassandra.config=file://$YAML "* && "$cmd" == *" $MAIN_CLASS "* ]]
}

# Is <pid> alive and not a zombie? (During launch the pid is briefly setsid/setpriv/nohup before it
# execs java, so is_our_node is not yet true; this is the start-up liveness test.)
# Pid of our node: from the pid file, else by its exact cassandra.yaml path in /proc.
node_pid() { find_pid "$PID_FILE" is_our_node; }

# CQL native protocol v4 OPTIONS request (stream 1); ready when the node answers SUPPORTED
# (response version 0x84, flags 0, stream 1, opcode 0x06). Cassandra opens the native transport
# only at the end of start-up, once the node has joined its ring and can serve queries.
cql_answers() { # [port]
    local out port="${1:-$CASSANDRA_PORT}"
    out="$(timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$port \
        && printf '\x04\x00\x00\x01\x05\x00\x00\x00\x00' >&3 \
        && head -c 9 <&3 | od -An -tx1" 2>/dev/null | tr -d ' \n')" || return 1
    [[ "${out:0:10}" == "8400000106" ]]
}

# CQL port of the running node, from the cassandra.yaml it was started with.
running_port() {
    local line
    line="$(grep -m 1 '^native_transport_port:' "$YAML" 2>/dev/null || true)"
    line="${line#*:}"
    echo "${line// /}"
}

# render <template> <output> NAME=value...: replace every @NAME@ (plain text, no regex, no sed
# escaping issues with paths).
render() {
    local in="$1" out="$2" text kv name value
    shift 2
    [[ -f "$in" ]] || die "template $in not found"
    text="$(<"$in")"
    shopt -u patsub_replacement 2>/dev/null || true # bash 5.2: '&' in a replacement is literal
    for kv in "$@"; do
        name="${kv%%=*}"
        value="${kv#*=}"
        text="${text//@"$name"@/$value}"
    done
    if [[ "$text" =~ @[A-Z_]+@ ]]; then
        die "unreplaced placeholder ${BASH_REMATCH[0]} in $in"
    fi
    printf '%s\n' "$text" >"$out"
}

write_configs() {
    render "$TEMPLATES/cassandra.yaml.in" "$YAML" \
        "CLUSTER_NAME=$CASSANDRA_CLUSTER_NAME" "HOST=$HOST" "DATA_DIR=$DATA_DIR" \
        "NATIVE_PORT=$CASSANDRA_PORT" "STORAGE_PORT=$CASSANDRA_STORAGE_PORT"
    if [[ -n "$CASSANDRA_EXTRA_YAML" ]]; then
        printf '\n# CASSANDRA_EXTRA_YAML\n%s\n' "$CASSANDRA_EXTRA_YAML" >>"$YAML"
    fi
    render "$TEMPLATES/logback.xml.in" "$LOGBACK" \
        "LOG_FILE=$SYSTEM_LOG" "LOG_LEVEL=$CASSANDRA_LOG_LEVEL"
}

# The JPMS and netty flags of Cassandra 5.0's conf/jvm17-server.options (its GC section is replaced
# by small-node settings in launch_node, which also has the relevant parts of jvm-server.options
# and cassandra-env.sh).
jvm17_module_opts() {
    local opts=(
        -Djdk.attach.allowAttachSelf=true
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
        --add-exports java.sql/java.sql=ALL-UNNAMED
        --add-exports java.base/java.lang.ref=ALL-UNNAMED
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
        --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
        --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
        --add-opens java.base/java.lang.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED
        --add-opens java.base/java.io=ALL-UNNAMED
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED
        --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
        --add-opens java.base/java.lang=ALL-UNNAMED
        --add-opens java.base/java.util=ALL-UNNAMED
        -Dio.netty.tryReflectionSetAccessible=true
        -Dio.netty.allocator.useCacheForAllThreads=true
        -Dio.netty.allocator.maxOrder=11
    )
    printf '%s\n' "${opts[@]}"
}

# Class-data sharing (AppCDS, dynamic archive): the archive belongs to one JDK build, one jar set
# and one set of JVM options, so its name is a hash of those; a mismatch (say, a JDK update that
# keeps the same java -version) only costs a warning in cassandra.out and a normal-speed start.
# The java agent (jamm) needs the diagnostic AllowArchivingWithJavaAgent, at dump and at use.
CDS_FLAGS=(-XX:+UnlockDiagnosticVMOptions -XX:+AllowArchivingWithJavaAgent)

cds_archive() { # <lib>: path of the archive for this JDK, jar set and options
    local key
    key="$( { java -version 2>&1; printf '%s\n' "$1" "$CASSANDRA_HEAP_OPTS" "$CASSANDRA_JIT_OPTS" \
        "$CASSANDRA_FAST_OPTS" "$CASSANDRA_JVM_OPTS"; ls -l --time-style=+%s "$1"; } | sha1sum)"
    printf '%s/cds-%s.jsa' "$(dirname "$1")" "${key:0:12}"
}

# After a clean stop: move a recorded archive into the cache (atomically; last writer wins).
save_cds_archive() {
    local target tmp
    [[ -f "$CDS_TARGET" ]] || return 0
    target="$(cat "$CDS_TARGET")"
    rm -f "$CDS_TARGET"
    if [[ -s "$CDS_DUMP" ]] && ! grep -q 'Error occurred during CDS dumping' "$JVM_OUT" 2>/dev/null; then
        tmp="$target.tmp.$$"
        if cp "$CDS_DUMP" "$tmp" 2>/dev/null && mv -f "$tmp" "$target"; then
            log "saved class-data archive for faster starts: $target ($(du -h "$target" | cut -f1))"
        else
            rm -f "$tmp"
        fi
    fi
    rm -f "$CDS_DUMP"
}

launch_node() {
    local lib="$1" launcher=() jamm opts=() jmx=() limit cds=() jsa
    local jamms=("$lib"/jamm-[0-9]*.jar)
    jamm="${jamms[0]}"
    [[ -f "$jamm" ]] || die "no jamm jar in $lib"
    mapfile -t opts < <(jvm17_module_opts)
    rm -f "$CDS_DUMP" "$CDS_TARGET"
    if [[ "$CASSANDRA_CDS" == "1" ]]; then
        jsa="$(cds_archive "$lib")"
        if [[ -s "$jsa" ]]; then
            cds=("${CDS_FLAGS[@]}" -XX:SharedArchiveFile="$jsa")
        else
            # record this run's classes; `down` moves the archive into the cache after a clean exit
            cds=("${CDS_FLAGS[@]}" -XX:ArchiveClassesAtExit="$CDS_DUMP")
            printf '%s\n' "$jsa" >"$CDS_TARGET"
        fi
    fi
    if [[ -n "$CASSANDRA_JMX_PORT" ]]; then
        # local JMX binds to loopback only (Cassandra's own JMX server)
        jmx=(-Dcassandra.jmx.local.port="$CASSANDRA_JMX_PORT" -Djava.rmi.server.hostname="$HOST"
            -Dcom.sun.management.jmxremote.authenticate=false)
    fi
    # New session, so signals sent to a CI step's or a terminal's process group don't reach it.
    # The script runs without job control, so the child is no group leader and setsid execs in
    # place: $! is java's own pid.
    if command -v setsid >/dev/null; then launcher=(setsid); fi
    # Cassandra calls mlockall(MCL_CURRENT) at start-up; when it succeeds (root has CAP_IPC_LOCK,
    # which ignores RLIMIT_MEMLOCK) every committed page, the whole -Xms heap included, is faulted in
    # and pinned: ~0.9 GB resident for an idle test node. Unless CASSANDRA_MLOCK=1, keep the soft
    # memlock limit small and, as root, drop CAP_IPC_LOCK from the bounding set, so the call fails
    # with ENOMEM (one WARN line) and memory is only resident when used. setpriv execs in place.
    if [[ "$CASSANDRA_MLOCK" != "1" ]]; then
        limit="$(ulimit -S -l)"
        if [[ "$limit" == unlimited ]] || ((limit > 65536)); then ulimit -S -l 65536 2>/dev/null || true; fi
        if [[ "$(id -u)" == 0 ]] && setpriv --bounding-set=-ipc_lock true 2>/dev/null; then
            launcher+=(setpriv --bounding-set=-ipc_lock)
        fi
    fi
    # glibc arenas: cassandra-env.sh caps them at 4 (less native memory per thread).
    # shellcheck disable=SC2086
    MALLOC_ARENA_MAX=4 "${launcher[@]}" nohup java $CASSANDRA_HEAP_OPTS \
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 \
        -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1 -XX:+UseThreadPriorities -Xss256k \
        -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError \
        $CASSANDRA_JIT_OPTS "${cds[@]}" \
        "${opts[@]}" \
        -javaagent:"$jamm" \
        -Djava.net.preferIPv4Stack=true -Djava.awt.headless=true -Djna.nosys=true \
        -Djava.io.tmpdir="$TMP_DIR" \
        -Dchronicle.analytics.disable=true -Dchronicle.announcer.disable=true \
        -Dcassandra.test.ignore_sigar=true \
        -Dcassandra-foreground=yes \
        -Dcassandra.storagedir="$DATA_DIR" -Dcassandra.logdir="$RUN_DIR" \
        -Dcassandra.triggers_dir="$RUN_DIR/triggers" \
        -Dlogback.configurationFile="$LOGBACK" \
        "${jmx[@]}" \
        $CASSANDRA_FAST_OPTS $CASSANDRA_JVM_OPTS \
        -Dcassandra.config="file://$YAML" \
        -cp "$lib/*" "$MAIN_CLASS" >"$JVM_OUT" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
}

# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------

cmd_install() {
    local version
    version="$(ensure_installed)"
    log "Cassandra $version ready in $(cassandra_home "$version")/lib"
}

cmd_up() {
    local version lib pid start start_ms elapsed_ms deadline now port java_major
    command -v java >/dev/null || die "java not found (Java 17 is required)"
    java_major="$(java -version 2>&1 | sed -n '1s/^[^"]*"\(1\.\)\{0,1\}\([0-9]*\).*/\2/p')"
    if [[ "$java_major" != 17 ]]; then
        log "warning: java on PATH is version ${java_major:-?}; Cassandra 5.0 supports Java 11 and 17, and the flags here are for 17"
    fi
    if pid="$(node_pid)"; then
        if [[ "$(running_port)" == "$CASSANDRA_PORT" ]] && cql_answers; then
            log "already running (pid $pid) on $HOST:$CASSANDRA_PORT"
            echo "CASSANDRA_CONTACT=$HOST:$CASSANDRA_PORT"
            return 0
        fi
        log "a node (pid $pid) is running but not answering on $HOST:$CASSANDRA_PORT; restarting it"
        cmd_down
    fi
    rm -f "$PID_FILE"

    version="$(ensure_installed)"
    lib="$(cassandra_home "$version")/lib"

    for port in "$CASSANDRA_PORT" "$CASSANDRA_STORAGE_PORT" ${CASSANDRA_JMX_PORT:+"$CASSANDRA_JMX_PORT"}; do
        port_open "$port" && die "port $HOST:$port is already in use by another process"
    done

    start="$(date +%s)"
    start_ms="$(date +%s%3N)"
    mkdir -p "$RUN_DIR"
    if [[ "$CASSANDRA_KEEP_DATA" != "1" ]]; then rm -rf "$DATA_DIR"; fi
    rm -rf "$TMP_DIR"
    rm -f "$SYSTEM_LOG" "$JVM_OUT"
    mkdir -p "$DATA_DIR" "$TMP_DIR" "$RUN_DIR/triggers"
    write_configs
    printf '%s\n' "$version" >"$RUN_DIR/cassandra.version"

    log "starting Cassandra $version on $HOST:$CASSANDRA_PORT (storage port $CASSANDRA_STORAGE_PORT)"
    launch_node "$lib"
    pid="$(cat "$PID_FILE")"

    deadline=$((start + CASSANDRA_START_TIMEOUT))
    while :; do
        # (not `kill -0`: a node that died is our zombie child until this script exits)
        if ! pid_alive "$pid"; then
            rm -f "$PID_FILE"
            show_log_tail "$JVM_OUT" "$SYSTEM_LOG"
            die "Cassandra process $pid exited during start-up"
        fi
        if cql_answers; then break; fi
        now="$(date +%s)"
        if ((now >= deadline)); then
            show_log_tail "$JVM_OUT" "$SYSTEM_LOG"
            log "CQL did not answer on $HOST:$CASSANDRA_PORT within ${CASSANDRA_START_TIMEOUT}s; stopping it"
            cmd_down >/dev/null 2>&1 || true
            die "Cassandra start-up timed out"
        fi
        sleep 0.25
    done
    elapsed_ms=$(($(date +%s%3N) - start_ms))
    log "ready in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s (pid $pid); logs: $SYSTEM_LOG"
    echo "CASSANDRA_CONTACT=$HOST:$CASSANDRA_PORT"
}

cmd_down() {
    local pid waited=0
    if ! pid="$(node_pid)"; then
        log "not running"
        rm -f "$PID_FILE" "$CDS_TARGET" "$CDS_DUMP"
        if [[ "$CASSANDRA_KEEP_DATA" != "1" ]]; then rm -rf "$DATA_DIR"; fi
        rm -rf "$TMP_DIR"
        return 0
    fi
    log "stopping Cassandra (pid $pid)"
    # SIGTERM runs Cassandra's shutdown hook: stop clients and gossip, drain (flush) memtables;
    # then the JVM writes the class-data archive if this run records one.
    kill -TERM "$pid" 2>/dev/null || true
    while is_our_node "$pid"; do
        if ((waited >= CASSANDRA_STOP_TIMEOUT * 4)); then
            log "still alive after ${CASSANDRA_STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            rm -f "$CDS_TARGET" "$CDS_DUMP" # possibly half-written
            break
        fi
        sleep 0.25
        waited=$((waited + 1))
    done
    save_cds_archive
    rm -f "$PID_FILE"
    if [[ "$CASSANDRA_KEEP_DATA" != "1" ]]; then rm -rf "$DATA_DIR"; fi
    rm -rf "$TMP_DIR"
    log "stopped"
}

cmd_status() {
    local pid port
    if ! pid="$(node_pid)"; then
        log "not running"
        return 3
    fi
    port="$(running_port)"
    port="${port:-$CASSANDRA_PORT}"
    if cql_answers "$port"; then
        log "running (pid $pid, Cassandra $(cat "$RUN_DIR/cassandra.version" 2>/dev/null || echo '?')) on $HOST:$port"
        echo "CASSANDRA_CONTACT=$HOST:$port"
        return 0
    fi
    log "process $pid alive but not answering CQL on $HOST:$port"
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
