"""The end of a run: workspaces are forgotten by git before the run returns and their files removed by a thread
(journaled); ``distpar clean`` waits for a removal under way and finishes one that was cut short."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from distpar.coordinator import removal, runtime
from distpar.infra import gitops, paths
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import run_distpar, wait_for
from tests.integration.conftest import run_plan


def _events(repo: Path, run_id: str) -> list[tuple[str, dict[str, object]]]:
    journal = runtime.open_journal(repo)
    try:
        return [(e.kind, e.data) for e in journal.events(run_id)]
    finally:
        journal.close()


def test_workspaces_are_forgotten_before_the_run_returns_and_their_files_removed_after(repo: Path) -> None:
    report, _ = run_plan(repo, [fake_batch(i, writes={f"f{i}": "x"}) for i in range(1, 5)], workers=2)
    assert report.state == "ok", report.errors
    # Before run() returned: git knows no workspace, their directories are gone from where agents ran.
    assert len(gitops.worktrees(repo)) == 1
    assert not paths.worktrees_root(repo, report.run_id).exists()
    assert removal.wait_for_removals(60)
    removing = next(d for k, d in _events(repo, report.run_id) if k == "workspaces_removing")
    removed = next(d for k, d in _events(repo, report.run_id) if k == "workspaces_removed")
    assert len(removing["workspaces"]) == 2 and removed["count"] == 2 and removed["error"] == ""  # type: ignore
    assert not Path(str(removing["moved_to"])).exists()
    assert not (paths.worktrees_base(repo) / removal.REMOVING).exists()


def test_uncommitted_work_is_saved_before_a_workspace_is_moved_aside(repo: Path) -> None:
    report, runner = run_plan(repo, [fake_batch(1, writes={"one.txt": "1\n"})], workers=1)
    assert report.state == "ok"
    assert removal.wait_for_removals(60)
    # A workspace left with uncommitted work (as a crash between an agent and its commit would leave it).
    ws = paths.workspace(repo, "r-dirty", 0)
    gitops.worktree_add(repo, ws, "distpar/r-dirty/b/x", gitops.rev(repo, "main"))
    (ws / "unsaved.txt").write_text("unsaved\n")
    Path(gitops.out(ws, "rev-parse", "--path-format=absolute", "--git-dir"), "distpar-ready").write_text("")
    journal = runtime.open_journal(repo)
    try:
        saved = removal.cleanup(replace(runner.site, run_id="r-dirty"), journal, [ws])
    finally:
        journal.close()
    assert saved == ["refs/distpar/r-dirty/saved/w1-cleanup"]
    assert sh_git(repo, "show", "refs/distpar/r-dirty/saved/w1-cleanup:unsaved.txt") == "unsaved"
    assert not ws.exists() and len(gitops.worktrees(repo)) == 1
    assert removal.wait_for_removals(60)


def test_clean_waits_for_a_removal_under_way_and_finishes_one_cut_short(repo: Path) -> None:
    report, _ = run_plan(repo, [fake_batch(1, writes={"one.txt": "1\n"})], workers=1)
    assert report.state == "ok" and removal.wait_for_removals(60)
    root = paths.worktrees_base(repo) / removal.REMOVING
    # A removal cut short (the coordinator was killed): files left, no one holding its lock.
    cut = root / report.run_id / "dead"
    (cut / "w1" / "deep").mkdir(parents=True)
    (cut / "w1" / "deep" / "file").write_text("left\n")
    dry = run_distpar("clean", "--dry-run", cwd=repo)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove removal {root / report.run_id}" in " ".join(dry.stdout.split())
    # A removal under way in another process: its lock is held while the files go.
    busy = root / "20990101-000000-busy" / "live"
    (busy / "w1").mkdir(parents=True)
    lock = open(busy.with_suffix(".lock"), "w")  # noqa: SIM115 - released half way through the test
    fcntl.flock(lock, fcntl.LOCK_EX)

    proc = subprocess.Popen([sys.executable, "-m", "distpar", "clean"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        # clean holds the lock file open while it waits for it: then the other coordinator's removal ends.
        lock_path = str(busy.with_suffix(".lock"))
        wait_for(lambda: any(os.path.realpath(f"/proc/{proc.pid}/fd/{fd}") == lock_path
                             for fd in os.listdir(f"/proc/{proc.pid}/fd")), 60, "clean waiting for the lock")
        assert proc.poll() is None
        (busy / "w1").rmdir()
        busy.rmdir()
        busy.with_suffix(".lock").unlink()
        busy.parent.rmdir()
        lock.close()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert f"remove removal {root / report.run_id}" in " ".join(out.split()) and "busy" not in out
    assert not root.exists()


def test_the_cli_exits_once_the_workspaces_are_removed(repo: Path) -> None:
    plan = write_plan(repo.parent / "plan.md", [fake_batch(i, writes={f"f{i}": "x"}) for i in range(1, 4)])
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "--json", cwd=repo)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.splitlines()[-1])["run_id"]
    removed = [d for k, d in _events(repo, run_id) if k == "workspaces_removed"]
    assert removed and removed[0]["count"] == 2
    assert not (paths.worktrees_base(repo) / removal.REMOVING).exists()
