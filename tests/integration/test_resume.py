"""Resume: after SIGKILL of the coordinator, a failed batch, a conflict resolved by hand, an interrupt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, make_repo, sh_git, tree_files, write_plan
from tests.conftest import run_and_interrupt, run_distpar, wait_for
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration


def invocations(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [json.loads(line)["batch"] for line in log.read_text().splitlines()]


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def slow_plan() -> list[dict[str, object]]:
    return [
        fake_batch(1, writes={"one.txt": "1\n"}),
        fake_batch(2, writes={"two.txt": "2\n"}, sleep=0.5),
        fake_batch(3, writes={"three.txt": "3\n"}, sleep=30),
        fake_batch(4, writes={"four.txt": "4\n"}),
        fake_batch(5, writes={"five.txt": "5\n"}, depends_on=[1, 4]),
    ]


def test_resume_after_sigkill_runs_no_batch_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = make_repo(tmp_path / "serial" / "repo")
    fast = [dict(b) for b in slow_plan()]
    for b in fast:
        b["agents"] = [{"subagent_type": "x", "prompt": b["agents"][0]["prompt"].replace("@fake sleep 30", "")}]
    run_plan(serial, fast)
    serial_runs = {r["id"] for r in journal().runs()}

    repo = make_repo(tmp_path / "repo")
    log = tmp_path / "invocations.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(log))
    plan = write_plan(tmp_path / "plan.md", slow_plan())
    proc = subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), "--workers", "2", "--agent", "fake",
                             "--strategy", "round-robin"], cwd=repo, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run_id = wait_for(lambda: next((r["id"] for r in journal().runs() if r["id"] not in serial_runs), ""),
                      what="the run to start")

    def settled() -> bool:
        """As the journal has it: 1, 2 and 4 ended ok, 3's agent started (it sleeps 30 s), 5 not running."""
        j = journal()
        states = {b["unit_id"]: b["state"] for b in j.units(run_id)}
        started = {e.unit_id for e in j.events(run_id) if e.kind == "unit_started"}
        return all(states.get(b) == "ok" for b in ("1", "2", "4")) and states.get("3") == "running" \
            and "3" in started and states.get("5") != "running"

    wait_for(settled, timeout=60, what="batches 1, 2 and 4 to end while 3 runs")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert journal().run(run_id)["state"] == "running"  # the coordinator died without a word

    # Fix the slow batch (the plan file is re-read when its batches are unchanged), then resume.
    plan.write_text(plan.read_text().replace("@fake sleep 30", "@fake sleep 0.1"))
    res = run_distpar("resume", run_id, cwd=repo, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = invocations(log)
    assert sorted(runs) == ["1", "2", "3", "3", "4", "5"], runs  # only the interrupted batch ran twice
    assert tree_files(repo) == tree_files(serial)
    assert journal().run(run_id)["state"] == "ok"
    assert [e.kind for e in journal().events(run_id)].count("run_resumed") == 1
    assert len(gitops.worktrees(repo)) == 1


def test_resume_after_a_failed_batch_is_fixed(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "inv.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(log))
    batches = [fake_batch(1, writes={"a.txt": "a"}), fake_batch(2, writes={"b.txt": "b"}, extra=["@fake fail 2"]),
               fake_batch(3, writes={"c.txt": "c"})]
    report, _ = run_plan(repo, batches, workers=2)
    assert report.state == "failed"
    plan_path = Path(journal().run(report.run_id)["plan_path"])
    plan_path.write_text(plan_path.read_text().replace("@fake fail 2", ""))
    res = run_distpar("resume", report.run_id, cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(invocations(log)) == ["1", "2", "2", "3"]
    assert {"a.txt", "b.txt", "c.txt"} <= set(tree_files(repo))


def test_continue_after_a_conflict_resolved_by_hand(repo: Path) -> None:
    batches = [fake_batch(1, writes={"same.txt": "one\n"}), fake_batch(2, writes={"same.txt": "two\n"}),
               fake_batch(3, writes={"other.txt": "3\n"})]
    report, runner = run_plan(repo, batches, workers=3)
    assert report.state == "conflict" and report.conflict is not None
    # Do what distpar said: merge the conflicting unit branch into the integration branch, resolve, commit.
    sh_git(repo, "switch", "--quiet", runner.integration)
    merge = subprocess.run(["git", "merge", "--no-ff", report.conflict.theirs], cwd=repo, capture_output=True,
                           text=True, env={**os.environ, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x",
                                           "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@x"})
    assert merge.returncode == 1
    (repo / "same.txt").write_text("one and two\n")
    sh_git(repo, "add", "same.txt")
    sh_git(repo, "commit", "--quiet", "--no-edit")
    sh_git(repo, "switch", "--quiet", "main")
    res = run_distpar("resume", report.run_id, cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (repo / "same.txt").read_text() == "one and two\n" and (repo / "other.txt").exists()
    assert gitops.current_branch(repo) == "main" and not gitops.dirty_files(repo)


def test_resume_refuses_finished_and_unknown_runs(repo: Path) -> None:
    report, _ = run_plan(repo, [fake_batch(1)])
    res = run_distpar("resume", report.run_id, cwd=repo)
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == f"Error: run {report.run_id} finished successfully: nothing to resume"
    res = run_distpar("resume", "nope", cwd=repo)
    assert res.returncode == 2 and res.stderr.startswith("Error: no run 'nope'")


def test_interrupted_session_is_resumed_with_its_work_restored(repo: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "inv.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(log))
    plan = write_plan(tmp_path / "plan.md", [
        fake_batch(1, extra=["@fake append notes.txt 'first half'", "@fake sleep 60"]),
    ])
    run_and_interrupt(plan, repo, "worktrees/*/*/w1/notes.txt")
    run_id = journal().runs()[0]["id"]
    first = json.loads(log.read_text().splitlines()[0])["argv"]
    session = next(a.split("=", 1)[1] for a in first if a.startswith("--session-id="))
    assert journal().unit(run_id, "1")["session_id"] == session

    plan.write_text(plan.read_text().replace("@fake sleep 60", "@fake sleep 0"))
    res = run_distpar("resume", run_id, cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    second = json.loads(log.read_text().splitlines()[1])["argv"]
    assert f"--resume={session}" in second and not any(a.startswith("--session-id") for a in second)
    assert "previous session on this task was interrupted" in second[-1]
    # The interrupted session's edit was put back before it continued, so both halves are there.
    assert (repo / "notes.txt").read_text() == "first half\nfirst half\n"
