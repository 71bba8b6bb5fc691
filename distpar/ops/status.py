"""What ``distpar status`` (and the MCP server's ``status`` tool) says of a journaled run."""

from __future__ import annotations

import json
import time
from typing import Any

from distpar.coordinator.journal import Journal
from distpar.ops.clean import run_is_live


def run_state(journal: Journal, run: dict[str, Any]) -> tuple[str, float]:
    """The state to show (``crashed`` for a run whose coordinator is gone) and its wall time so far."""
    summ = json.loads(run["summary"]) if run["summary"] else {}
    if run["state"] != "running":
        return run["state"], float(summ.get("wall") or ((run["ended"] or run["started"]) - run["started"]))
    if run_is_live(journal, run):
        return "running", time.time() - run["started"]
    events = journal.events(run["id"])
    return "crashed", (events[-1].ts if events else run["started"]) - run["started"]
