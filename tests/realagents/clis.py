"""Where the real agent CLIs are (scripts/install-agents.sh puts them in a cache outside the repository) and
their versions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CLIS = ("claude", "codex", "gemini", "aider")
AGENTS_DIR = Path(os.environ.get("DISTPAR_AGENTS_DIR") or Path.home() / ".cache" / "distpar-agents")
# The model each preset is run with against the stand-in (aider needs a provider prefix litellm knows).
MODELS = {"claude": None, "codex": None, "gemini": None, "aider": "openai/gpt-4o"}
_versions: dict[str, str] = {}


def cli_path(name: str) -> Path | None:
    p = AGENTS_DIR / "bin" / name
    return p if p.exists() and os.access(p, os.X_OK) else None


def _quiet_env() -> dict[str, str]:
    return {"DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "NO_UPDATE_NOTIFIER": "1", "GEMINI_CLI_NO_RELAUNCH": "true"}


def cli_version(name: str) -> str:
    if name not in _versions:
        path = cli_path(name)
        if path is None:
            _versions[name] = "not installed"
        else:
            try:
                out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **_quiet_env()}).stdout
                _versions[name] = next((ln.strip() for ln in out.splitlines() if ln.strip()), "?")
            except (OSError, subprocess.TimeoutExpired) as exc:
                _versions[name] = f"broken ({exc})"
    return _versions[name]


def report_header() -> list[str]:
    """For pytest's report header (tests/conftest.py): the version of each real CLI, or that it is missing."""
    return [f"real agent CLIs ({AGENTS_DIR}): " + ", ".join(f"{n} {cli_version(n)}" for n in CLIS)]


def require(name: str) -> Path:
    path = cli_path(name)
    if path is None:
        why = f"{name} is not installed in {AGENTS_DIR} (run scripts/install-agents.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return path
