"""The run journal: SQLite (WAL), one row per run, one row per unit, and an append-only event log.

Every write is one transaction, so a coordinator killed at any moment leaves the journal consistent. It holds
what ``status``, ``report`` and ``resume`` need, and never a secret (forwarded variables are not passed in).

Its schema has a version (``PRAGMA user_version``); a journal written by an earlier version of distpar is
migrated when it is opened (``_migrate``), so its runs still show in ``status`` and ``resume`` goes on with them.
A journal another process holds is *busy*, never "damaged": distpar says so (naming the holder when /proc or the
journal's run rows tell it), waits up to ``DISTPAR_JOURNAL_WAIT`` seconds (default 120) with a message every few
seconds, then stops with ``JournalBusy``. A journal file removed (or replaced) while a journal is open is noticed at
the next write (its device and inode are checked before each one): the history this process can still read (the
removed file stays open) is copied into the file now at the path (created when missing, merged into when another
process made one), writing goes on there, each live run of this process gets a ``journal_recreated`` event, and
``notices`` says it for the end of the run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from distpar.core.errors import DistparError
from distpar.core.model import UnitResult
from distpar.infra import holders as holders_mod

SCHEMA_VERSION = 2  # 2: units/unit_id/worker (1: batches/batch_id/stream, and segment_* events)
BUSY_STEP = 2.0  # seconds sqlite itself waits for a lock before distpar says the journal is busy
BUSY_SAY_EVERY = 10.0  # while waiting: a message this often
T = TypeVar("T")
log = logging.getLogger(__name__)

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
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, seq);
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


_SUMMED = ("cost_usd", "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")
_ADD = "CASE WHEN ? IS NULL THEN {c} ELSE COALESCE({c}, 0) + ? END"


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


class JournalBusy(JournalError):
    """Another process held the journal's lock for longer than distpar waits."""


def _busy(exc: BaseException) -> bool:
    low = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("database is locked" in low or "database is busy" in low
                                                          or "database table is locked" in low)


def busy_wait() -> float:
    try:
        return max(0.0, float(os.environ.get("DISTPAR_JOURNAL_WAIT", "120")))
    except ValueError:
        return 120.0


