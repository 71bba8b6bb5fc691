#!/bin/bash
# distpar worker entrypoint.
#   (no args) | sshd [sshd args...]  run sshd in the foreground (default)
#   CMD [ARGS...]                    run CMD, e.g. `ray start --head --block ...`;
#                                    with DISTPAR_START_SSHD=1 sshd is started in
#                                    the background first.
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
exec "$@"
