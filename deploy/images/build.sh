#!/usr/bin/env bash
# Build the distpar container images offline (no container registry needed):
#
#   distpar-base:bookworm   debootstrap minbase rootfs imported with `docker import`
#   distpar-worker:<hash>   venv /opt/distpar with distpar[ray,ssh] installed from a
#   distpar-worker:latest   host-built wheelhouse, sshd, entrypoint (Dockerfile here)
#
# Idempotent and cached: the base is built once per tag, the wheelhouse
# (deploy/.wheelhouse) is re-resolved only when the declared requirements,
# extras or host python change (else only the distpar wheel is rebuilt), and the worker is rebuilt only when the hash of its inputs (wheels,
# Dockerfile, entrypoint, sshd config, base image id, build args) changes.
# Safe for CI: no prompts, no stdin, logs under deploy/.build/logs.
#
# Environment knobs (all optional):
#   BASE_IMAGE=debian:bookworm-slim  use an existing/public base instead of debootstrap
#   REBUILD_BASE=1      rebuild distpar-base:bookworm even if the tag exists
#   REFRESH_WHEELS=1    re-resolve the dependency wheelhouse
#   REBUILD_WORKER=1    rebuild the worker even if its hash tag exists
#   INSTALL_CLAUDE=1    also install the agent CLI with npm (needs network;
#                       BUILD_CA_BUNDLE, default the host's, is trusted by npm)
#   CLAUDE_CODE_PACKAGE=@anthropic-ai/claude-code@2.1.332   npm spec for it: NAME@X.Y.Z, an
#                       exact version (the spec is part of the image hash, a range or tag would not be)
#   EXTRAS=ray,ssh      extras of the project to install
#   PYTHON=python3      host interpreter used to build wheels (its major.minor and
#                       the image's python3 must be PYTHON_MINOR in distpar/backends/raycompat.py)
#   DEBIAN_MIRROR=URL   override the mirror (default: read from /etc/apt)
#   VERBOSE=1           stream command output instead of logging to files
#   DOCKERD_WAIT=60     seconds to wait for a dockerd this script starts
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEPLOY_DIR=$(dirname "$HERE")
REPO_ROOT=${REPO_ROOT:-$(dirname "$DEPLOY_DIR")}

SUITE=bookworm
BASE_TAG=distpar-base:$SUITE
BASE_IMAGE=${BASE_IMAGE:-$BASE_TAG}
BASE_PACKAGES=python3,python3-venv,git,openssh-server,procps,ca-certificates
WORKER_REPO=${WORKER_REPO:-distpar-worker}
EXTRAS=${EXTRAS:-ray,ssh}
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-$DEPLOY_DIR/.wheelhouse}
BUILD_DIR=${BUILD_DIR:-$DEPLOY_DIR/.build}
LOG_DIR=$BUILD_DIR/logs
INSTALL_CLAUDE=${INSTALL_CLAUDE:-0}
CLAUDE_CODE_PACKAGE=${CLAUDE_CODE_PACKAGE:-@anthropic-ai/claude-code@2.1.332}
BUILD_CA_BUNDLE=${BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
REBUILD_BASE=${REBUILD_BASE:-0}
REFRESH_WHEELS=${REFRESH_WHEELS:-0}
REBUILD_WORKER=${REBUILD_WORKER:-0}
VERBOSE=${VERBOSE:-0}
DOCKERD_WAIT=${DOCKERD_WAIT:-60}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/distpar-dockerd.log}
# Fixed timestamps make the distpar wheel (and so the worker hash) reproducible.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
export DEBIAN_FRONTEND=noninteractive

case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--help]" >&2; exit 2 ;;
esac

# The one pinned Ray release and Python minor (distpar/backends/raycompat.py; pyproject.toml and the k8s manifest
# repeat them, and a test checks that they agree).
pinned() { sed -n "s/^$1 = \"\(.*\)\".*/\1/p" "$REPO_ROOT/distpar/backends/raycompat.py"; }
RAY_VERSION=$(pinned RAY_VERSION)
PYTHON_MINOR=$(pinned PYTHON_MINOR)

# ------------------------------------------------------------------ helpers --
log() { printf '[build %5ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "need root (or passwordless sudo) for: $*"
    fi
}

