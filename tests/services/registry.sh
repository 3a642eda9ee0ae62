#!/usr/bin/env bash
# Real Confluent-compatible Schema Registry for agentstream's tests:
# Apicurio Registry 3.0.x (Quarkus app, Java 17) from Maven Central, in-memory H2
# storage, on loopback. No Kafka needed.
#
#   tests/services/registry.sh install   # fetch + unpack into the cache (idempotent)
#   tests/services/registry.sh up        # install if needed, start, wait, print the ccompat URL
#   tests/services/registry.sh down      # stop by pid
#   tests/services/registry.sh status    # exit 0 if the API answers, 3 otherwise
#
# Environment:
#   AGENTSTREAM_CACHE   cache root        (default ~/.cache/agentstream)
#   AGENTSTREAM_RUN     run root          (default /tmp/agentstream-services)
#   REGISTRY_PORT       HTTP port         (default 18081, bound to 127.0.0.1)
#   REGISTRY_VERSION    Apicurio version  (default 3.0.9; 3.3.x needs Java 21)
#   REGISTRY_HEAP       max heap          (default 256m)
#   REGISTRY_TIMEOUT    seconds `up` waits for the API (default 120)
#   JAVA                java binary       (default: java on PATH)
#
# The Confluent-compatible API is at http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7;
# `up` prints it and writes it to $AGENTSTREAM_RUN/registry/url.
# Apicurio's native API is at /apis/registry/v3, health at /health.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="${REGISTRY_VERSION:-3.0.9}"
CACHE_ROOT="${AGENTSTREAM_CACHE:-$HOME/.cache/agentstream}"
INSTALL_DIR="$CACHE_ROOT/registry-$VERSION"
RUN_DIR="${AGENTSTREAM_RUN:-/tmp/agentstream-services}/registry"
PORT="${REGISTRY_PORT:-18081}"
HEAP="${REGISTRY_HEAP:-256m}"
TIMEOUT="${REGISTRY_TIMEOUT:-120}"
JAVA="${JAVA:-java}"
HOST=127.0.0.1
BASE_URL="http://$HOST:$PORT"
CCOMPAT_URL="$BASE_URL/apis/ccompat/v7"
PID_FILE="$RUN_DIR/registry.pid"
LOG_FILE="$RUN_DIR/registry.log"
ARTIFACT="io.apicurio:apicurio-registry-app:$VERSION:tar.gz:all"
# 2.8 on purpose: its `get -Dtransitive=false` does not read the artifact's POM descriptor, and
# the parent POM io.apicurio:apicurio-registry:3.0.9 is not on Maven Central, which makes
# dependency:copy and 3.x's dependency:get fail with "Failed to read artifact descriptor".
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:2.8"
# sha256 of the -all.tar.gz per version (checked when known; Maven also checks the .sha1).
declare -A SHA256=(
  [3.0.9]=2b28181501a20cbf6efcd77f9b7153908fc01f3d3a7c32024c0bd9e1b04c8a43
)

SERVICE=registry
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

