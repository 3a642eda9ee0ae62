#!/usr/bin/env bash
# A real Kubernetes control plane without a kubelet, on loopback, for tests and CI: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, and kwok faking the nodes and the
# pod lifecycle (pods of Jobs are scheduled, run and complete; no container ever runs).
#
#   tests/services/k8s.sh install   build the five binaries into the cache (once; a cold build
#                                   takes a while on 2 cores and runs under `nice`)
#   tests/services/k8s.sh up        install if needed, start everything with a fresh etcd, wait
#                                   until a fake node is Ready; prints on stdout
#                                     KUBECONFIG=<run dir>/k8s/kubeconfig
#   tests/services/k8s.sh down      stop everything (SIGTERM, then SIGKILL), remove the data
#   tests/services/k8s.sh status    exit 0 if the API server answers, 3 if it is not running
#
# Build: k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces every k8s.io staging
# module with a directory of its own repository), so `install` generates a throw-away wrapper
# module in a temp dir that requires k8s.io/kubernetes and replaces each staging module with the
# published v0.<minor>.<patch> of the same release, and builds the three commands from it; etcd
# comes from the same module graph (a three-line main around go.etcd.io/etcd/server/v3/etcdmain,
# at the version Kubernetes itself requires). kwok is `go install`ed at its tag. Binaries land
# in $AGENTSTREAM_CACHE/k8s-<version>/bin; a complete cache is reused without calling go.
#
# Security of the test cluster: everything binds 127.0.0.1; the API server serves TLS with a
# CA and certificate this script generates under the run dir, authenticates clients with a
# static bearer token (one admin user in system:masters), authorizes with RBAC, and signs
# service-account tokens with a key pair generated per `up`.
#
# Environment (all optional):
#   K8S_VERSION            Kubernetes release (default v1.37.2; staging modules at v0.37.2)
#   KWOK_VERSION           kwok tag (default v0.8.0)
#   K8S_PORT_BASE          first of ten ports (default 16440): etcd client +1, etcd peer +2,
#                          apiserver +3, controller-manager +4, scheduler +5, kwok +6
#   K8S_NODES              number of fake nodes (default 2)
#   K8S_START_TIMEOUT      seconds `up` waits for everything (default 120)
#   K8S_STOP_TIMEOUT       seconds to wait after SIGTERM before SIGKILL (default 20)
#   K8S_BUILD_NICE         nice level of the build (default 10)
#   AGENTSTREAM_CACHE      default ~/.cache/agentstream
#   AGENTSTREAM_RUN        default /tmp/agentstream-services; this service uses <it>/k8s
#
# Files in the run dir: pki/ (CA, serving cert, service-account keys, token file), etcd-data/,
# kubeconfig, <component>.log, <component>.pid, kwok-stages.yaml.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
K8S_PORT_BASE="${K8S_PORT_BASE:-16440}"
K8S_NODES="${K8S_NODES:-2}"
K8S_START_TIMEOUT="${K8S_START_TIMEOUT:-120}"
K8S_STOP_TIMEOUT="${K8S_STOP_TIMEOUT:-20}"
K8S_BUILD_NICE="${K8S_BUILD_NICE:-10}"
CACHE="${AGENTSTREAM_CACHE:-${HOME:-/root}/.cache/agentstream}"
RUN_DIR="${AGENTSTREAM_RUN:-/tmp/agentstream-services}/k8s"
HOST="127.0.0.1"

ETCD_PORT=$((K8S_PORT_BASE + 1))
ETCD_PEER_PORT=$((K8S_PORT_BASE + 2))
APISERVER_PORT=$((K8S_PORT_BASE + 3))
KCM_PORT=$((K8S_PORT_BASE + 4))
SCHEDULER_PORT=$((K8S_PORT_BASE + 5))
KWOK_PORT=$((K8S_PORT_BASE + 6))

HOME_DIR="$CACHE/k8s-$K8S_VERSION-kwok-$KWOK_VERSION"
BIN="$HOME_DIR/bin"
PKI="$RUN_DIR/pki"
KUBECONFIG_FILE="$RUN_DIR/kubeconfig"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

SERVICE=k8s
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

is_installed() { [[ -f "$HOME_DIR/.complete" ]]; }