# run_logged NAME CMD...: run CMD, output to $LOG_DIR/NAME.log (or the terminal
# with VERBOSE=1); on failure show the log tail.
run_logged() {
    local name=$1
    shift
    if [[ $VERBOSE == 1 ]]; then
        "$@" </dev/null 9>&-
        return
    fi
    local logf=$LOG_DIR/$name.log
    if ! "$@" </dev/null >"$logf" 2>&1 9>&-; then
        echo "---- last lines of $logf ----" >&2
        tail -n 60 "$logf" >&2
        die "$name failed (full log: $logf)"
    fi
}

# timed LABEL FUNC...: run a step and report its wall time.
declare -a TIMINGS=()
timed() {
    local label=$1 t0=$EPOCHREALTIME
    shift
    log "==> $label"
    "$@"
    local dt
    dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    TIMINGS+=("$(printf '%-22s %7ss' "$label" "$dt")")
    log "<== $label: ${dt}s"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

apt_install() {
    log "apt-get install $*"
    run_logged apt-update as_root apt-get update -q
    run_logged "apt-install-$1" as_root apt-get install -y -q --no-install-recommends "$@"
}

# ------------------------------------------------------------------- docker --
ensure_docker() {
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        apt_install docker.io
    fi
    if [[ -n ${DOCKER_HOST:-} && $DOCKER_HOST != unix:///var/run/docker.sock ]]; then
        docker info >/dev/null 2>&1 || die "DOCKER_HOST=$DOCKER_HOST does not answer"
    elif ! docker info >/dev/null 2>&1; then
        if [[ -S /var/run/docker.sock ]] && [[ -f /var/run/docker.pid ]] &&
            kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
            die "dockerd is running but 'docker info' fails (permissions on /var/run/docker.sock?)"
        fi
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
            log "starting docker via systemctl"
            as_root systemctl start docker 9>&- || true
        fi
        if ! docker info >/dev/null 2>&1; then
            log "starting dockerd in the background (log: $DOCKERD_LOG)"
            # shellcheck disable=SC2016  # expanded by the inner bash
            # 9>&-: the daemon must not inherit (and hold forever) our lock fd.
            as_root bash -c 'nohup setsid dockerd >>"$1" 2>&1 </dev/null 9>&- &' _ "$DOCKERD_LOG"
        fi
        local i
        for ((i = 0; i < DOCKERD_WAIT; i++)); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
        if ! docker info >/dev/null 2>&1; then
            tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "docker engine did not come up within ${DOCKERD_WAIT}s (see $DOCKERD_LOG)"
        fi
    fi
    # Without the buildx plugin the CLI needs the classic builder explicitly.
    if ! docker buildx version >/dev/null 2>&1; then
        export DOCKER_BUILDKIT=0
    fi
    log "docker engine $(docker version -f '{{.Server.Version}}' 2>/dev/null) ready"
}

# --------------------------------------------------------------------- base --
# Print the first URI serving $SUITE in the host's apt sources (deb822 or
# one-line format); nothing if none is found.
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk -v suite="$SUITE" '
            function flush() {
                if (!found && (" " types " ") ~ / deb / && tolower(enabled) != "no" &&
                    (" " suites " ") ~ (" " suite " ") && uris != "") {
                    split(uris, u, /[ \t]+/); print u[1]; found = 1
                }
                types = uris = suites = enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^Types:/   { sub(/^Types:[ \t]*/, "");   types = $0 }
            /^URIs:/    { sub(/^URIs:[ \t]*/, "");    uris = $0 }
            /^Suites:/  { sub(/^Suites:[ \t]*/, "");  suites = $0 }
            /^Enabled:/ { sub(/^Enabled:[ \t]*/, ""); enabled = $0 }
            END { flush() }' "$f" | head -n 1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f"
    done
}

ROOTFS_TMP=""
cleanup_rootfs() {
    [[ -n $ROOTFS_TMP && -d $ROOTFS_TMP ]] || return 0
    # debootstrap may leave proc/sys mounted if it was interrupted.
    local m
    awk -v d="$ROOTFS_TMP/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do as_root umount -l "$m" || true; done
    as_root rm -rf --one-file-system "$ROOTFS_TMP"
    ROOTFS_TMP=""
}
trap cleanup_rootfs EXIT

slim_rootfs() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    as_root bash -euo pipefail -c '
        r=$1
        rm -f "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin
        rm -rf "$r"/var/lib/apt/lists/* && mkdir -p "$r"/var/lib/apt/lists/partial
        rm -f "$r"/etc/ssh/ssh_host_*            # generated per container at start
        find "$r"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
        rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/*
        find "$r"/usr/share/locale -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
        rm -rf "$r"/tmp/* "$r"/var/tmp/* "$r"/var/log/bootstrap.log
        : >"$r"/etc/machine-id
        : >"$r"/etc/resolv.conf
        echo localhost >"$r"/etc/hostname
        cat >"$r"/etc/dpkg/dpkg.cfg.d/01-distpar-slim <<EOF
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
EOF
        cat >"$r"/etc/apt/apt.conf.d/01-distpar-slim <<EOF
APT::Install-Recommends "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
    ' _ "$1"
}

build_base() {
    if [[ $BASE_IMAGE != "$BASE_TAG" ]]; then
        if ! image_exists "$BASE_IMAGE"; then
            log "pulling BASE_IMAGE=$BASE_IMAGE"
            docker pull -q "$BASE_IMAGE" >/dev/null ||
                die "BASE_IMAGE=$BASE_IMAGE is not present locally and cannot be pulled"
        fi
        log "using BASE_IMAGE=$BASE_IMAGE (debootstrap skipped)"
        return
    fi
    if image_exists "$BASE_TAG" && [[ $REBUILD_BASE != 1 ]]; then
        log "$BASE_TAG exists (cached; REBUILD_BASE=1 to rebuild)"
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    local mirror
    mirror=${DEBIAN_MIRROR:-$(find_mirror | head -n 1)}
    if [[ -n $mirror ]]; then
        log "debootstrap $SUITE (minbase) from the mirror configured in /etc/apt"
    else
        log "debootstrap $SUITE (minbase) from debootstrap's default mirror (none found in /etc/apt)"
    fi
    ROOTFS_TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/distpar-rootfs.XXXXXX")
    local root=$ROOTFS_TMP/root
    # shellcheck disable=SC2086  # $mirror is empty or one word
    run_logged debootstrap as_root debootstrap --variant=minbase \
        --include="$BASE_PACKAGES" "$SUITE" "$root" $mirror
    slim_rootfs "$root"
    log "docker import -> $BASE_TAG"
    as_root tar -C "$root" --numeric-owner -c . |
        docker import \
            --change 'ENV LANG=C.UTF-8' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["/bin/bash"]' \
            --change "LABEL org.distpar.base=debootstrap-minbase-$SUITE" \
            --message "debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE" \
            - "$BASE_TAG" >/dev/null
    cleanup_rootfs
}

# The wheels are built by the host interpreter: its major.minor must match the
# image's python3 (cp311 wheels for bookworm).
check_python_abi() {
    local host img
    host=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if ! img=$(docker run --rm --entrypoint python3 "$BASE_IMAGE" \
        -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
        log "warning: $BASE_IMAGE has no python3 yet (the Dockerfile installs Debian's); assuming it matches $host"
        return
    fi
    [[ $host == "$img" ]] ||
        die "host $PYTHON is $host but $BASE_IMAGE has python3 $img: the wheels would not install (set PYTHON=python$img)"
    [[ $img == "$PYTHON_MINOR" ]] ||
        die "$BASE_IMAGE has python3 $img but distpar/backends/raycompat.py pins Python $PYTHON_MINOR for coordinator and cluster"
}

# --------------------------------------------------------------- wheelhouse --
PROJECT=""      # normalized distribution name, e.g. distpar
LOCK=$WHEELHOUSE/requirements.lock

# Copy the project sources (tracked + untracked, minus ignored files) to a
# scratch dir, so the build never writes build/ or *.egg-info into the repo.
stage_sources() {
    local src=$BUILD_DIR/src
    rm -rf "$src" && mkdir -p "$src"
    if git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$REPO_ROOT" && git ls-files -z -co --exclude-standard) |
            (cd "$REPO_ROOT" && tar --null -T - -cf -) | tar -C "$src" -xf -
    else
        tar -C "$REPO_ROOT" --exclude=./.git --exclude=./deploy/.wheelhouse \
            --exclude=./deploy/.build -cf - . | tar -C "$src" -xf -
    fi
    [[ -f $src/pyproject.toml ]] || die "no pyproject.toml at $REPO_ROOT"
    PROJECT=$("$PYTHON" -c '
import re, sys, tomllib
name = tomllib.load(open(sys.argv[1], "rb"))["project"]["name"]
print(re.sub(r"[-_.]+", "_", name).lower())' "$src/pyproject.toml")
}

# What the dependency closure depends on: the declared requirements (not the
# rest of pyproject.toml), the extras and the host interpreter/platform.
deps_key() {
    local src=$BUILD_DIR/src
    {
        "$PYTHON" -c '
import json, sys, sysconfig, tomllib
doc = tomllib.load(open(sys.argv[1], "rb"))
proj = doc.get("project", {})
print(json.dumps([doc.get("build-system"), proj.get("dependencies"),
                  proj.get("optional-dependencies"), proj.get("dynamic"),
                  sys.version_info[:2], sysconfig.get_platform()], sort_keys=True))' \
            "$src/pyproject.toml"
        [[ ! -f $src/setup.py ]] || cat "$src/setup.py"
        [[ ! -f $src/setup.cfg ]] || cat "$src/setup.cfg"
        echo "extras=$EXTRAS"
    } | sha256sum | cut -d' ' -f1
}

build_wheels() {
    stage_sources
    local key src=$BUILD_DIR/src
    key=$(deps_key)
    if [[ $REFRESH_WHEELS != 1 && -f $LOCK && -f $WHEELHOUSE/.deps-key &&
        $(cat "$WHEELHOUSE/.deps-key") == "$key" ]]; then
        log "dependency wheels up to date ($(wc -l <"$LOCK") pinned); rebuilding the $PROJECT wheel only"
        local tmp
        tmp=$(mktemp -d "$BUILD_DIR/wheel.XXXXXX")
        run_logged pip-wheel-project "$PYTHON" -m pip wheel --no-deps -w "$tmp" "$src"
        rm -f "$WHEELHOUSE/$PROJECT"-*.whl
        mv "$tmp"/*.whl "$WHEELHOUSE"/
        rm -rf "$tmp"
        return
    fi
    log "resolving ${PROJECT}[$EXTRAS] into the wheelhouse (reusing existing wheels)"
    local new=$WHEELHOUSE.new
    rm -rf "$new" && mkdir -p "$new" "$WHEELHOUSE"
    run_logged pip-wheel "$PYTHON" -m pip wheel --find-links "$WHEELHOUSE" -w "$new" "${src}[$EXTRAS]"
    # Pin exactly what was resolved (names/versions from the wheel file names).
    local f base
    for f in "$new"/*.whl; do
        base=$(basename "$f")
        case "$base" in "$PROJECT"-*) continue ;; esac
        echo "$base" | awk -F- '{ n = tolower($1); gsub(/_/, "-", n); print n "==" $2 }'
    done | sort >"$new/requirements.lock"
    echo "$key" >"$new/.deps-key"
    rm -rf "$WHEELHOUSE" && mv "$new" "$WHEELHOUSE"
    log "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
}

# ------------------------------------------------------------------- worker --
WORKER_HASH=""
stage_context() {
    local ctx=$BUILD_DIR/context f
    rm -rf "$ctx" && mkdir -p "$ctx/deps" "$ctx/app"
    for f in "$WHEELHOUSE"/*.whl; do
        case "$(basename "$f")" in
            "$PROJECT"-*) ln -f "$f" "$ctx/app/" 2>/dev/null || cp "$f" "$ctx/app/" ;;
            *) ln -f "$f" "$ctx/deps/" 2>/dev/null || cp "$f" "$ctx/deps/" ;;
        esac
    done
    compgen -G "$ctx/app/*.whl" >/dev/null || die "no $PROJECT wheel in $WHEELHOUSE"
    grep -qx "ray==$RAY_VERSION" "$LOCK" ||
        die "the wheelhouse holds $(grep '^ray==' "$LOCK" || echo 'no ray'), but distpar/backends/raycompat.py pins ray==$RAY_VERSION (so must pyproject.toml's ray extra)"
    cp "$LOCK" "$HERE/Dockerfile" "$HERE/entrypoint.sh" "$HERE/node-health" "$HERE/sshd_config" "$ctx/"
    # CA bundle for npm in the throwaway `claude` stage (TLS-intercepting proxies).
    if [[ $INSTALL_CLAUDE == 1 && -r $BUILD_CA_BUNDLE ]]; then
        cp "$BUILD_CA_BUNDLE" "$ctx/build-ca.crt"
    else
        : >"$ctx/build-ca.crt"
    fi
    WORKER_HASH=$({
        (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
        echo "base=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")"
        echo "install_claude=$INSTALL_CLAUDE package=$CLAUDE_CODE_PACKAGE ray=$RAY_VERSION"
    } | sha256sum | cut -c1-12)
}

build_worker() {
    stage_context
    local tag=$WORKER_REPO:$WORKER_HASH
    if image_exists "$tag" && [[ $REBUILD_WORKER != 1 ]]; then
        log "$tag exists (inputs unchanged, cached)"
    else
        local -a args=(
            --build-arg BASE_IMAGE="$BASE_IMAGE"
            --build-arg INSTALL_CLAUDE="$INSTALL_CLAUDE"
            --build-arg CLAUDE_CODE_PACKAGE="$CLAUDE_CODE_PACKAGE"
            --build-arg RAY_VERSION="$RAY_VERSION"
        )
        # Tag the intermediate stages (they are the layer cache of the next
        # build), then drop older untagged ones instead of leaking them.
        local stage
        for stage in deps claude; do
            log "docker build --target $stage -> $WORKER_REPO:stage-$stage"
            run_logged "docker-build-$stage" docker build "${args[@]}" --target "$stage" \
                -t "$WORKER_REPO:stage-$stage" "$BUILD_DIR/context"
        done
        log "docker build -> $tag"
        run_logged docker-build docker build "${args[@]}" \
            --label org.distpar.inputs-hash="$WORKER_HASH" -t "$tag" "$BUILD_DIR/context"
        docker image prune -f --filter label=org.distpar.stage >/dev/null
    fi
    docker tag "$tag" "$WORKER_REPO:latest"
    # Drop older hash tags of ours (ignore ones still used by containers).
    local old
    for old in $(docker image ls "$WORKER_REPO" --format '{{.Tag}}' | grep -E '^[0-9a-f]{12}$' || true); do
        [[ $old == "$WORKER_HASH" ]] || docker rmi "$WORKER_REPO:$old" >/dev/null 2>&1 || true
    done
    echo "$tag" >"$BUILD_DIR/worker-image"
}

# --------------------------------------------------------------------- main --
[[ -n $RAY_VERSION && -n $PYTHON_MINOR ]] || die "no RAY_VERSION / PYTHON_MINOR in $REPO_ROOT/distpar/backends/raycompat.py"
if [[ $INSTALL_CLAUDE == 1 && ! $CLAUDE_CODE_PACKAGE =~ ^@?[^@]+@[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    die "CLAUDE_CODE_PACKAGE=$CLAUDE_CODE_PACKAGE: give an exact version (NAME@X.Y.Z), or two builds of one tag could differ"
fi
mkdir -p "$BUILD_DIR" "$LOG_DIR"
exec 9>"$BUILD_DIR/.lock"
flock -w 3600 9 || die "another build.sh holds $BUILD_DIR/.lock"

timed "docker engine" ensure_docker
timed "base image" build_base
timed "python check" check_python_abi
timed "wheelhouse" build_wheels
timed "worker image" build_worker

log "done in ${SECONDS}s"
printf '  %s\n' "${TIMINGS[@]}" >&2
for img in "$BASE_IMAGE" "$WORKER_REPO:$WORKER_HASH"; do
    printf '  %-32s %s\n' "$img" "$(docker image inspect -f '{{.Size}}' "$img" | numfmt --to=si --round=nearest --suffix=B)" >&2
done
echo "DISTPAR_WORKER_IMAGE=$WORKER_REPO:$WORKER_HASH"
