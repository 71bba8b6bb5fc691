"""Run-time dispatch on real git and the fake agent: free workers pull ready units, workers keep their worktree,
the landed tree does not depend on timing, conflicts show up as soon as they exist, one coordinator per run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from distpar.coordinator.journal import Journal
from distpar.coordinator.runtime import RunLock
from distpar.core.errors import ExitCode, UsageError
from distpar.core.model import UnitStatus
from distpar.infra import gitops
from distpar.infra.paths import state_dir
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import wait_for
from tests.integration.conftest import run_plan

pytestmark = pytest.mark.integration


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def test_the_assignment_is_journaled_as_it_ran(repo: Path) -> None:
    """End to end, quickly: units on two workers, and the journal holds which worker ran each one, as the results
    and the live events said. (Which worker takes what is the pure state's choice: tests/unit/test_state.py, and
    through the whole executor without timing: tests/integration/test_executor_fake.py.)"""
    batches = [fake_batch("long", writes={"l.txt": "l"}, sleep=0.5)]
    batches += [fake_batch(f"s{i}", writes={f"s{i}.txt": str(i)}) for i in range(3)]
    events: list[dict[str, Any]] = []
    report, _ = run_plan(repo, batches, workers=2,
                         observer=lambda kind, data: events.append(data) if kind == "unit_ended" else None)
    assert report.exit_code == ExitCode.OK, report.errors
    worker = {r.unit_id: r.worker for r in report.results}
    assert set(worker) == {"long", "s0", "s1", "s2"} and set(worker.values()) <= {0, 1}
    assert {b["unit_id"]: b["worker"] for b in journal().units(report.run_id)} == worker
    assert {e["unit"]: e["worker"] for e in events} == worker
    assert {"l.txt", "s0.txt", "s1.txt", "s2.txt"} <= set(gitops.out(repo, "ls-tree", "--name-only", "main").split())


def test_a_worker_keeps_its_worktree_across_units(repo: Path) -> None:
    """An ignored file made by the first unit (say, node_modules) is still there for the worker's next unit,
    while the tracked files follow each unit's own base."""
    (repo / ".gitignore").write_text("cache/\n")
    sh_git(repo, "add", ".gitignore")
    sh_git(repo, "commit", "-q", "-m", "ignore cache")
    batches = [
        fake_batch(1, writes={"cache/warm.txt": "built once", "one.txt": "1"}),
        fake_batch(2, extra=["@fake copy cache/warm.txt seen.txt"]),
    ]
    report, runner = run_plan(repo, batches, workers=1, keep_branches=True)
    assert report.exit_code == ExitCode.OK, [r.error for r in report.results]
    assert sh_git(repo, "show", f"{runner.branch('2')}:seen.txt") == "built once"
    # 2 does not depend on 1: its branch starts from the run's start, without 1's tracked work.
    assert "one.txt" not in sh_git(repo, "ls-tree", "--name-only", runner.branch("2")).split()


def test_the_landed_tree_is_the_same_whatever_the_timing(repo: Path, tmp_path: Path) -> None:
    start = gitops.rev(repo, "main")

    def plan(durations: list[float]) -> list[dict[str, Any]]:
        return [
            fake_batch("a", writes={"a.txt": "a"}, sleep=durations[0]),
            fake_batch("b", writes={"b.txt": "b"}, sleep=durations[1]),
            fake_batch("c", writes={"c.txt": "c"}, depends_on=["a", "b"], sleep=durations[2]),
            fake_batch("d", writes={"d.txt": "d"}, sleep=durations[3]),
        ]

    trees = []
    for durations, workers in (([0.1, 0.6, 0.0, 0.3], 3), ([0.6, 0.0, 0.2, 0.0], 2), ([0.0] * 4, 1)):
        sh_git(repo, "reset", "-q", "--hard", start)
        report, _ = run_plan(repo, plan(durations), workers=workers)
        assert report.exit_code == ExitCode.OK, report.errors
        trees.append(gitops.tree_of(repo, "main"))
    assert len(set(trees)) == 1