build_all() {
    local tmp staging gomod minor
    command -v go >/dev/null || die "go not found (needed once to build the control plane)"
    mkdir -p "$CACHE"
    tmp="$(mktemp -d "$CACHE/.k8s-build.XXXXXX")"
    # v1.37.2 -> v0.37.2: the tag every staging module is published at for this release.
    staging="v0.${K8S_VERSION#v1.}"
    log "building Kubernetes $K8S_VERSION (staging modules $staging) and etcd in $tmp"
    (cd "$tmp" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >download.json) \
        || { tail -n 20 "$tmp/download.json" >&2; rm -rf "$tmp"; die "k8s.io/kubernetes@$K8S_VERSION did not download"; }
    gomod="$(sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p' "$tmp/download.json")"
    [[ -f "$gomod" ]] || { rm -rf "$tmp"; die "no go.mod for k8s.io/kubernetes@$K8S_VERSION"; }
    minor="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
    {
        printf 'module agentstream.local/k8sbuild\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' \
            "$minor" "$K8S_VERSION"
        grep -oE '^\s*k8s.io/[a-z0-9-]+ => ./staging/' "$gomod" | awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
        printf ')\n'
    } >"$tmp/go.mod"
    mkdir -p "$tmp/etcd"
    cat >"$tmp/etcd/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
    cat >"$tmp/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
EOF
    mkdir -p "$tmp/bin"
    if ! (cd "$tmp" && go mod tidy >build.log 2>&1 \
        && nice -n "$K8S_BUILD_NICE" env CGO_ENABLED=0 go build -trimpath \
            -ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION" -o bin/ \
            k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kube-scheduler ./etcd >>build.log 2>&1); then
        tail -n 30 "$tmp/build.log" >&2
        rm -rf "$tmp"
        die "building Kubernetes $K8S_VERSION failed"
    fi
    log "building kwok $KWOK_VERSION"
    if ! nice -n "$K8S_BUILD_NICE" env CGO_ENABLED=0 GOBIN="$tmp/bin" go install -trimpath -ldflags="-s -w" \
        "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >"$tmp/kwok-build.log" 2>&1; then
        tail -n 30 "$tmp/kwok-build.log" >&2
        rm -rf "$tmp"
        die "building kwok $KWOK_VERSION failed"
    fi
    rm -rf "$HOME_DIR"
    mkdir -p "$HOME_DIR"
    mv "$tmp/bin" "$BIN"
    printf 'kubernetes %s\nkwok %s\n' "$K8S_VERSION" "$KWOK_VERSION" >"$HOME_DIR/.complete"
    rm -rf "$tmp"
    log "installed into $BIN"
}

ensure_installed() {
    local lock_fd
    is_installed && return 0
    mkdir -p "$CACHE"
    if command -v flock >/dev/null; then
        exec {lock_fd}>"$CACHE/.k8s-install.lock"
        flock "$lock_fd"
    fi
    is_installed || build_all
}

# ---------------------------------------------------------------------------------------------
# process helpers
# ---------------------------------------------------------------------------------------------

# Is <pid> a live <component> started by this script with this run dir?
is_ours() { # <pid> <component>
    local cmd
    cmd="$(cmdline_of "$1")" || return 1
    [[ "$cmd" == "$BIN/$2 "* && "$cmd" == *"$RUN_DIR"* ]]
}

component_pid() { # <component>
    local pid
    pid="$(cat "$RUN_DIR/$1.pid" 2>/dev/null || true)"
    is_ours "$pid" "$1" && echo "$pid"
}


start_component() { # <component> <args...>
    local name="$1" launcher=()
    shift
    if command -v setsid >/dev/null; then launcher=(setsid); fi
    "${launcher[@]}" nohup "$BIN/$name" "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
}

TOKEN=""
api() { # <path>: GET against the API server as the admin; prints the body
    curl -sf --max-time 5 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $TOKEN" \
        "https://$HOST:$APISERVER_PORT$1"
}

wait_for() { # <what> <deadline> <command...>
    local what="$1" deadline="$2" c
    shift 2
    until "$@" >/dev/null 2>&1; do
        for c in "${COMPONENTS[@]}"; do
            if [[ -f "$RUN_DIR/$c.pid" ]] && ! component_pid "$c" >/dev/null; then
                tail -n 30 "$RUN_DIR/$c.log" >&2 || true
                die "$c exited while waiting for $what"
            fi
        done
        (($(date +%s) < deadline)) || die "timed out waiting for $what"
        sleep 0.3
    done
}

write_pki() {
    mkdir -p "$PKI"
    (
        cd "$PKI"
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=agentstream-test-ca" \
            -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
            -keyout apiserver.key -out apiserver.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >san.ext
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -extfile san.ext -out apiserver.crt 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >token
        printf '%s,admin,admin,system:masters\n' "$(cat token)" >tokens.csv
        rm -f apiserver.csr san.ext ca.srl
    )
}

write_kubeconfig() {
    cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: agentstream-test
  cluster:
    server: https://$HOST:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: agentstream-test
  context: {cluster: agentstream-test, user: admin}
current-context: agentstream-test
EOF
    chmod 600 "$KUBECONFIG_FILE"
}

# kwok's lifecycle for pods: scheduled -> Running at once -> Succeeded (exit 0) at once when a
# Job owns the pod; deleted pods go away. Nodes are made Ready. Every container named "job" has
# the log in kwok-pod.log (CRI log format), which kwok serves to the API server as a kubelet does:
# the launcher's log collection goes through the real API path, only the words are fixed.
write_kwok_stages() {
    cat >"$RUN_DIR/kwok-pod.log" <<'EOF'
2026-01-01T00:00:00.000000000Z stdout F kwok ran no container;
2026-01-01T00:00:00.000000000Z stdout F this is the fake node's log.
EOF
    cat >"$RUN_DIR/kwok-stages.yaml" <<EOF
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: sandbox-logs
spec:
  logs:
  - containers: [job]
    logsFile: $RUN_DIR/kwok-pod.log
---
EOF
    cat >>"$RUN_DIR/kwok-stages.yaml" <<'EOF'
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: 'NotIn', values: ['True']}
  next:
    statusTemplate: |
      {{ $now := Now }}
      addresses:
      - {address: {{ NodeIP }}, type: InternalIP}
      allocatable: {cpu: "8", memory: 16Gi, pods: "110"}
      capacity: {cpu: "8", memory: 16Gi, pods: "110"}
      conditions:
      - {lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}, message: kwok is ready, reason: KubeletReady, status: "True", type: Ready}
      daemonEndpoints: {kubeletEndpoint: {Port: {{ NodePort }}}}
      nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: fake, kubeProxyVersion: fake}
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: 'DoesNotExist'}
    - {key: '.status.podIP', operator: 'DoesNotExist'}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: PodScheduled}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        started: true
        state: {running: {startedAt: {{ $now | Quote }}}}
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: 'DoesNotExist'}
    - {key: '.status.phase', operator: 'In', values: ['Running']}
    - {key: '.metadata.ownerReferences.[].kind', operator: 'In', values: ['Job']}
    - {key: '.metadata.annotations["agentstream.dev/tool-call-id"]', operator: 'NotIn', values: ['kwok-exit-3']}
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "False", type: ContainersReady, reason: PodCompleted}
      - {lastTransitionTime: {{ $now | Quote }}, status: "False", type: Ready, reason: PodCompleted}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: PodScheduled}
      phase: Succeeded
