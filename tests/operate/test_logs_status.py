"""``distpar logs`` (one batch, all, following a running one) and ``distpar status`` (the list and one run)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from distpar.testing.builders import fake_batch, write_plan
from tests.conftest import run_distpar, wait_for
from tests.operate.conftest import batch_state, journal, only_run_id, run_ids, start_distpar

pytestmark = pytest.mark.integration


def test_logs_prints_a_batch_log(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch("one", extra=["@fake print-env DISTPAR_BATCH_ID"], writes={"a": "1"}),
        fake_batch("two", extra=["@fake print-env DISTPAR_BATCH_ID"], writes={"b": "2"}),
        fake_batch("three", depends_on=["two"], extra=["@fake fail 1 'not today'"]),
    ])
    assert run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "-q", cwd=repo).returncode == 1
    run_id = only_run_id()
    one = run_distpar("logs", run_id, "--batch", "one", cwd=repo)
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert lines[0].startswith("--- distpar: unit one, attempt 1")
    assert "DISTPAR_BATCH_ID=one" in lines and '"type": "result"' in one.stdout
    assert "DISTPAR_BATCH_ID=two" not in one.stdout
    every = run_distpar("logs", run_id[:12], cwd=repo)  # a unique prefix of the id is enough
    headers = re.findall(r"^==> batch (\S+) \((w\d|-), (\w+)\): (\S+) <==$", every.stdout, re.M)
    assert [(b, st) for b, _, st, _ in headers] == [("one", "ok"), ("two", "ok"), ("three", "failed")]
    assert all(Path(p).name == f"{b}.log" for b, _, _, p in headers)
    assert "not today" in every.stdout
    unknown = run_distpar("logs", run_id, "--batch", "nine", cwd=repo)
    assert unknown.returncode == 2 and unknown.stderr.splitlines()[0] == f"Error: run {run_id} has no batch 'nine'"
    missing = run_distpar("logs", "nosuchrun", cwd=repo)
    assert missing.returncode == 2 and missing.stderr.startswith("Error: no run 'nosuchrun'")
    follow_done = run_distpar("logs", run_id, "--follow", cwd=repo)
    assert follow_done.returncode == 2
    assert follow_done.stderr.splitlines()[0] == (f"Error: run {run_id} has no running batch to follow "
                                                  "(the run is failed)")


def test_logs_follow_tails_a_running_batch_until_it_ends(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch("slow", extra=["@fake print-env DISTPAR_WORKER", "@fake sleep 1.5"], writes={"s": "1"}),
    ])
    with start_distpar("run", str(plan), "--agent", "fake", "-q", cwd=repo) as run:
        run_id = wait_for(lambda: next(iter(run_ids()), ""), what="the run to start")
        wait_for(lambda: batch_state(run_id, "slow") == "running", what="the batch to start")
        t0 = time.time()
        res = run_distpar("logs", run_id, "--follow", cwd=repo, timeout=60)  # picks the running batch
        took = time.time() - t0
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("--- distpar: unit slow, attempt 1")
        assert "DISTPAR_WORKER=1" in res.stdout and '"type": "result"' in res.stdout  # to the very end
        assert took < 15
        assert run.wait(timeout=60) == 0
    assert batch_state(run_id, "slow") == "ok"


def agents_started(run_id: str) -> dict[str, float]:
    """Unit -> when its agent started, for the units whose ``unit_started`` the journal holds."""
    j = journal()
    try:
        units = {e.unit_id for e in j.events(run_id) if e.kind == "unit_started"}
        return {b["unit_id"]: b["started"] for b in j.units(run_id) if b["unit_id"] in units}
    finally:
        j.close()


def test_logs_follow_picks_the_unit_whose_agent_started_last(repo: Path) -> None:
    """Two units running at once, the first one printing all the time: without --batch, ``logs --follow``
    follows the one whose agent started last (from the journal), not the log written last."""
    plan = write_plan(repo.parent / "p.md", [
        fake_batch("chatty", extra=[x for i in range(40) for x in (f"@fake say line{i}", "@fake sleep 0.1")],
                   writes={"c": "1"}),
        fake_batch("late", extra=["@fake sleep 2", "@fake say late-one", "@fake sleep 2"], writes={"l": "1"}),
    ])
    with start_distpar("run", str(plan), "--agent", "fake", "-w", "2", "--stagger", "1", "-q", cwd=repo) as run:
        run_id = wait_for(lambda: next(iter(run_ids()), ""), what="the run to start")
        # Both agents have started, as the journal records it (the second at least 1 s after the first: --stagger).
        started = wait_for(lambda: agents_started(run_id) if len(agents_started(run_id)) == 2 else {},
                           what="both agents to start")
        assert started["late"] > started["chatty"], started
        assert batch_state(run_id, "late") == "running"
        res = run_distpar("logs", run_id, "--follow", cwd=repo, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("--- distpar: unit late, attempt 1"), res.stdout[:300]
        assert "late-one" in res.stdout and "line0" not in res.stdout
        assert run.wait(timeout=60) == 0


def test_status_lists_runs_newest_first_and_shows_one(repo: Path) -> None:
    ok_plan = write_plan(repo.parent / "ok.md", [fake_batch(1, writes={"x": "1"}), fake_batch(2, writes={"y": "2"})])
    bad_plan = write_plan(repo.parent / "bad.md", [fake_batch(3, writes={"z": "3"}),
                                                    fake_batch(4, extra=["@fake fail 2 'broken'"])])
    assert run_distpar("run", str(ok_plan), "-w", "2", "--agent", "fake", "-q", cwd=repo).returncode == 0
    assert run_distpar("run", str(bad_plan), "-w", "2", "--agent", "fake", "-q", cwd=repo).returncode == 1
    res = run_distpar("status", cwd=repo)
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert re.split(r"\s+", lines[0]) == ["RUN", "PLAN", "STARTED", "STATE", "BATCHES", "WALL", "SPEEDUP", "COST"]
    assert re.match(r"\S+ +bad\.md +\d{4}-\d\d-\d\d \d\d:\d\d +failed +1/2 ok, 1 failed +\d+\.\ds +\d\.\d\dx +"
                    r"\$0\.0200$", lines[1]), lines[1]
    assert re.match(r"\S+ +ok\.md +\S+ \S+ +ok +2/2 ok +\d+\.\ds +\d\.\d\dx +\$0\.0200$", lines[2]), lines[2]
    bad_id = lines[1].split()[0]
    one = run_distpar("status", bad_id, cwd=repo)
    assert one.returncode == 0
    out = one.stdout.splitlines()
    assert out[0] == f"run {bad_id}: failed"
    assert out[1].startswith(f"  plan {repo.parent / 'bad.md'} (test-plan); backend local, 2 worker(s)")
    assert re.match(r"  started \S+ \S+; wall \d+\.\ds, serial agent time \d+\.\ds, speedup \d\.\d\dx; cost \$0\.0200",
                    out[2])
    assert re.split(r"\s+", out[3]) == ["WORKER", "BATCH", "STATE", "RESULT", "NODE", "DURATION", "COST", "ATTEMPT"]
    rows = {line.split()[1]: line.split() for line in out[4:] if re.match(r"w\d ", line)}
    assert rows["3"][2:4] == ["ok", "success"] and rows["3"][6] == "$0.0100"
    assert rows["4"][2:4] == ["failed", "error"] and rows["4"][4] != "-"
    assert "        broken" in out
    assert any(line.startswith("branches kept: distpar/") for line in out)


def test_live_copy_of_a_remote_unit_makes_way_for_its_log_or_is_kept_when_nothing_came_back(tmp_path: Path) -> None:
    from distpar.coordinator.livelogs import LiveLogs, live_path

    logs = tmp_path / "logs"
    live = LiveLogs(tmp_path, remote=True)
    line = {"unit": "u", "attempt": 1, "node": "h1", "fd": "out"}
    live.update("agent_output", {**line, "line": "one"})
    live.update("unit_started", {**line, "line": "not output"})
    copy = live_path(tmp_path, "u")
    assert copy.read_text().splitlines()[1:] == ["one"]
    assert copy.read_text().startswith("--- distpar: attempt 1 on h1, as it runs")
    (logs / "u.log").write_text("full log of attempt 1\n")  # what the backend lands when the unit ends
    live.ended("u", landed=True)
    assert not copy.exists() and (logs / "u.log").read_text() == "full log of attempt 1\n"
    # Attempt 2's worker is lost: its result (and log) never come; attempt 3's lines start a new copy.
    live.update("agent_output", {**line, "attempt": 2, "line": "two"})
    live.update("agent_output", {**line, "attempt": 3, "line": "three"})
    kept = (logs / "u.log").read_text()
    assert kept.startswith("full log of attempt 1\n--- distpar: the worker's log did not come back")
    assert kept.endswith("attempt 2 on h1, as it runs (lines sent as events; the full log replaces this when the "
                         "unit ends)\ntwo\n")
    live.close()  # the end of the run: attempt 3 never handed anything back either
    assert not copy.exists() and (logs / "u.log").read_text().endswith("\nthree\n")
    local = LiveLogs(tmp_path / "local", remote=False)  # a local worker writes the log itself
    local.update("agent_output", {**line, "line": "x"})
    assert not (tmp_path / "local" / "logs").exists()
