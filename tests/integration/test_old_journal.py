"""A journal written by the previous version of distpar (schema 1: ``batches``, ``batch_id``, ``stream``, the
``segment_*`` and ``batch_*`` events): its runs still show in ``distpar status``, and ``distpar resume`` goes on
with them. The old journal is built by hand with the CREATE statements of schema 1 and filled with the rows of
a real run, written the way schema 1 wrote them."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from distpar.coordinator.journal import SCHEMA_VERSION, Journal
from distpar.coordinator.removal import wait_for_removals
from distpar.testing.builders import fake_batch, tree_files
from tests.conftest import run_distpar
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration

# distpar/coordinator/journal.py at schema 1 (commit 0def717), verbatim.
SCHEMA_1 = """
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
CREATE TABLE IF NOT EXISTS batches (
    run_id TEXT NOT NULL REFERENCES runs(id),
    batch_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    stream INTEGER NOT NULL,
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
    PRIMARY KEY (run_id, batch_id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    stream INTEGER,
    batch_id TEXT,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, seq);
"""
OLD_KINDS = {"unit_submitted": "segment_submitted", "unit_retry": "segment_retry", "unit_error": "segment_error",
             "unit_dispatched": "batch_started", "unit_ended": "batch_ended", "unit_tries": "batch_tries"}


def journal_path() -> Path:
    return Path(os.environ["DISTPAR_HOME"]) / "journal.db"


def old_event(kind: str, unit: str | None, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An event as schema 1 wrote it."""
    data = {{"unit": "batch", "worker": "stream", "branches": "streams"}.get(k, k): v for k, v in data.items()}
    if kind == "unit_submitted":
        data["batches"] = [unit]
    return OLD_KINDS.get(kind, kind), data


def write_schema_1(path: Path) -> None:
    """Rewrite the journal at ``path`` as the previous version of distpar would have written it."""
    new = sqlite3.connect(str(path))
    new.row_factory = sqlite3.Row
    runs = [dict(r) for r in new.execute("SELECT * FROM runs")]
    units = [dict(r) for r in new.execute("SELECT * FROM units")]
    events = [dict(r) for r in new.execute("SELECT * FROM events ORDER BY seq")]
    new.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    old = sqlite3.connect(str(path))
    old.executescript(SCHEMA_1)
    old.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    for run in runs:
        summary = json.loads(run["summary"] or "{}")
        if "units" in summary:
            summary["batches"] = summary.pop("units")
        run["summary"] = json.dumps(summary) if summary else None
        old.execute(f"INSERT INTO runs ({', '.join(run)}) VALUES ({', '.join('?' * len(run))})", list(run.values()))
    for u in units:
        u["batch_id"], u["stream"] = u.pop("unit_id"), u.pop("worker")
        old.execute(f"INSERT INTO batches ({', '.join(u)}) VALUES ({', '.join('?' * len(u))})", list(u.values()))
    for e in events:
        kind, data = old_event(e["kind"], e["unit_id"], json.loads(e["data"] or "{}"))
        old.execute("INSERT INTO events (run_id, ts, kind, stream, batch_id, data) VALUES (?, ?, ?, ?, ?, ?)",
                    (e["run_id"], e["ts"], kind, e["worker"], e["unit_id"], json.dumps(data)))
    old.commit()
    assert old.execute("PRAGMA user_version").fetchone()[0] == 0
    old.close()


def test_a_run_journaled_by_schema_1_shows_in_status_and_resumes(repo: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "inv.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(log))
    batches = [fake_batch(1, writes={"a.txt": "a"}), fake_batch(2, writes={"b.txt": "b"}, extra=["@fake fail 2"]),
               fake_batch(3, writes={"c.txt": "c"})]
    report, _ = run_plan(repo, batches, workers=2)
    assert report.state == "failed"
    run_id = report.run_id
    wait_for_removals()  # the workspaces' removal journals its end in the background: not into the rewrite
    write_schema_1(journal_path())

    listed = run_distpar("status", cwd=repo)
    assert listed.returncode == 0, listed.stderr
    assert run_id in listed.stdout and "2/3 ok" in listed.stdout and "1 failed" in listed.stdout
    shown = run_distpar("status", run_id, "--json", cwd=repo)
    assert shown.returncode == 0, shown.stderr
    units = {u["unit_id"]: u for u in json.loads(shown.stdout)["units"]}
    assert {k: u["state"] for k, u in units.items()} == {"1": "ok", "2": "failed", "3": "ok"}
    assert all(u["worker"] in (0, 1) for u in units.values())

    j = Journal(journal_path())
    try:
        assert j._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        kinds = {e.kind for e in j.events(run_id)}
        assert "unit_ended" in kinds and "unit_submitted" in kinds and "unit_dispatched" in kinds
        assert not kinds & set(OLD_KINDS.values())
        submitted = next(e for e in j.events(run_id) if e.kind == "unit_submitted")
        assert submitted.worker in (0, 1) and submitted.unit_id and submitted.data["units"] == [submitted.unit_id]
        run = j.run(run_id)
        assert run is not None
        assert json.loads(run["summary"])["units"] == {"ok": 2, "failed": 1}
        plan_path = Path(run["plan_path"])
    finally:
        j.close()

    plan_path.write_text(plan_path.read_text().replace("@fake fail 2", ""))
    res = run_distpar("resume", run_id, cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(json.loads(line)["batch"] for line in log.read_text().splitlines()) == ["1", "2", "2", "3"]
    assert {"a.txt", "b.txt", "c.txt"} <= set(tree_files(repo))


def test_a_journal_of_a_newer_schema_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    db = sqlite3.connect(str(path))
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    from distpar.coordinator.journal import JournalError

    with pytest.raises(JournalError, match=f"newer distpar \\(schema {SCHEMA_VERSION + 1}"):
        Journal(path)
    db = sqlite3.connect(str(path))
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == []  # nothing created, nothing migrated
    db.close()
