"""Helpers for the safety tests: what a misbehaving agent, repository or machine does to a run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distpar.coordinator.journal import Journal


def agent_calls(log: Path) -> list[dict[str, Any]]:
    """Invocations recorded by the fake agent (FAKE_AGENT_LOG), oldest first."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def event_kinds(run_id: str) -> list[str]:
    j = journal()
    try:
        return [e.kind for e in j.events(run_id)]
    finally:
        j.close()


def sh(command: str) -> str:
    """A fake-agent prompt line that runs ``command`` with /bin/sh in the worktree."""
    return "@fake sh " + json.dumps(command)
