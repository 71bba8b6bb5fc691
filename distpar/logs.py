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

from distpar import names
from distpar.clean import run_is_live
from distpar.journal import Journal

log = logging.getLogger(__name__)

FOLLOW_GRACE = 60.0  # past the batch's own timeout, in case the coordinator is slow to record its end
TERMINAL = ("ok", "failed", "timeout", "skipped", "blocked", "interrupted")


LIVE = ".live"  # suffix of a remote unit's live copy, beside its ``.log``


def log_path(batch: dict[str, Any], run_dir: Path) -> Path | None:
    """The journaled log of a batch or, while it runs, where the local worker writes it (a remote unit's live
    copy, when there is one)."""
    if batch["log_path"]:
        return Path(batch["log_path"])
    if batch["state"] in ("pending", "skipped", "blocked"):
        return None
    live = live_path(run_dir, batch["batch_id"])
    if batch["state"] == "running" and live.exists():
        return live
    return run_dir / "logs" / f"{names.key(batch['batch_id'])}.log"


def live_path(run_dir: Path, uid: str) -> Path:
    return run_dir / "logs" / f"{names.key(uid)}{LIVE}"


class LiveLogs:
    """The coordinator's live copies of remote units' output (see the module's docstring). Called from the
    executor's loop only, in the order the events came (a unit's events all come before its result)."""

    def __init__(self, run_dir: Path, remote: bool) -> None:
        self.run_dir, self.remote = run_dir, remote
        self._open: dict[str, tuple[int, IO[str]]] = {}  # unit -> (attempt, its live file)

    def update(self, kind: str, data: dict[str, Any]) -> None:
        """A worker's event: an ``agent_output`` line of a remote unit goes to its live copy (a local worker
        writes the very log that ``follow`` reads). Such lines are never journaled: the journal holds a run's
        steps (status, resume and reports read it row by row), and an agent prints thousands of lines that its
        log has anyway. A full disk here does not stop the run (the log still lands)."""
        if kind != "agent_output" or not self.remote:
            return
        try:
            self._add(data)
        except OSError as exc:
            log.warning("cannot write the live log of %s: %s", data.get("batch"), exc)

    def _add(self, data: dict[str, Any]) -> None:
        uid, attempt = str(data["batch"]), int(data.get("attempt") or 1)
        current = self._open.get(uid)
        if current is None or current[0] != attempt:
            self.ended(uid, landed=False)  # a stale copy (of a coordinator that died) is kept in the log
            path = live_path(self.run_dir, uid)
            path.parent.mkdir(parents=True, exist_ok=True)
            f = path.open("w", encoding="utf-8")
            f.write(f"--- distpar: attempt {attempt} on {data.get('node') or '?'}, as it runs (lines sent as events; "
                    "the full log replaces this when the unit ends)\n")
            self._open[uid] = current = (attempt, f)
        current[1].write(f"{data.get('line', '')}\n")
        current[1].flush()

    def ended(self, uid: str, landed: bool) -> None:
        """The unit's result came back: its full log has landed (``landed``) and the live copy goes, or the
        worker was lost and the live copy is all there is of its output, so it is kept at the end of the log."""
        _, f = self._open.pop(uid, (0, None))
        if f is not None:
            f.close()
        path = live_path(self.run_dir, uid)
        if not path.exists():
            return
        if not landed or f is None:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                return
            with path.with_suffix(".log").open("a") as out:
                out.write("--- distpar: the worker's log did not come back; what it printed as it ran:\n" + text)
        path.unlink(missing_ok=True)

    def close(self) -> None:
        """At the end of the run: what is still open never got a result (kept in its log)."""
        for uid in list(self._open):
            self.ended(uid, landed=False)


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
    row = journal.batch(run["id"], batch_id)
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
                row = journal.batch(run["id"], batch_id)
                current = journal.run_exact(run["id"])
                ended = row is None or row["state"] in TERMINAL
                done = ended or not run_is_live(journal, current) or (appeared is not None and now - appeared > limit)
                if done:
                    continue  # one last read, then stop
            sleep(poll)
    finally:
        if reading is not None:
            reading.close()
