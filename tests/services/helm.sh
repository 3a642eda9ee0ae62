#!/usr/bin/env bash
# The Helm CLI, for linting, rendering and installing the chart in helm/agentstream. No
# download site: it is built from its Go module with the Go toolchain, once, into the cache.
#
#   tests/services/helm.sh install   build helm into $AGENTSTREAM_CACHE/helm-<version>/bin (once;
#                                    a cold build takes a few minutes on 2 cores, under `nice`)
#   tests/services/helm.sh path      install if needed, print the binary's path on stdout
#
# Environment (all optional):
#   HELM_VERSION        module version of helm.sh/helm/v3 (default v3.22.0)
#   AGENTSTREAM_CACHE   default ~/.cache/agentstream
set -euo pipefail

version="${HELM_VERSION:-v3.22.0}"
cache="${AGENTSTREAM_CACHE:-$HOME/.cache/agentstream}"
bin_dir="$cache/helm-$version/bin"
helm="$bin_dir/helm"

say() { echo "[helm] $*" >&2; }

install() {
    if [ -x "$helm" ]; then
        return 0
    fi
    command -v go >/dev/null || { say "the Go toolchain is needed to build helm"; exit 1; }
    local staging
    staging="$(mktemp -d "$cache/helm-build.XXXXXX")"
    say "building helm $version from its Go module (cached in $bin_dir)"
    local started=$SECONDS
    if ! GOBIN="$staging" CGO_ENABLED=0 nice -n 10 go install "helm.sh/helm/v3/cmd/helm@$version" >&2; then
        rm -rf "$staging"
        say "building helm $version failed"
        exit 1
    fi
    mkdir -p "$bin_dir"
    mv "$staging/helm" "$helm"
    rm -rf "$staging"
    say "built in $((SECONDS - started))s: $("$helm" version --short)"
}

case "${1:-}" in
    install) mkdir -p "$cache"; install ;;
    path) mkdir -p "$cache"; install; echo "$helm" ;;
    *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
