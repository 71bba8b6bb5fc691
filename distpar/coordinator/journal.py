"""The run journal: SQLite (WAL), one row per run, one row per unit, and an append-only event log.

Every write is one transaction, so a coordinator killed at any moment leaves the journal consistent. It holds
what ``status``, ``report`` and ``resume`` need, and never a secret (forwarded variables are not passed in).

Its schema has a version (``PRAGMA user_version``); a journal written by an earlier version of distpar is
migrated when it is opened (``_migrate``), so its runs still show in ``status`` and ``resume`` goes on with them.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distpar.core.errors import DistparError
from distpar.core.model import UnitResult

SCHEMA_VERSION = 2  # 2: units/unit_id/worker (1: batches/batch_id/stream, and segment_* events)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    plan_path TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    repo TEXT NOT NULL,
    target TEXT NOT NULL,
    base TEXT NOT NULL,
    backend TEXT NOT NULL,
    workers INTEGER NOT NULL,
    strategy TEXT NOT NULL,
    state TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    exit_code INTEGER,
    pid INTEGER,
    plan TEXT NOT NULL,
    schedule TEXT NOT NULL,
    options TEXT NOT NULL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS units (
    run_id TEXT NOT NULL REFERENCES runs(id),
    unit_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    worker INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    started REAL,
    ended REAL,
    exit_code INTEGER,
    result_class TEXT,
    cost_usd REAL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cache_read_tokens INTEGER,
    cache_creation_tokens INTEGER,
    turns INTEGER,
    session_id TEXT,
    model TEXT,
    node TEXT,
    commit_oid TEXT,
    changed INTEGER,
    log_path TEXT,
    error TEXT,
    PRIMARY KEY (run_id, unit_id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    worker INTEGER,
    unit_id TEXT,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, seq)
"""

# Version 1 -> 2: the words of the segment era. Events: their kind, and the keys of their data.
_V1_TABLES = ("ALTER TABLE batches RENAME TO units",
              "ALTER TABLE units RENAME COLUMN batch_id TO unit_id",
              "ALTER TABLE units RENAME COLUMN stream TO worker",
              "ALTER TABLE events RENAME COLUMN stream TO worker",
              "ALTER TABLE events RENAME COLUMN batch_id TO unit_id")
_V1_KINDS = {"segment_submitted": "unit_submitted", "segment_retry": "unit_retry", "segment_error": "unit_error",
             "batch_started": "unit_dispatched", "batch_ended": "unit_ended", "batch_tries": "unit_tries"}
_V1_KEYS = {"stream": "worker", "batch": "unit", "streams": "workers", "batches": "units"}


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    run_id: str
    ts: float
    kind: str
    worker: int | None
    unit_id: str | None
    data: dict[str, Any]


class JournalError(DistparError):
    """The journal cannot be written or read: a full disk, a read-only or missing directory, a damaged file."""


def _explain(path: Path, exc: BaseException) -> JournalError:
    """What ran out or broke, and where: the free space of the journal's file system when it is the disk."""
    text = str(exc)
    where = path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    low = text.lower()
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "disk is full" in low \
            or "disk i/o error" in low:
        try:
            st = os.statvfs(where)
            free = f" ({st.f_bavail * st.f_frsize / 2**20:.1f} MB free there)"
        except OSError:
            free = ""
        return JournalError(f"the journal {path} cannot be written: the disk is full{free}",
                            hint=f"free space on the file system of {where}, or point DISTPAR_HOME elsewhere "
                                 "(distpar resume continues a run that had started)")
    if isinstance(exc, PermissionError) or "readonly" in low or "read-only" in low or "permission" in low:
        return JournalError(f"the journal {path} cannot be written: {text} (a read-only file system or "
                            "missing permissions)", hint="point DISTPAR_HOME at a writable directory")
    if "unable to open" in low or isinstance(exc, OSError):
        return JournalError(f"the journal {path} cannot be opened: {text}",
                            hint="check that its directory exists and is writable, or set DISTPAR_HOME")
    return JournalError(f"the journal {path} failed: {text} (is the file damaged?)",
                        hint="move it away to start a new journal (the runs it lists are then forgotten)")


