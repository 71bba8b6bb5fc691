"""The journal file itself (issue 21, item 11): held by another process it is *busy*, said with the holder and
waited for, never called damaged; removed during a run it is noticed, said, and recreated with the run's
history. Real CLI processes, real SQLite locks, the fake agent removing the file."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.testing.builders import fake_batch, write_plan
from tests.conftest import run_distpar

HOLD = r"""
import sqlite3, sys, time, pathlib
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("INSERT OR REPLACE INTO meta VALUES ('held', 'yes')")
print("held", flush=True)
release = pathlib.Path(sys.argv[2])
deadline = time.monotonic() + 60
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
db.execute("COMMIT")
"""


def _home() -> Path:
    return Path(os.environ["DISTPAR_HOME"])


def _hold(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """Another process holding the journal's write lock until the returned file exists."""
    Journal(_home() / "journal.db").close()
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(_home() / "journal.db"), str(release)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder, release


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """stderr of ``proc`` up to the first line holding ``needle`` (bounded in time)."""
    assert proc.stderr is not None
    seen, deadline = "", time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
    return seen


@pytest.mark.timeout(60)
def test_a_busy_journal_is_said_with_its_holder_and_waited_for(repo: Path, tmp_path: Path) -> None:
    holder, release = _hold(tmp_path)
    try:
        status = subprocess.Popen([sys.executable, "-m", "distpar", "status"], cwd=repo, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        said = _read_until(status, "is busy", 20)
        assert f"the journal {_home() / 'journal.db'} is busy (held by pid {holder.pid} (" in said, said
        assert "waiting up to 120 s" in said
        assert status.poll() is None, "still waiting while the holder holds it"
        release.touch()
        out, rest = status.communicate(timeout=30)
        assert status.returncode == 0, said + rest
        assert out.strip() == "no runs yet"
        assert "damaged" not in said + rest and "move it away" not in said + rest
    finally:
        release.touch()
        holder.communicate(timeout=30)


@pytest.mark.timeout(60)
def test_a_journal_held_past_the_wait_is_busy_not_damaged(repo: Path, tmp_path: Path) -> None:
    holder, release = _hold(tmp_path)
    try:
        res = run_distpar("status", cwd=repo, env={"DISTPAR_JOURNAL_WAIT": "3"}, timeout=30)
    finally:
        release.touch()
        holder.communicate(timeout=30)
    assert res.returncode == 4, res.stderr
    error = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and error[0].startswith(
        f"Error: the journal {_home() / 'journal.db'} is busy (held by pid {holder.pid} ({sys.executable} -c"), error
    assert "gave up after" in res.stderr
    assert "damaged" not in res.stderr and "move it away" not in res.stderr
    assert "do not move it" in res.stderr


def test_a_journal_removed_during_a_run_is_said_and_recreated_with_the_history(repo: Path) -> None:
    home = _home()
    rm = f"@fake sh 'rm -f {home}/journal.db {home}/journal.db-wal {home}/journal.db-shm'"
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "1"}, extra=[rm]),
                                             fake_batch(2, writes={"b.txt": "2"})], independent=False)
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert (f"warning: the journal {home / 'journal.db'} was removed during the run; distpar recreated it with "
            "the history it still had open (1 run(s)) and went on journaling there") in res.stderr
    j = Journal(home / "journal.db")
    try:
        (run,) = j.runs()
        assert run["state"] == "ok"
        assert [(b["unit_id"], b["state"]) for b in j.units(run["id"])] == [("1", "ok"), ("2", "ok")]
        # (the workspaces' removal goes on after the run's end, off its critical path, and is journaled when done)
        kinds = [e.kind for e in j.events(run["id"]) if not e.kind.startswith("workspaces_remov")]
        assert kinds[0] == "run_started" and "journal_recreated" in kinds and kinds[-1] == "run_ended"
    finally:
        j.close()
    status = run_distpar("status", run["id"], cwd=repo)
    assert status.returncode == 0 and f"run {run['id']}: ok" in status.stdout