---
# A pod whose tool call id is "kwok-exit-3" fails instead: exit code 3, and a termination message
# in the launcher's format (a truncation flag, then the tail of stderr).
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-exit-3
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: 'DoesNotExist'}
    - {key: '.status.phase', operator: 'In', values: ['Running']}
    - {key: '.metadata.annotations["agentstream.dev/tool-call-id"]', operator: 'In', values: ['kwok-exit-3']}
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 3
            finishedAt: {{ $now | Quote }}
            message: "Fkwok: exit 3"
            reason: Error
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Failed
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: 'Exists'}
  next:
    finalizers: {empty: true}
    delete: true
EOF
}

create_nodes() {
    local i body
    for ((i = 0; i < K8S_NODES; i++)); do
        body="{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"kwok-node-$i\",
\"annotations\":{\"kwok.x-k8s.io/node\":\"fake\",\"node.alpha.kubernetes.io/ttl\":\"0\"},
\"labels\":{\"kubernetes.io/hostname\":\"kwok-node-$i\",\"kubernetes.io/os\":\"linux\",
\"kubernetes.io/arch\":\"amd64\",\"type\":\"kwok\"}},\"spec\":{}}"
        curl -sf --max-time 5 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $TOKEN" \
            -H 'Content-Type: application/json' -X POST -d "$body" \
            "https://$HOST:$APISERVER_PORT/api/v1/nodes" >/dev/null \
            || api "/api/v1/nodes/kwok-node-$i" >/dev/null \
            || die "could not create node kwok-node-$i"
    done
}

nodes_ready() {
    local out
    out="$(api /api/v1/nodes)" || return 1
    [[ "$(grep -o '"reason": *"KubeletReady"' <<<"$out" | wc -l)" -ge "$K8S_NODES" ]]
}

default_sa_exists() { api /api/v1/namespaces/default/serviceaccounts/default; }

# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------

all_running() {
    local c
    for c in "${COMPONENTS[@]}"; do component_pid "$c" >/dev/null || return 1; done
}

cmd_install() {
    ensure_installed
    log "Kubernetes $K8S_VERSION and kwok $KWOK_VERSION ready in $BIN"
}

stop_on_failure() {
    local rc=$?
    if ((rc)); then cmd_down >/dev/null 2>&1 || true; fi
    exit "$rc"
}