def holders(path: Path, db: sqlite3.Connection | None = None, limit: int = 3) -> list[str]:
    """Who holds the journal (Linux): the processes with a write lock on its files (``/proc/locks``), else those
    that have it open (``/proc/*/fd``, own user's only), else the live runs its rows name. Bounded."""
    files = [Path(str(path) + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    pids = holders_mod.lockers(files) or holders_mod.openers(files)
    if pids:
        return [f"pid {pid} ({holders_mod.command(pid)})" for pid in pids[:limit]]
    if db is not None:
        try:
            rows = db.execute("SELECT id, pid FROM runs WHERE state='running' AND pid IS NOT NULL").fetchall()
        except sqlite3.Error:
            rows = []
        me = os.getpid()
        live = [(rid, pid) for rid, pid in rows if pid != me and holders_mod.alive(int(pid))]
        return [f"pid {pid} (distpar run {rid})" for rid, pid in live][:limit]
    return []


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
    if _busy(exc):
        return JournalBusy(f"the journal {path} is busy: another process holds its lock ({text})",
                           hint="wait for it to finish or stop it; the journal itself is fine, keep it")
    return JournalError(f"the journal {path} failed: {text} (is the file damaged?)",
                        hint="when no run is live (distpar status), move it away to start a new journal (the runs "
                             "it lists are then forgotten)")


def _environmental(exc: BaseException) -> bool:
    """A failure of the disk or the file (full, read-only, damaged), not of distpar's own statements."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError))


class Journal:
    def __init__(self, path: str | Path, *, wait: float | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.wait = busy_wait() if wait is None else wait
        self.say = say or log.warning  # where "busy, waiting" goes (the CLI shows warnings on stderr)
        self.notices: list[str] = []  # what happened to the file itself (removed, replaced), for the end of a run
        self._lock = threading.Lock()
        self._db = self._connect()
        self._identity = self._stat()

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.path), timeout=BUSY_STEP, check_same_thread=False, isolation_level=None)
            db.row_factory = sqlite3.Row
            self._retry("open", lambda: db.execute("PRAGMA journal_mode=WAL"), db)
            db.execute("PRAGMA synchronous=NORMAL")
            self._retry("open", lambda: self._open_schema(db), db)
        except (sqlite3.Error, OSError) as exc:
            raise _explain(self.path, exc) from None
        return db

    def _open_schema(self, db: sqlite3.Connection) -> None:
        """The schema, created or brought up to ``SCHEMA_VERSION`` in one transaction (a newer one is refused,
        nothing changed)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"the journal {self.path} was written by a newer distpar (schema {version}, "
                                   f"this one knows {SCHEMA_VERSION})", hint="upgrade distpar")
            if version < SCHEMA_VERSION:
                old = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='batches'").fetchone()
                if old is not None:
                    _migrate(db)
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def close(self) -> None:
        self._db.close()

    def _retry(self, what: str, fn: Callable[[], T], db: sqlite3.Connection | None = None) -> T:
        """``fn``, tried again while another process holds the journal's lock: said at once and every
        ``BUSY_SAY_EVERY`` seconds, given up (``JournalBusy``) after ``self.wait`` seconds."""
        start = time.monotonic()
        told = -BUSY_SAY_EVERY
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                waited = time.monotonic() - start + BUSY_STEP  # sqlite waited BUSY_STEP before it said so
                who = holders(self.path, db if db is not None else getattr(self, "_db", None))
                by = f"held by {', '.join(who)}" if who else "held by another process"
                if waited >= self.wait:
                    raise JournalBusy(f"the journal {self.path} is busy ({by}): gave up after {waited:.0f} s "
                                      f"waiting to {what} it",
                                      hint="let that process finish or stop it, then try again (DISTPAR_JOURNAL_WAIT "
                                           "sets the wait); the journal itself is fine: do not move it") from None
                if waited - told >= BUSY_SAY_EVERY:
                    told = waited
                    self.say(f"the journal {self.path} is busy ({by}); waiting up to {self.wait:.0f} s")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._check_file()
            try:
                self._retry("write", lambda: self._db.execute("BEGIN IMMEDIATE"))
            except JournalBusy:
                raise
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

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:  # never on a connection a write is replacing (see _check_file)
            return self._retry("read", lambda: self._db.execute(sql, params).fetchall())

    # --- the file itself removed or replaced -------------------------------------------------------------

    def _check_file(self) -> None:
        """Before a write: is the file at ``path`` still the one this journal writes? (Caller holds the lock.)

        When not, the history still open is copied to memory, the old connection closed (sqlite neither
        checkpoints nor deletes the WAL of a moved database), its leftover ``-wal``/``-shm`` at the path removed
        (only when they are this process's own: the new file must not pick up the old one's log), and the file at
        the path opened (created when missing) and merged into."""
        now = self._stat()
        if now == self._identity and now is not None:
            return
        what = "removed" if now is None else "replaced by another file"
        old = self._db
        mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        mem.row_factory = sqlite3.Row
        old.backup(mem)
        ours = _own_files([Path(f"{self.path}-wal"), Path(f"{self.path}-shm")])
        old.close()
        for leftover in ours:
            leftover.unlink(missing_ok=True)
        try:
            self._db = self._connect()  # the file now at the path, created (with the schema) when missing
            copied = _merge(mem, self._db)
            mem.close()
            self._identity = self._stat()
            note = (f"the journal {self.path} was {what} during the run; distpar recreated it with the history "
                    f"it still had open ({copied} run(s)) and went on journaling there")
        except (sqlite3.Error, OSError, JournalError) as exc:
            self._db, self._identity = mem, now
            note = (f"the journal {self.path} was {what} during the run and could not be recreated ({exc}): "
                    "the rest of this run is journaled in memory only")
        self.notices.append(note)
        log.warning("%s", note)
        me = os.getpid()
        for (rid,) in self._db.execute("SELECT id FROM runs WHERE state='running' AND pid=?", (me,)).fetchall():
            self._db.execute("INSERT INTO events (run_id, ts, kind, data) VALUES (?, ?, 'journal_recreated', ?)",
                             (rid, time.time(), json.dumps({"path": str(self.path), "what": what,
                                                            "warning": note})))

    # --- writes ----------------------------------------------------------------------------------------

    def start_run(self, run: dict[str, Any], units: list[tuple[str, int]]) -> None:
        """``run``: the runs row; ``units``: (unit id, worker) in plan order."""
        with self._tx() as db:
            cols = ", ".join(run)
            db.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(run))})", list(run.values()))
            db.executemany(
                "INSERT INTO units (run_id, unit_id, position, worker, state) VALUES (?, ?, ?, ?, 'pending')",
                [(run["id"], b, i, s) for i, (b, s) in enumerate(units)],
            )
            self._event(db, run["id"], "run_started", None, None, {"workers": run["workers"]})

    def event(self, run_id: str, kind: str, worker: int | None = None, unit_id: str | None = None,
              **data: Any) -> None:
        with self._tx() as db:
            self._event(db, run_id, kind, worker, unit_id, data)

    def unit_dispatched(self, run_id: str, unit_id: str, worker: int, attempt: int, node: str) -> None:
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
            # Cost and tokens add up over every attempt, across retries and resumes (each was paid for); the
            # rest describes the last attempt.
            db.execute(
                f"""UPDATE units SET state=?, attempt=?, started=COALESCE(?, started), ended=?, exit_code=?,
                   result_class=?, {', '.join(f'{c}={_ADD.format(c=c)}' for c in _SUMMED)},
                   turns=?, session_id=?, model=?, node=COALESCE(NULLIF(?, ''), node),
                   commit_oid=?, changed=?, log_path=?, error=? WHERE run_id=? AND unit_id=?""",
                (
                    r.status.value, r.attempt, r.started, r.ended, r.exit_code,
                    o.result_class if o else None,
                    *(v for c in _SUMMED for v in (getattr(o, c, None),) * 2),
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
        not recorded (the coordinator died first), by commit. Every other unfinished batch goes back to pending."""
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
        rows = self._read(
            """SELECT r.*, (SELECT COUNT(*) FROM units u WHERE u.run_id=r.id AND u.state='ok') AS n_ok,
                      (SELECT COUNT(*) FROM units u WHERE u.run_id=r.id AND u.state IN
                           ('failed','timeout','blocked')) AS n_failed,
                      (SELECT COUNT(*) FROM units u WHERE u.run_id=r.id) AS n_units,
                      (SELECT SUM(cost_usd) FROM units u WHERE u.run_id=r.id) AS cost_usd
               FROM runs r ORDER BY started DESC LIMIT ?""",
            (limit,),
        )
        return [dict(r) for r in rows]

    def add_cost(self, run_id: str, unit_id: str, cost_usd: float) -> None:
        """Work done for a unit outside its own runs (the agent resolving its merge, --on-conflict resolve) costs
        it too: counted in its cost and in what the run spent."""
        with self._tx() as db:
            db.execute("UPDATE units SET cost_usd=COALESCE(cost_usd, 0) + ? WHERE run_id=? AND unit_id=?",
                       (cost_usd, run_id, unit_id))

    def spent(self, run_id: str) -> float | None:
        """What every attempt of every batch of the run cost (across retries and resumes); None: none reported."""
        rows = self._read("SELECT SUM(cost_usd) FROM units WHERE run_id=?", (run_id,))
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM runs WHERE id=?", (run_id,))
        row = rows[0] if rows else None
        if row is None:
            matches = self._read("SELECT * FROM runs WHERE id LIKE ?", (run_id + "%",))
            row = matches[0] if len(matches) == 1 else None
        return dict(row) if row else None

    def units(self, run_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._read("SELECT * FROM units WHERE run_id=? ORDER BY position", (run_id,))]

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        rows = self._read("SELECT * FROM events WHERE run_id=? AND seq>? ORDER BY seq", (run_id, after))
        return [
            Event(r["seq"], r["run_id"], r["ts"], r["kind"], r["worker"], r["unit_id"], json.loads(r["data"] or "{}"))
            for r in rows
        ]

    # --- reads for status, logs, report and clean ------------------------------------------------------

    def run_exact(self, run_id: str) -> dict[str, Any] | None:
        """The run with exactly this id (``run`` also accepts a unique prefix)."""
        rows = self._read("SELECT * FROM runs WHERE id=?", (run_id,))
        return dict(rows[0]) if rows else None

    def runs_for_repo(self, repo: str) -> list[dict[str, Any]]:
        """Every run of one repository, oldest first."""
        rows = self._read("SELECT * FROM runs WHERE repo=? ORDER BY started", (repo,))
        return [dict(r) for r in rows]

    def unit(self, run_id: str, unit_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM units WHERE run_id=? AND unit_id=?", (run_id, unit_id))
        return dict(rows[0]) if rows else None


def _own_files(paths: list[Path]) -> list[Path]:
    """Those of ``paths`` that this process has open (the same inode as one of its descriptors)."""
    ids = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        ids[(st.st_dev, st.st_ino)] = p
    out = []
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in ids:
            out.append(ids.pop((st.st_dev, st.st_ino)))
    return out


def _merge(old: sqlite3.Connection, new: sqlite3.Connection) -> int:
    """Copy what ``old`` (a removed file, still open) holds into ``new``: runs and units it lacks (this process's
    own rows win: it is the one writing them), the events of those runs. Returns how many runs were copied."""
    runs = old.execute("SELECT * FROM runs").fetchall()
    new.execute("BEGIN IMMEDIATE")
    try:
        for table in ("meta", "runs", "units"):
            rows = old.execute(f"SELECT * FROM {table}").fetchall()
            if rows:
                cols = rows[0].keys()
                new.executemany(f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) "
                                f"VALUES ({', '.join('?' * len(cols))})", [tuple(r) for r in rows])
        have = {r[0] for r in new.execute("SELECT DISTINCT run_id FROM events").fetchall()}
        events = [tuple(r) for r in old.execute(
            "SELECT run_id, ts, kind, worker, unit_id, data FROM events ORDER BY seq").fetchall() if r[0] not in have]
        new.executemany("INSERT INTO events (run_id, ts, kind, worker, unit_id, data) VALUES (?, ?, ?, ?, ?, ?)",
                        events)
        new.execute("COMMIT")
    except BaseException:
        new.execute("ROLLBACK")
        raise
    return len(runs)


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
