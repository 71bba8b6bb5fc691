"""``distpar clean``: leftovers of finished runs go, unmerged work stays (unless --force), orphans of a killed
coordinator are swept (its agents killed), live runs are never touched."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from distpar.infra import gitops, paths
from distpar.ops import clean
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import processes_with_mark, run_distpar, wait_for
from tests.integration.conftest import run_plan
from tests.operate.conftest import batch_state, run_ids, start_distpar

pytestmark = pytest.mark.integration


def state() -> Path:
    return Path(os.environ["DISTPAR_HOME"])


def everything(repo: Path) -> tuple[str, str, list[str]]:
    """Refs, worktrees and run directories: what clean may change."""
    runs = sorted(p.name for p in (state() / "runs").iterdir()) if (state() / "runs").exists() else []
    return sh_git(repo, "for-each-ref"), sh_git(repo, "worktree", "list", "--porcelain"), runs


def distpar_refs(repo: Path) -> list[str]:
    return sh_git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/distpar/", "refs/distpar/").split()


def lines_of(out: str) -> list[str]:
    return [re.sub(r"\s+", " ", line.strip()) for line in out.splitlines()]


def test_clean_removes_what_a_finished_run_left(repo: Path) -> None:
    report, _ = run_plan(repo, [fake_batch(1, writes={"a": "1"}), fake_batch(2, writes={"b": "2"})], workers=2,
                         keep_branches=True)
    rid = report.run_id
    assert report.state == "ok" and len(distpar_refs(repo)) == 3 and (state() / "runs" / rid / "logs").is_dir()
    before = everything(repo)
    dry = run_distpar("clean", "--dry-run", cwd=repo)
    assert dry.returncode == 0, dry.stderr
    assert lines_of(dry.stdout) == [
        f"would remove branch distpar/{rid}/b/1 (merged into main)",
        f"would remove branch distpar/{rid}/b/2 (merged into main)",
        f"would remove branch distpar/{rid}/integration (merged into main)",
        f"would remove state-dir {state() / 'runs' / rid} (logs and scratch files; run ok)",
    ]
    assert everything(repo) == before  # a dry run changes nothing
    res = run_distpar("clean", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "removed 4, kept 0"
    assert distpar_refs(repo) == [] and not (state() / "runs" / rid).exists()
    assert sh_git(repo, "branch", "--show-current") == "main" and (repo / "a").exists() and (repo / "b").exists()
    again = run_distpar("clean", cwd=repo)
    assert again.returncode == 0 and again.stdout.strip() == "nothing to clean"
    assert run_distpar("status", rid, cwd=repo).returncode == 0  # history stays in the journal


def test_clean_keeps_unmerged_work_of_a_failed_run_unless_forced(repo: Path) -> None:
    report, _ = run_plan(repo, [
        fake_batch(1, writes={"done.txt": "finished work\n"}),
        fake_batch(2, writes={"half.txt": "half done\n"}, extra=["@fake fail 1 'ran out of time'"]),
    ], workers=1)
    rid = report.run_id
    assert report.state == "failed"
    branch, saved = f"distpar/{rid}/b/1", f"refs/distpar/{rid}/saved/2"
    # The failed unit's branch never moved from its base: nothing of it is lost when clean removes it.
    assert distpar_refs(repo) == [saved, f"refs/heads/{branch}", f"refs/heads/distpar/{rid}/b/2"]
    res = run_distpar("clean", cwd=repo)
    assert res.returncode == 0, res.stderr
    assert lines_of(res.stdout) == [
        f"keep branch {branch} (holds 1 commit(s) not merged into main; --force removes it)",
        f"remove branch distpar/{rid}/b/2 (merged into main)",
        f"keep ref {saved} (holds unfinished work saved by distpar not merged into main; --force removes it)",
        f"keep state-dir {state() / 'runs' / rid} (logs of a run with unmerged work, kept for resume; "
        "--force removes them)",
        "removed 1, kept 3",
    ]
    before = everything(repo)
    assert run_distpar("clean", cwd=repo).stdout.splitlines()[-1] == "removed 0, kept 3"
    assert everything(repo) == before
    assert run_distpar("logs", rid, "--batch", "2", cwd=repo).returncode == 0  # logs still there for resume
    forced = run_distpar("clean", rid, "--force", cwd=repo)
    assert forced.returncode == 0, forced.stderr
    assert f"remove branch {branch} (not merged into main, removed by --force)" in lines_of(forced.stdout)
    assert distpar_refs(repo) == [] and not (state() / "runs" / rid).exists()


def test_clean_sweeps_the_orphans_of_a_killed_coordinator(repo: Path, isolated_env: str) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch("quick", writes={"q.txt": "q\n"}),
        fake_batch("slow", sleep=60, writes={"s.txt": "s\n"}),
    ])
    with start_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "-q", cwd=repo) as coordinator:
        rid = wait_for(lambda: next(iter(run_ids()), ""), what="the run to start")
        wait_for(lambda: batch_state(rid, "quick") == "ok", what="the quick batch")
        agents = wait_for(lambda: clean.agent_processes().get(rid, []), what="the slow agent")
        # While the coordinator lives, clean touches nothing of its run.
        live = run_distpar("clean", cwd=repo)
        assert lines_of(live.stdout)[0] == f"keep run {rid} (live: coordinator pid {coordinator.pid} is running)"
        refused = run_distpar("clean", rid, cwd=repo)
        assert refused.returncode == 2
        assert refused.stderr.splitlines()[0] == (f"Error: run {rid} is still running (coordinator pid "
                                                  f"{coordinator.pid}): nothing to clean")
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait(timeout=30)
    assert processes_with_mark(isolated_env, wait=0)  # the agent outlived its coordinator
    worktree = paths.workspace(repo, rid, 1)  # workspaces live outside the checkout, repositories of their own
    assert gitops.is_own_repository(worktree) and str(worktree) not in [p for p, _ in gitops.worktrees(repo)]
    status = run_distpar("status", cwd=repo)
    assert re.search(rf"^{rid} +p\.md +\S+ \S+ +crashed ", status.stdout, re.M), status.stdout
    assert run_distpar("report", rid, "--html", str(repo.parent / "r.html"), cwd=repo).returncode == 0

    dry = lines_of(run_distpar("clean", "--dry-run", cwd=repo).stdout)
    assert f"would kill process pid {agents[0]} (agent of a run that is not live: coordinator gone)" in dry
    res = run_distpar("clean", cwd=repo)
    assert res.returncode == 0, res.stderr
    out = lines_of(res.stdout)
    assert f"remove worktree {worktree} (coordinator gone)" in out
    # The slow batch never committed: its branch lived only in its workspace, which held nothing to save.
    assert not [line for line in out if "b/slow" in line], out
    assert f"keep branch distpar/{rid}/b/quick (holds 1 commit(s) not merged into main; --force removes it)" in out
    assert processes_with_mark(isolated_env, wait=3) == []  # the orphaned agent is gone
    assert [p for p, _ in gitops.worktrees(repo)] == [str(repo)]
    assert distpar_refs(repo) == [f"refs/heads/distpar/{rid}/b/quick"]
    assert not worktree.exists()


def test_clean_sweeps_leftovers_with_no_journal_row(repo: Path) -> None:
    """A worktree and a branch named for a run the journal never heard of (its journal lost, say)."""
    rid = "20000101-000000-dead"
    ws = state() / "runs" / rid / "wt" / "s1"
    ws.parent.mkdir(parents=True)
    sh_git(repo, "worktree", "add", "--quiet", "-b", f"distpar/{rid}/b/1", str(ws), "main")
    (ws / "scratch.txt").write_text("uncommitted\n")
    sh_git(repo, "branch", f"distpar/{rid}/b/2", "main")
    res = run_distpar("clean", cwd=repo)
    assert res.returncode == 0, res.stderr
    saved = f"refs/distpar/{rid}/saved/s1-clean"
    assert lines_of(res.stdout) == [
        f"remove worktree {ws} (no journal row (orphan); its uncommitted changes are saved on {saved} first)",
        f"keep ref {saved} (will hold the worktree's uncommitted changes)",
        f"remove branch distpar/{rid}/b/1 (merged into any branch)",
        f"remove branch distpar/{rid}/b/2 (merged into any branch)",
        f"keep state-dir {state() / 'runs' / rid} (logs of a run with unmerged work, kept for resume; "
        "--force removes them)",
        "removed 3, kept 2",
    ]
    assert distpar_refs(repo) == [saved]
    assert sh_git(repo, "show", f"{saved}:scratch.txt") == "uncommitted"  # nothing was lost
    assert not ws.exists()