def _environmental(exc: BaseException) -> bool:
    """A failure of the disk or the file (full, read-only, damaged), not of distpar's own statements."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError))


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        except (sqlite3.Error, OSError) as exc:
            raise _explain(self.path, exc) from None
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        """The schema, created or brought up to ``SCHEMA_VERSION`` (a newer one is refused, nothing changed)."""
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"the journal {self.path} was written by a newer distpar (schema {version}, "
                                   f"this one knows {SCHEMA_VERSION})", hint="upgrade distpar")
            if version < SCHEMA_VERSION:
                old = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='batches'").fetchone()
                if old is not None:
                    _migrate(db)
                for statement in _SCHEMA.split(";"):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _explain(self.path, exc) from None
            try:
                yield self._db
            except BaseException as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # sqlite rolled back already (a full disk does that)
                if _environmental(exc):
                    raise _explain(self.path, exc) from None
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise _explain(self.path, exc) from None

    # --- writes ----------------------------------------------------------------------------------------

    def start_run(self, run: dict[str, Any], units: list[tuple[str, int]]) -> None:
        """``run``: the runs row; ``units``: (unit id, worker) in plan order."""
        with self._tx() as db:
            cols = ", ".join(run)
            db.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(run))})", list(run.values()))
            db.executemany(
                "INSERT INTO units (run_id, unit_id, position, worker, state) VALUES (?, ?, ?, ?, 'pending')",
                [(run["id"], u, i, w) for i, (u, w) in enumerate(units)],
            )
            self._event(db, run["id"], "run_started", None, None, {"workers": run["workers"]})

    def event(self, run_id: str, kind: str, worker: int | None = None, unit_id: str | None = None,
              **data: Any) -> None:
        with self._tx() as db:
            self._event(db, run_id, kind, worker, unit_id, data)

    def unit_dispatched(self, run_id: str, unit_id: str, worker: int, attempt: int, node: str) -> None:
        """The unit was handed to worker ``worker`` (its agent starts when the worker says ``unit_started``)."""
        with self._tx() as db:
            db.execute(
                "UPDATE units SET state='running', attempt=?, started=?, node=?, worker=? "
                "WHERE run_id=? AND unit_id=?",
                (attempt, time.time(), node, worker, run_id, unit_id),
            )
            self._event(db, run_id, "unit_dispatched", worker, unit_id, {"attempt": attempt, "node": node})

    def unit_started(self, run_id: str, unit_id: str, worker: int, attempt: int, node: str, at: float) -> None:
        """The worker says the unit's agent really started (handed over earlier, it may have waited for a slot)."""
        with self._tx() as db:
            db.execute("UPDATE units SET started=?, node=COALESCE(NULLIF(?, ''), node) WHERE run_id=? AND unit_id=?",
                       (at, node, run_id, unit_id))
            self._event(db, run_id, "unit_started", worker, unit_id, {"attempt": attempt, "node": node})

    def unit_requeued(self, run_id: str, unit_id: str) -> None:
        """The unit goes back to the queue (a rate limit): it is pending again until it starts."""
        with self._tx() as db:
            db.execute("UPDATE units SET state='pending' WHERE run_id=? AND unit_id=?", (run_id, unit_id))

    def unit_ended(self, run_id: str, r: UnitResult) -> None:
        o = r.outcome
        with self._tx() as db:
            db.execute(
                """UPDATE units SET state=?, attempt=?, started=COALESCE(?, started), ended=?, exit_code=?,
                   result_class=?, cost_usd=?, input_tokens=?, output_tokens=?, cache_read_tokens=?,
                   cache_creation_tokens=?, turns=?, session_id=?, model=?, node=COALESCE(NULLIF(?, ''), node),
                   commit_oid=?, changed=?, log_path=?, error=? WHERE run_id=? AND unit_id=?""",
                (
                    r.status.value, r.attempt, r.started, r.ended, r.exit_code,
                    o.result_class if o else None, o.cost_usd if o else None,
                    o.input_tokens if o else None, o.output_tokens if o else None,
                    o.cache_read_tokens if o else None, o.cache_creation_tokens if o else None,
                    o.turns if o else None, o.session_id if o else None, o.model if o else None,
                    r.node, r.commit, int(r.changed), r.log_path, r.error, run_id, r.unit_id,
                ),
            )
            self._event(
                db, run_id, "unit_ended", r.worker, r.unit_id,
                {
                    "status": r.status.value, "exit_code": r.exit_code, "duration": round(r.duration, 3),
                    "result_class": o.result_class if o else None, "cost_usd": o.cost_usd if o else None,
                    "changed": r.changed, "node": r.node, "attempt": r.attempt,
                    **({"notes": list(r.notes)} if r.notes else {}),
                },
            )

    def end_run(self, run_id: str, state: str, exit_code: int, summary: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET state=?, ended=?, exit_code=?, summary=? WHERE id=?",
                (state, time.time(), exit_code, json.dumps(summary), run_id),
            )
            self._event(db, run_id, "run_ended", None, None, {"state": state, "exit_code": exit_code})

    def resume_run(self, run_id: str, pid: int, recovered: dict[str, str]) -> None:
        """Mark a run live again. ``recovered``: units found committed on their branch that the journal had
        not recorded (the coordinator died first), by commit. Every other unfinished unit goes back to pending."""
        with self._tx() as db:
            db.execute("UPDATE runs SET state='running', ended=NULL, exit_code=NULL, pid=? WHERE id=?", (pid, run_id))
            for unit_id, commit in recovered.items():
                db.execute(
                    "UPDATE units SET state='ok', commit_oid=?, changed=1, ended=COALESCE(ended, ?) "
                    "WHERE run_id=? AND unit_id=?",
                    (commit, time.time(), run_id, unit_id),
                )
            db.execute("UPDATE units SET state='pending' WHERE run_id=? AND state!='ok'", (run_id,))
            self._event(db, run_id, "run_resumed", None, None, {"pid": pid, "recovered": sorted(recovered)})

    @staticmethod
    def _event(db: sqlite3.Connection, run_id: str, kind: str, worker: int | None, unit_id: str | None,
               data: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO events (run_id, ts, kind, worker, unit_id, data) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, time.time(), kind, worker, unit_id, json.dumps(data)),
        )

    # --- reads -----------------------------------------------------------------------------------------

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._db.execute(
            """SELECT r.*, (SELECT COUNT(*) FROM units u WHERE u.run_id=r.id AND u.state='ok') AS n_ok,
                      (SELECT COUNT(*) FROM units u WHERE u.run_id=r.id AND u.state IN
                           ('failed','timeout','blocked')) AS n_failed,
                      (SELECT COUNT(*) FROM units u WHERE u.run_id=r.id) AS n_units,
                      (SELECT SUM(cost_usd) FROM units u WHERE u.run_id=r.id) AS cost_usd
               FROM runs r ORDER BY started DESC LIMIT ?""",
            (limit,),
        ).fetchall()
        return [dict(r) for r in rows]

    def run(self, run_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            matches = self._db.execute("SELECT * FROM runs WHERE id LIKE ?", (run_id + "%",)).fetchall()
            row = matches[0] if len(matches) == 1 else None
        return dict(row) if row else None

    def units(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM units WHERE run_id=? ORDER BY position", (run_id,))
        return [dict(r) for r in rows]

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        rows = self._db.execute(
            "SELECT * FROM events WHERE run_id=? AND seq>? ORDER BY seq", (run_id, after)
        ).fetchall()
        return [
            Event(r["seq"], r["run_id"], r["ts"], r["kind"], r["worker"], r["unit_id"], json.loads(r["data"] or "{}"))
            for r in rows
        ]

    # --- reads for status, logs, report and clean ------------------------------------------------------

    def run_exact(self, run_id: str) -> dict[str, Any] | None:
        """The run with exactly this id (``run`` also accepts a unique prefix)."""
        row = self._db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return dict(row) if row else None

    def runs_for_repo(self, repo: str) -> list[dict[str, Any]]:
        """Every run of one repository, oldest first."""
        rows = self._db.execute("SELECT * FROM runs WHERE repo=? ORDER BY started", (repo,)).fetchall()
        return [dict(r) for r in rows]

    def unit(self, run_id: str, unit_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM units WHERE run_id=? AND unit_id=?", (run_id, unit_id)).fetchone()
        return dict(row) if row else None


def _migrate(db: sqlite3.Connection) -> None:
    """A journal of schema 1 (``batches``, ``batch_id``, ``stream``; ``segment_*`` and ``batch_*`` events) in
    today's words, in the transaction that opens it: every run it holds reads as if journaled now."""
    for statement in _V1_TABLES:
        db.execute(statement)
    for old, new in _V1_KINDS.items():
        db.execute("UPDATE events SET kind=? WHERE kind=?", (new, old))
    rows = db.execute("SELECT seq, kind, data FROM events WHERE data IS NOT NULL").fetchall()
    for seq, kind, text in rows:
        data = json.loads(text or "{}")
        if isinstance(data, dict) and any(k in data for k in _V1_KEYS):
            keys = {**_V1_KEYS, "streams": "branches"} if kind == "merge_started" else _V1_KEYS
            data = {keys.get(k, k): v for k, v in data.items()}
            db.execute("UPDATE events SET data=? WHERE seq=?", (json.dumps(data), seq))
    for run_id, text in db.execute("SELECT id, summary FROM runs WHERE summary IS NOT NULL").fetchall():
        summary = json.loads(text)
        if isinstance(summary, dict) and "batches" in summary:  # the --json summary's counts
            summary["units"] = summary.pop("batches")
            db.execute("UPDATE runs SET summary=? WHERE id=?", (json.dumps(summary), run_id))
