"""Agent logs of a run: where each batch's log is, and following one while its batch runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from distpar import names
from distpar.clean import run_is_live
from distpar.journal import Journal

FOLLOW_GRACE = 60.0  # past the batch's own timeout, in case the coordinator is slow to record its end
TERMINAL = ("ok", "failed", "timeout", "skipped", "blocked", "interrupted")


def log_path(batch: dict[str, Any], run_dir: Path) -> Path | None:
    """The journaled log of a batch or, while it runs, where the local worker writes it."""
    if batch["log_path"]:
        return Path(batch["log_path"])
    if batch["state"] in ("pending", "skipped", "blocked"):
        return None
    return run_dir / "logs" / f"{names.key(batch['batch_id'])}.log"


def running_batch(batches: list[dict[str, Any]], run_dir: Path) -> dict[str, Any] | None:
    """The running batch whose log changed last (the journal marks a whole submitted segment as running)."""
    best: tuple[float, dict[str, Any]] | None = None
    for b in batches:
        if b["state"] != "running":
            continue
        path = log_path(b, run_dir)
        mtime = path.stat().st_mtime if path is not None and path.exists() else 0.0
        if best is None or mtime > best[0]:
            best = (mtime, b)
    return best[1] if best else None


def batch_timeout(run: dict[str, Any], batch_id: str) -> float:
    plan = json.loads(run["plan"] or "{}")
    for b in plan.get("batches", ()):
        if str(b["id"]) == batch_id and b.get("timeout"):
            return float(b["timeout"])
    return float(json.loads(run["options"] or "{}").get("timeout") or 3600.0)


def follow(journal: Journal, run: dict[str, Any], batch_id: str, run_dir: Path, poll: float = 0.2,
           clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """Yield the batch's log as it grows, until the batch has ended (its result journaled, or the next batch
    of its stream started), the run is no longer live, or the batch's timeout (plus a grace) has passed since
    its log appeared. Everything written before the end is yielded."""
    row = journal.batch(run["id"], batch_id)
    assert row is not None
    path = log_path(row, run_dir) or run_dir / "logs" / f"{names.key(batch_id)}.log"
    later = _later_in_stream(journal, run["id"], row)
    limit = batch_timeout(run, batch_id) + FOLLOW_GRACE
    appeared: float | None = None
    offset = 0
    last_check = 0.0
    done = False
    while True:
        if path.exists():
            appeared = appeared or clock()
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            if data:
                offset += len(data)
                yield data.decode("utf-8", "replace")
        if done:
            return
        now = clock()
        if now - last_check >= 1.0 or last_check == 0.0:
            last_check = now
            row = journal.batch(run["id"], batch_id)
            current = journal.run_exact(run["id"])
            ended = row is None or row["state"] in TERMINAL or _next_started(later, run_dir, path)
            done = ended or not run_is_live(journal, current) or (appeared is not None and now - appeared > limit)
            if done:
                continue  # one last read, then stop
        sleep(poll)


def _later_in_stream(journal: Journal, run_id: str, row: dict[str, Any]) -> dict[str, Any] | None:
    rows = [b for b in journal.batches(run_id) if b["stream"] == row["stream"] and b["position"] > row["position"]]
    return rows[0] if rows else None


def _next_started(later: dict[str, Any] | None, run_dir: Path, ours: Path) -> bool:
    """The stream's next batch wrote its log after ours was last written: ours is over (the worker runs a
    stream's batches one after another and writes a batch's output to its log before starting the next)."""
    if later is None:
        return False
    try:
        return (run_dir / "logs" / f"{names.key(later['batch_id'])}.log").stat().st_mtime >= ours.stat().st_mtime
    except OSError:
        return False
