#!/usr/bin/env bash
# The real agent CLIs for the realagents test tier, installed from the package registries into a cache outside
# the repository: npm packages with --prefix, aider in its own venv. Idempotent: a cached install is reused
# (a few seconds); prints one "NAME VERSION" line per CLI at the end.
#   DISTPAR_AGENTS_DIR   the cache (default ~/.cache/distpar-agents)
#   PYTHON               the Python for aider's venv (default python3; aider-chat needs 3.10-3.12)
set -euo pipefail
DIR=${DISTPAR_AGENTS_DIR:-$HOME/.cache/distpar-agents}
PYTHON=${PYTHON:-python3}
# Pinned to what the realagents tier was verified against (README "Agents"); bump together with the README.
NPM_PKGS=(@anthropic-ai/claude-code@2.1.332 @openai/codex@0.171.0 @google/gemini-cli@0.61.0)
AIDER_PKG=aider-chat==0.86.*
mkdir -p "$DIR"
# One installer at a time (two test runs sharing the cache).
exec 9>"$DIR/.lock"
flock -w 900 9 || { echo "install-agents.sh: $DIR/.lock is held by another install" >&2; exit 1; }

stamp_ok() { [ -f "$DIR/$1.stamp" ] && [ "$(cat "$DIR/$1.stamp")" = "$2" ]; }

npm_want="${NPM_PKGS[*]}"
if ! stamp_ok npm "$npm_want" || [ ! -x "$DIR/npm/node_modules/.bin/claude" ]; then
  echo "install-agents.sh: npm install ${NPM_PKGS[*]} into $DIR/npm"
  mkdir -p "$DIR/npm"
  npm install --prefix "$DIR/npm" --no-audit --no-fund --loglevel=error "${NPM_PKGS[@]}" >/dev/null
  echo "$npm_want" >"$DIR/npm.stamp"
fi

if ! stamp_ok aider "$AIDER_PKG" || [ ! -x "$DIR/aider/bin/aider" ]; then
  echo "install-agents.sh: pip install $AIDER_PKG into $DIR/aider"
  rm -rf "$DIR/aider"
  "$PYTHON" -m venv "$DIR/aider"
  "$DIR/aider/bin/python" -m pip install --quiet --disable-pip-version-check "$AIDER_PKG" 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$AIDER_PKG" >"$DIR/aider.stamp"
fi

mkdir -p "$DIR/bin"
for name in claude codex gemini; do ln -sfn "../npm/node_modules/.bin/$name" "$DIR/bin/$name"; done
ln -sfn ../aider/bin/aider "$DIR/bin/aider"

# Versions, with nothing from the network (each CLI is told not to update or phone home).
export DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 NO_UPDATE_NOTIFIER=1
for name in claude codex gemini aider; do
  v=$(timeout 60 "$DIR/bin/$name" --version 2>/dev/null </dev/null | grep -m1 -E '[0-9]+\.[0-9]+' || true)
  echo "$name ${v:-?}"
done
