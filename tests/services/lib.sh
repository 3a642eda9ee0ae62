# shellcheck shell=bash
# Shared by the service scripts in this folder (sourced, not run): logging, finding a
# service's own process, probing a loopback port, and showing a log's last lines.
# The sourcing script sets SERVICE (the log prefix) first, and HOST before probing ports.

log() { printf '[%s] %s\n' "$SERVICE" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The command line of a process, its arguments joined by spaces; fails for a bad pid.
cmdline_of() { # <pid>
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline"
}

# Running and not a zombie (a server that died is our zombie child until the script
# exits, so `kill -0` would still say yes).
pid_alive() { # <pid>
    local stat
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z ]]
}

# The service's process: the pid in its pid file if `owns` recognises it, else the first
# process `owns` recognises (a pid file can be lost or stale).
find_pid() { # <pid file> <owns: a function taking a pid>
    local pid p
    if [[ -f "$1" ]]; then
        pid="$(cat "$1" 2>/dev/null || true)"
        if "$2" "$pid"; then echo "$pid"; return 0; fi
    fi
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        if "$2" "$pid"; then echo "$pid"; return 0; fi
    done
    return 1
}

port_open() { # <port> on $HOST
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# The last 40 lines of each non-empty file, long lines cut, for a failed start-up.
show_log_tail() { # <file>...
    local f
    for f in "$@"; do
        if [[ -s "$f" ]]; then
            log "---- last lines of $f ----"
            tail -n 40 "$f" | cut -c 1-600 >&2 || true
        fi
    done
}