def test_a_conflict_is_reported_as_soon_as_it_exists_and_can_stop_new_units(repo: Path) -> None:
    start = gitops.rev(repo, "main")
    batches = [
        fake_batch("x", writes={"same.txt": "x\n"}),
        fake_batch("y", writes={"same.txt": "y\n"}, sleep=0.3),
        fake_batch("later", writes={"later.txt": "l"}, depends_on=["y"]),
    ]
    events: list[tuple[str, dict[str, Any]]] = []
    report, runner = run_plan(repo, batches, workers=2, stop_on_conflict=True,
                              observer=lambda kind, data: events.append((kind, data)))
    kinds = [k for k, _ in events]
    predicted = next(d for k, d in events if k == "conflict_predicted")
    assert predicted["unit"] == "y" and predicted["files"] == ["same.txt"] and predicted["others"] == ["x"]
    # Found when y ended, long before any merge; with --stop-on-conflict nothing new started after it.
    assert kinds.index("conflict_predicted") < kinds.index("run_ended") and "merge_started" not in kinds
    assert report.pending == ["later"] and report.exit_code == ExitCode.BATCH_FAILED
    assert [e.kind for e in journal().events(report.run_id)].count("conflict_predicted") == 1
    # Nothing was resolved or landed; both units' work is on their branches.
    assert gitops.rev(repo, "main") == start
    assert sh_git(repo, "show", f"{runner.branch('y')}:same.txt") == "y"


def test_a_failure_skips_only_what_depends_on_it(repo: Path) -> None:
    batches = [
        fake_batch("a", extra=["@fake fail 1 'broken'"]),
        fake_batch("b", depends_on=["a"]),
        fake_batch("c", depends_on=["b"]),
        fake_batch("d", writes={"d.txt": "d"}, sleep=0.3),
    ]
    report, _ = run_plan(repo, batches, workers=2)
    status = {r.unit_id: r.status for r in report.results}
    assert status == {"a": UnitStatus.FAILED, "b": UnitStatus.SKIPPED, "c": UnitStatus.SKIPPED,
                      "d": UnitStatus.OK}
    reasons = {r.unit_id: r.error for r in report.results}
    assert reasons["b"] == "dependency a did not succeed" and reasons["c"] == "dependency b did not succeed"


def test_an_interrupt_while_landing_lets_the_landing_finish_and_says_so(repo: Path) -> None:
    holder: dict[str, Any] = {}

    def observer(kind: str, data: dict[str, Any]) -> None:
        if kind == "merge_started":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C exactly while the merge runs
            time.sleep(0.1)
        holder.setdefault("kinds", []).append(kind)

    report, _ = run_plan(repo, [fake_batch(1, writes={"one.txt": "1"})], observer=observer)
    assert report.exit_code == ExitCode.OK and report.landed == gitops.rev(repo, "main")
    assert (repo / "one.txt").read_text() == "1"
    run = journal().run(report.run_id)
    assert run is not None and run["state"] == "ok"
    assert "interrupt_while_landing" in [e.kind for e in journal().events(report.run_id)]


def test_one_coordinator_per_run(repo: Path, tmp_path: Path) -> None:
    run_dir = state_dir(repo) / "runs" / "r1"
    lock = RunLock(run_dir, "r1").acquire()
    try:
        with pytest.raises(UsageError, match=rf"run r1 is already being run by coordinator pid {os.getpid()}"):
            RunLock(run_dir, "r1").acquire()
    finally:
        lock.release()
    RunLock(run_dir, "r1").acquire().release()  # free again once released


def test_a_second_resume_of_a_live_run_is_refused(repo: Path, isolated_env: str) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "1"}, sleep=30)])
    first = subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), "--agent", "fake", "-q"], cwd=repo,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rid = wait_for(lambda: next((r["id"] for r in journal().runs()), ""), what="the run to start")
        wait_for(lambda: journal().unit(rid, "1")["state"] == "running", what="the agent")
        first.send_signal(signal.SIGKILL)  # the coordinator dies; its agent lives on
        first.wait(timeout=30)
        second = subprocess.Popen([sys.executable, "-m", "distpar", "resume", rid, "-q"], cwd=repo,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: (state_dir(repo) / "runs" / rid / "coordinator.lock").exists()
                     and journal().run(rid)["pid"] == second.pid, what="the first resume to take over")
            third = subprocess.run([sys.executable, "-m", "distpar", "resume", rid], cwd=repo, capture_output=True,
                                   text=True, timeout=60)
            assert third.returncode == 2, third.stderr
            assert third.stderr.splitlines()[0].startswith(f"Error: run {rid} is ")
            assert str(second.pid) in third.stderr.splitlines()[0]
        finally:
            second.send_signal(signal.SIGINT)
            second.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