cmd_up() {
    local start_ms deadline elapsed_ms port
    command -v openssl >/dev/null || die "openssl not found"
    command -v curl >/dev/null || die "curl not found"
    if all_running && TOKEN="$(cat "$PKI/token" 2>/dev/null)" && api /readyz >/dev/null 2>&1; then
        log "already running on https://$HOST:$APISERVER_PORT"
        echo "KUBECONFIG=$KUBECONFIG_FILE"
        return 0
    fi
    cmd_down >/dev/null 2>&1 || true
    ensure_installed
    for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT" "$SCHEDULER_PORT" "$KWOK_PORT"; do
        port_open "$port" && die "port $HOST:$port is already in use by another process"
    done

    start_ms="$(date +%s%3N)"
    deadline=$(($(date +%s) + K8S_START_TIMEOUT))
    # A start that fails half-way stops what it started.
    trap stop_on_failure EXIT
    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR"
    write_pki
    TOKEN="$(cat "$PKI/token")"
    write_kubeconfig
    write_kwok_stages

    start_component etcd --name agentstream-test --data-dir "$RUN_DIR/etcd-data" \
        --listen-client-urls "http://$HOST:$ETCD_PORT" --advertise-client-urls "http://$HOST:$ETCD_PORT" \
        --listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
        --initial-cluster "agentstream-test=http://$HOST:$ETCD_PEER_PORT" \
        --unsafe-no-fsync --quota-backend-bytes 1073741824 --log-level warn
    wait_for etcd "$deadline" curl -sf --max-time 2 "http://$HOST:$ETCD_PORT/health"

    start_component kube-apiserver --bind-address "$HOST" --advertise-address "$HOST" \
        --secure-port "$APISERVER_PORT" --etcd-servers "http://$HOST:$ETCD_PORT" \
        --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
        --authorization-mode Node,RBAC --anonymous-auth=false \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
        --service-account-issuer "https://kubernetes.default.svc" \
        --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=false --endpoint-reconciler-type none \
        --disable-admission-plugins TaintNodesByCondition \
        --enable-priority-and-fairness=false --watch-cache=true --profiling=false \
        --cert-dir "$RUN_DIR/apiserver-certs" --v 1
    wait_for "the API server" "$deadline" api /readyz

    start_component kube-controller-manager --kubeconfig "$KUBECONFIG_FILE" \
        --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
        --bind-address "$HOST" --secure-port "$KCM_PORT" --leader-elect=false \
        --controllers job-controller,ttl-after-finished-controller,namespace-controller,garbage-collector-controller,serviceaccount-controller,pod-garbage-collector-controller \
        --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
        --cert-dir "$RUN_DIR/kcm-certs" --concurrent-job-syncs 5 --v 1
    start_component kube-scheduler --kubeconfig "$KUBECONFIG_FILE" \
        --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
        --bind-address "$HOST" --secure-port "$SCHEDULER_PORT" --leader-elect=false \
        --cert-dir "$RUN_DIR/scheduler-certs" --v 1
    start_component kwok --kubeconfig "$KUBECONFIG_FILE" --config "$RUN_DIR/kwok-stages.yaml" \
        --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
        --node-ip "$HOST" --node-port "$KWOK_PORT" --server-address "$HOST:$KWOK_PORT" \
        --cidr 10.244.0.0/16
    create_nodes
    wait_for "$K8S_NODES ready kwok nodes" "$deadline" nodes_ready
    wait_for "the default service account" "$deadline" default_sa_exists

    trap - EXIT
    elapsed_ms=$(($(date +%s%3N) - start_ms))
    log "ready in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s on https://$HOST:$APISERVER_PORT; logs in $RUN_DIR"
    echo "KUBECONFIG=$KUBECONFIG_FILE"
}

cmd_down() {
    local c pid pids=() waited=0 alive
    # Reverse start order: kwok and the controllers first, etcd last.
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        c="${COMPONENTS[$i]}"
        if pid="$(component_pid "$c")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$c:$pid")
        fi
        rm -f "$RUN_DIR/$c.pid"
    done
    while :; do
        alive=0
        for c in "${pids[@]}"; do is_ours "${c#*:}" "${c%%:*}" && alive=1; done
        ((alive)) || break
        if ((waited >= K8S_STOP_TIMEOUT * 2)); then
            for c in "${pids[@]}"; do kill -KILL "${c#*:}" 2>/dev/null || true; done
            sleep 0.5
            break
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    rm -rf "$RUN_DIR/etcd-data"
    if ((${#pids[@]})); then log "stopped ${pids[*]}"; else log "not running"; fi
}

cmd_status() {
    if ! component_pid kube-apiserver >/dev/null; then
        log "not running"
        return 3
    fi
    TOKEN="$(cat "$PKI/token" 2>/dev/null || true)"
    if api /readyz >/dev/null 2>&1; then
        log "running on https://$HOST:$APISERVER_PORT"
        echo "KUBECONFIG=$KUBECONFIG_FILE"
        return 0
    fi
    log "API server alive but not ready"
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