runner_cmd() {
  # 3.0.x ships a legacy-jar layout (<name>-runner.jar + lib/); 3.3.x ships fast-jar (quarkus-run.jar).
  if [[ -f "$INSTALL_DIR/quarkus-run.jar" ]]; then
    echo "$INSTALL_DIR/quarkus-run.jar"
  else
    ls "$INSTALL_DIR"/*-runner.jar 2>/dev/null | head -n1
  fi
}

cmd_install() {
  if [[ -f "$INSTALL_DIR/.installed" ]]; then
    log "already installed: registry-$VERSION"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (needed to fetch $ARTIFACT from Maven Central)"
  mkdir -p "$CACHE_ROOT"
  local tmp
  tmp="$(mktemp -d "$CACHE_ROOT/.registry-$VERSION.XXXXXX")"
  INSTALL_TMP="$tmp"
  trap 'rm -rf "${INSTALL_TMP:-}"' EXIT
  log "fetching $ARTIFACT from Maven Central"
  # Resolves through the local Maven repo (~/.m2 unless MAVEN_OPTS sets maven.repo.local).
  mkdir -p "$tmp/dl"
  mvn -B -q -Dstyle.color=never --strict-checksums "$DEP_PLUGIN:get" \
      -Dartifact="$ARTIFACT" -Dtransitive=false -Ddest="$tmp/dl/" >&2 \
      || die "maven could not fetch $ARTIFACT"
  local tgz
  tgz="$(ls "$tmp"/dl/*.tar.gz 2>/dev/null | head -n1)"
  [[ -f "$tgz" ]] || die "no tarball downloaded"
  if [[ -n "${SHA256[$VERSION]:-}" ]]; then
    echo "${SHA256[$VERSION]}  $tgz" | sha256sum -c --quiet - || die "sha256 mismatch for $tgz"
  fi
  mkdir -p "$tmp/app"
  tar -xzf "$tgz" -C "$tmp/app"
  rm -rf "$tmp/dl"
  touch "$tmp/app/.installed"
  rm -rf "$INSTALL_DIR"
  mv "$tmp/app" "$INSTALL_DIR"
  rm -rf "$tmp"
  [[ -n "$(runner_cmd)" ]] || die "no runner jar in $INSTALL_DIR"
  log "installed registry-$VERSION ($(du -sh "$INSTALL_DIR" | cut -f1))"
}

api_answers() {
  curl -fsS -m 3 -o /dev/null "$CCOMPAT_URL/subjects" 2>/dev/null
}

registry_alive() {
  [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

port_busy() {
  (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

cmd_up() {
  if registry_alive && api_answers; then
    log "already running (pid $(cat "$PID_FILE"))"
    echo "$CCOMPAT_URL"
    return 0
  fi
  if registry_alive; then
    log "stale process $(cat "$PID_FILE") does not answer; stopping it"
    cmd_down
  fi
  port_busy && die "port $PORT on $HOST is already in use by another process (set REGISTRY_PORT)"
  cmd_install
  command -v "$JAVA" >/dev/null || die "java not found"
  local jar
  jar="$(runner_cmd)"
  mkdir -p "$RUN_DIR/config" "$RUN_DIR/tmp"
  cp "$HERE/registry/application.properties" "$RUN_DIR/config/application.properties"
  rm -f "$RUN_DIR/url"
  : >"$LOG_FILE"
  local t0=$SECONDS
  (
    cd "$RUN_DIR"
    exec nohup "$JAVA" \
      -Xms64m -Xmx"$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Djava.io.tmpdir="$RUN_DIR/tmp" \
      -Dquarkus.http.host="$HOST" -Dquarkus.http.port="$PORT" \
      -Dapicurio.storage.snapshot.location="$RUN_DIR/tmp" \
      -Dapicurio.import.work-dir="$RUN_DIR/tmp" \
      -jar "$jar" </dev/null >>"$LOG_FILE" 2>&1
  ) &
  echo $! >"$PID_FILE"
  log "starting Apicurio Registry $VERSION (pid $(cat "$PID_FILE")) on $BASE_URL"
  while (( SECONDS - t0 < TIMEOUT )); do
    if api_answers; then
      echo "$CCOMPAT_URL" >"$RUN_DIR/url"
      log "up after $((SECONDS - t0))s"
      echo "$CCOMPAT_URL"
      return 0
    fi
    if ! registry_alive; then
      log "process exited during start-up; log tail:"
      tail -n 60 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      exit 1
    fi
    sleep 0.5
  done
  log "API did not answer within ${TIMEOUT}s; log tail:"
  tail -n 60 "$LOG_FILE" >&2 || true
  cmd_down || true
  exit 1
}

cmd_down() {
  if [[ ! -f "$PID_FILE" ]]; then
    log "not running (no pid file)"
    rm -f "$RUN_DIR/url"
    return 0
  fi
  local pid
  pid="$(cat "$PID_FILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ignored SIGTERM for 20s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped (pid $pid)"
  else
    log "pid $pid was not running"
  fi
  rm -f "$PID_FILE" "$RUN_DIR/url"
}

cmd_status() {
  if registry_alive && api_answers; then
    echo "running pid=$(cat "$PID_FILE") url=$CCOMPAT_URL"
    return 0
  elif registry_alive; then
    echo "starting-or-unhealthy pid=$(cat "$PID_FILE") url=$CCOMPAT_URL"
    return 3
  fi
  echo "stopped"
  return 3
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 {install|up|down|status}" >&2; exit 2 ;;
esac
