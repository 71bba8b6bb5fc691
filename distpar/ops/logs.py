"""Agent logs of a run: where each batch's log is, following one while its batch runs, and the live copy on
the coordinator of what a remote unit prints while it runs.

Locally the worker writes ``<run dir>/logs/<key>.log`` itself. A remote worker (SSH, Ray) writes its log on its
host, and the backend lands it in that same file when the unit ends (SSH appends it to the earlier attempts'
logs, Ray replaces the file). Until then its ``agent_output`` events are appended to ``<key>.live`` next to it
(``LiveLogs``): a file of its own, so that the landed log never holds a line twice and the live copy is dropped
once the full log has come back (or kept in the log, when the worker was lost and nothing came back).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from distpar.coordinator.journal import Journal
from distpar.coordinator.livelogs import live_path
from distpar.core import names
from distpar.ops.clean import run_is_live

log = logging.getLogger(__name__)

FOLLOW_GRACE = 60.0  # past the batch's own timeout, in case the coordinator is slow to record its end
TERMINAL = ("ok", "failed", "timeout", "skipped", "blocked", "interrupted")


def log_path(batch: dict[str, Any], run_dir: Path) -> Path | None:
    """The journaled log of a batch or, while it runs, where the local worker writes it (a remote unit's live
    copy, when there is one)."""
    if batch["log_path"]:
        return Path(batch["log_path"])
    if batch["state"] in ("pending", "skipped", "blocked"):
        return None
    live = live_path(run_dir, batch["unit_id"])
    if batch["state"] == "running" and live.exists():
        return live
    return run_dir / "logs" / f"{names.key(batch['unit_id'])}.log"


def running_batch(batches: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The running batch whose agent started last (the journal's state and start time are each unit's own, on
    every backend: the worker reports when its agent really starts)."""
    running = [b for b in batches if b["state"] == "running"]
    return max(running, key=lambda b: b["started"] or 0.0) if running else None


def batch_timeout(run: dict[str, Any], batch_id: str) -> float:
    plan = json.loads(run["plan"] or "{}")
    for b in plan.get("batches", ()):
        if str(b["id"]) == batch_id and b.get("timeout"):
            return float(b["timeout"])
    return float(json.loads(run["options"] or "{}").get("timeout") or 3600.0)


def follow(journal: Journal, run: dict[str, Any], batch_id: str, run_dir: Path, poll: float = 0.2,
           clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """Yield the batch's log as it grows, until the batch has ended (its result journaled), the run is no longer
    live, or the batch's timeout (plus a grace) has passed since
    its log appeared. Everything written before the end is yielded. A remote unit's live copy is followed as
    soon as it appears (after the log of its earlier attempts, if any); once the unit ends it makes way for the
    full log, which the last line points to."""
    row = journal.unit(run["id"], batch_id)
    assert row is not None
    path = Path(row["log_path"]) if row["log_path"] else run_dir / "logs" / f"{names.key(batch_id)}.log"
    live = live_path(run_dir, batch_id)
    limit = batch_timeout(run, batch_id) + FOLLOW_GRACE
    appeared: float | None = None
    reading: IO[bytes] | None = None
    on_live = False
    last_check = 0.0
    done = False
    try:
        while True:
            try:
                if not on_live and live.exists():
                    if reading is not None:
                        reading.close()
                    reading, on_live = live.open("rb"), True
                elif reading is None and path.exists():
                    reading = path.open("rb")
            except OSError:  # the live copy went just now: the log is there next time
                pass
            if reading is not None:
                appeared = appeared or clock()
                data = reading.read()
                if data:
                    yield data.decode("utf-8", "replace")
            if done:
                if on_live:
                    yield f"--- distpar: the unit ended; its whole log: distpar logs {run['id']} --batch {batch_id}\n"
                return
            now = clock()
            if now - last_check >= 1.0 or last_check == 0.0:
                last_check = now
                row = journal.unit(run["id"], batch_id)
                current = journal.run_exact(run["id"])
                ended = row is None or row["state"] in TERMINAL
                done = ended or not run_is_live(journal, current) or (appeared is not None and now - appeared > limit)
                if done:
                    continue  # one last read, then stop
            sleep(poll)
    finally:
        if reading is not None:
            reading.close()
