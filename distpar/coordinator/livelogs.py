"""The coordinator's live copy of what a remote unit prints while it runs: its ``agent_output`` events appended to
``<key>.live`` beside the unit's ``.log`` (a file of its own, so the landed log never holds a line twice); dropped
once the full log has come back, or kept in the log when the worker was lost and nothing came back. ``distpar logs
--follow`` (``distpar.ops.logs``) reads it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Any

from distpar.core import names

log = logging.getLogger(__name__)

LIVE = ".live"  # suffix of a remote unit's live copy, beside its ``.log``


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
            log.warning("cannot write the live log of %s: %s", data.get("unit"), exc)

    def _add(self, data: dict[str, Any]) -> None:
        uid, attempt = str(data["unit"]), int(data.get("attempt") or 1)
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
