#!/bin/bash
# distpar worker entrypoint.
#   (no args) | sshd [sshd args...]  run sshd in the foreground (default)
#   CMD [ARGS...]                    run CMD, e.g. `ray start --head --block ...`;
#                                    with DISTPAR_START_SSHD=1 sshd is started in
#                                    the background first; `ray start` is tried
#                                    DISTPAR_RAY_START_ATTEMPTS times (default 1).
# Authorized keys for root (either or both, read at every start):
#   SSH_AUTHORIZED_KEYS        env var holding one or more public key lines
#   SSH_AUTHORIZED_KEYS_FILE   path of a mounted file (default
#                              /etc/distpar/authorized_keys)
# Host keys are generated at start if absent (bind-mount existing
# /etc/ssh/ssh_host_*_key files to keep them stable across containers).
# Secrets as files (compose `secrets:`): every /run/secrets/NAME whose NAME is
# an environment variable name (e.g. ANTHROPIC_API_KEY) is exported to CMD
# (so to Ray and the agents it starts) unless NAME is set already;
# DISTPAR_SECRETS_DIR changes the directory. Values are never printed.
set -euo pipefail

log() { echo "distpar-entrypoint: $*" >&2; }

setup_sshd() {
    mkdir -p /run/sshd && chmod 0755 /run/sshd
    ssh-keygen -A >/dev/null
    install -d -m 0700 /root/.ssh
    local auth=/root/.ssh/authorized_keys file="${SSH_AUTHORIZED_KEYS_FILE:-/etc/distpar/authorized_keys}"
    local tmp
    tmp=$(mktemp)
    [[ -f $auth ]] && cat "$auth" >>"$tmp"
    [[ -n ${SSH_AUTHORIZED_KEYS:-} ]] && printf '%s\n' "$SSH_AUTHORIZED_KEYS" >>"$tmp"
    [[ -r $file ]] && cat "$file" >>"$tmp"
    # Drop blank lines and duplicates, keep order.
    awk 'NF && !seen[$0]++' "$tmp" >"$auth"
    rm -f "$tmp"
    chmod 0600 "$auth"
    if [[ ! -s $auth ]]; then
        log "warning: no authorized keys (set SSH_AUTHORIZED_KEYS or mount $file); nobody can log in"
    fi
    /usr/sbin/sshd -t
}

load_secrets() {
    local dir=${DISTPAR_SECRETS_DIR:-/run/secrets} f name
    [[ -d $dir ]] || return 0
    for f in "$dir"/*; do
        name=${f##*/}
        [[ -f $f && -r $f && $name =~ ^[A-Z_][A-Z0-9_]*$ ]] || continue
        [[ -n ${!name:-} ]] && continue
        export "$name=$(<"$f")"
        log "exported the secret $name from $f"
    done
}

load_secrets
cmd=${1:-sshd}
if [[ $cmd == sshd ]]; then
    [[ $# -gt 0 ]] && shift
    setup_sshd
    exec /usr/sbin/sshd -D -e "$@"
fi

if [[ ${DISTPAR_START_SSHD:-0} == 1 ]]; then
    setup_sshd
    /usr/sbin/sshd -e
fi

# `ray start` gives its node 30 s to register with the GCS (fixed in Ray 2.60) and exits when it has not; on a
# loaded host that happens to nodes that would have come up. DISTPAR_RAY_START_ATTEMPTS=N (compose sets it)
# starts it again, after `ray stop --force` has cleaned up what the attempt left in this container, N times in
# all. SIGTERM and SIGINT are passed on to it.
attempts=${DISTPAR_RAY_START_ATTEMPTS:-1}
if [[ $cmd == ray && ${2:-} == start && $attempts =~ ^[0-9]+$ && $attempts -gt 1 ]]; then
    child=""
    trap '[[ -n $child ]] && kill -TERM "$child" 2>/dev/null; wait; exit 143' TERM INT
    for ((i = 1; ; i++)); do
        "$@" &
        child=$!
        rc=0
        wait "$child" || rc=$?
        child=""
        ((rc != 0 && i < attempts)) || exit "$rc"
        log "ray start exited $rc (attempt $i of $attempts); starting it again"
        ray stop --force >/dev/null 2>&1 || true
        sleep 2
    done
fi
exec "$@"
