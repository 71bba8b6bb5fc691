"""Worktrees ready to work in (.worktreeinclude, --setup once per worker, ports of their own) and gates on the
result (--verify after each batch, --verify-merged before landing), --push to a remote: real git, the fake agent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distpar.core.errors import ExitCode
from distpar.core.model import UnitStatus
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import run_distpar, run_id_of, run_status
from tests.integration.conftest import commit, journal, run_plan

pytestmark = pytest.mark.integration


def test_included_ignored_files_are_in_every_worktree_and_in_no_commit(repo: Path) -> None:
    commit(repo, {".gitignore": ".env\nlocal/\n", ".worktreeinclude": ".env\n"})
    (repo / ".env").write_text("API_TOKEN=s3cret\n")
    (repo / "local").mkdir()
    (repo / "local" / "big.bin").write_text("not asked for\n")
    batches = [fake_batch(i, extra=[f"@fake copy .env env{i}.txt", f"@fake copy local/big.bin local{i}.txt"])
               for i in (1, 2, 3)]
    report, _ = run_plan(repo, batches, workers=3)
    assert report.exit_code == ExitCode.OK, [r.error for r in report.results]
    assert {r.worker for r in report.results} == {0, 1, 2}  # three workers, three worktrees
    for i in (1, 2, 3):
        assert (repo / f"env{i}.txt").read_text() == "API_TOKEN=s3cret\n"
        assert (repo / f"local{i}.txt").read_text() == "<missing>"
    assert ".env" not in sh_git(repo, "log", "--all", "--name-only", "--format=").split()
    assert "s3cret" not in (Path(os.environ["DISTPAR_HOME"]) / "journal.db").read_bytes().decode("latin-1")


def test_setup_runs_once_per_worker_before_its_first_batch(repo: Path) -> None:
    commit(repo, {".gitignore": "deps/\n"})
    setup = "mkdir -p deps && echo ready >> deps/installed && echo $DISTPAR_PORT_BASE > deps/port"
    batches = [fake_batch(i, extra=[f"@fake copy deps/installed seen{i}.txt",
                                    f"@fake copy deps/port port{i}.txt"]) for i in range(1, 5)]
    report, runner = run_plan(repo, batches, workers=2, setup=setup, keep_branches=True)
    assert report.exit_code == ExitCode.OK, [r.error for r in report.results]
    seen = {r.unit_id: sh_git(repo, "show", f"{runner.branch(r.unit_id)}:seen{r.unit_id}.txt")
            for r in report.results}
    assert set(seen.values()) == {"ready"}  # one line: the setup ran once in each workspace, before any batch
    events = [e for e in journal().events(report.run_id) if e.kind == "workspace_setup"]
    assert sorted(e.worker for e in events) == [0, 1] and all(e.data["ok"] for e in events)
    # Two units got disjoint port blocks (one per worker), and every unit of a worker the same one.
    ports: dict[int, set[int]] = {}
    for r in report.results:
        port = sh_git(repo, "show", f"{runner.branch(r.unit_id)}:port{r.unit_id}.txt")
        ports.setdefault(r.worker, set()).add(int(port))
    assert all(len(p) == 1 for p in ports.values())
    first = [p.pop() for p in ports.values()]
    assert len(first) == 2 and abs(first[0] - first[1]) >= 10
    status = run_distpar("status", report.run_id, cwd=repo)
    assert "setup on w1" in status.stdout and "setup on w2" in status.stdout


def test_a_failing_setup_fails_that_workers_units_and_says_so(repo: Path) -> None:
    report, _ = run_plan(repo, [fake_batch(1, writes={"a": "1"})], setup="echo no network for npm >&2; exit 7")
    r = report.results[0]
    assert r.status is UnitStatus.FAILED and report.exit_code == ExitCode.BATCH_FAILED
    assert "setup failed (exit 7" in r.error and "no network for npm" in r.error


def test_setup_timeout_bounds_a_setup_that_never_ends(repo: Path) -> None:
    """--setup-timeout (a worker option: one declared field and its use in the worker) stops a hanging setup; the
    same bound comes from [tool.distpar] too."""
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    res = run_distpar("run", str(plan), "--agent", "fake", "-w", "1", "--setup", "sleep 60", "--setup-timeout", "1",
                      cwd=repo, timeout=50)
    assert res.returncode == int(ExitCode.BATCH_FAILED), res.stdout + res.stderr
    assert "setup" in res.stdout and "a.txt" not in sh_git(repo, "ls-tree", "--name-only", "main")
    (repo / "distpar.toml").write_text('setup = "sleep 60"\nsetup_timeout = 1\n')
    sh_git(repo, "add", "distpar.toml")
    sh_git(repo, "commit", "-qm", "settings")
    res = run_distpar("run", str(plan), "--agent", "fake", "-w", "1", cwd=repo, timeout=50)
    assert res.returncode == int(ExitCode.BATCH_FAILED), res.stdout + res.stderr


def test_verify_fails_a_batch_and_keeps_its_work(repo: Path) -> None:
    start = gitops.rev(repo, "main")
    batches = [fake_batch("good", writes={"ok.txt": "fine"}), fake_batch("bad", writes={"broken.txt": "x"})]
    report, _ = run_plan(repo, batches, workers=1, verify="test ! -e broken.txt || { echo 'lint: broken'; exit 3; }")
    status = {r.unit_id: r.status for r in report.results}
    assert status == {"good": UnitStatus.OK, "bad": UnitStatus.FAILED}
    bad = next(r for r in report.results if r.unit_id == "bad")
    assert "verify failed (exit 3" in bad.error and "lint: broken" in bad.error
    assert bad.outcome is not None and bad.outcome.result_class == "verify_failed"
    assert "lint: broken" in Path(bad.log_path or "").read_text()
    saved = [r for r in report.saved_refs if r.endswith("/saved/bad")]
    assert saved and sh_git(repo, "show", f"{saved[0]}:broken.txt") == "x"
    assert gitops.rev(repo, "main") == start


def test_verify_merged_keeps_the_target_until_the_gate_passes(repo: Path) -> None:
    start = gitops.rev(repo, "main")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"}),
                                             fake_batch(2, writes={"b.txt": "b"})])
    gate = "test -e fixed.txt || { echo 'integration tests: 1 failed'; exit 1; }"
    res = run_distpar("run", str(plan), "--agent", "fake", "--workers", "2", "--verify-merged", gate, cwd=repo)
    assert res.returncode == 5, res.stderr
    rid = run_id_of(res.stdout)
    assert "the merged tree failed --verify-merged" in res.stdout and "integration tests: 1 failed" in res.stdout
    assert gitops.rev(repo, "main") == start and not gitops.dirty_files(repo)
    integration = f"distpar/{rid}/integration"
    assert {"a.txt", "b.txt"} <= set(sh_git(repo, "ls-tree", "--name-only", integration).split())
    assert run_status(repo, rid)["run"]["state"] == "gate_failed"
    # The user fixes it on the integration branch; resume runs the gate again, not the agents.
    ws = repo.parent / "fix"
    sh_git(repo, "worktree", "add", "-q", str(ws), integration)
    commit(ws, {"fixed.txt": "yes"}, "fix the integration")
    sh_git(repo, "worktree", "remove", str(ws))
    again = run_distpar("resume", rid, cwd=repo)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {"a.txt", "b.txt", "fixed.txt"} <= set(sh_git(repo, "ls-tree", "--name-only", "main").split())
    starts = [e for e in journal().events(rid) if e.kind == "unit_started"]
    assert len(starts) == 2  # the agents ran once, in the first run
    assert [e.data["ok"] for e in journal().events(rid) if e.kind == "verify_merged"] == [False, True]


def test_push_carries_every_branch_to_the_remote(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    sh_git(tmp_path, "init", "-q", "--bare", str(remote))
    sh_git(repo, "remote", "add", "origin", str(remote))
    sh_git(repo, "push", "-q", "-u", "origin", "main")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"}), fake_batch(2, writes={"b.txt": "b"}),
                                             fake_batch(3, writes={"c.txt": "c"}, depends_on=[1])])
    res = run_distpar("run", str(plan), "--agent", "fake", "--workers", "2", "--push", "origin", cwd=repo)
    assert res.returncode == 0, res.stderr
    rid = run_id_of(res.stdout)
    pushed = sh_git(remote, "for-each-ref", "--format=%(refname)").split()
    assert {f"refs/heads/distpar/{rid}/b/{b}" for b in "123"} | {f"refs/heads/distpar/{rid}/integration"} <= set(pushed)
    assert sh_git(remote, "rev-parse", "main") == gitops.rev(repo, "main")  # the landing reached the remote
    assert "pushed to origin:" in res.stdout
    bad = run_distpar("run", str(plan), "--agent", "fake", "--push", "nowhere", cwd=repo)
    assert bad.returncode == 2 and "--push nowhere: no such remote" in bad.stderr


def test_repo_settings_give_defaults_and_flags_win(repo: Path) -> None:
    commit(repo, {"pyproject.toml": '[tool.distpar]\nverify = "exit 9"\n'})
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    res = run_distpar("run", str(plan), "--agent", "fake", "-q", cwd=repo)
    assert res.returncode == 1 and "verify failed (exit 9" in res.stdout
    ok = run_distpar("run", str(plan), "--agent", "fake", "-q", "--verify", "true", cwd=repo)
    assert ok.returncode == 0, ok.stdout
    commit(repo, {"pyproject.toml": '[tool.distpar]\nverfy = "x"\n'}, "typo")
    typo = run_distpar("run", str(plan), "--agent", "fake", cwd=repo)
    assert typo.returncode == 2 and "unknown setting 'verfy'" in typo.stderr


def test_listing_worktrees_waits_for_a_worktree_being_added(repo: Path) -> None:
    """``git worktree add`` creates a worktree's commondir file before it writes it; ``git worktree list`` at that
    moment fails ("failed to read .git/worktrees/w6/commondir: Success", seen with 16 workers). Listing takes
    its turn with adding (the worktree lock), so the coordinator never sees a half-made worktree."""
    import threading

    half = repo / ".git" / "worktrees" / "half"
    holding, listed = threading.Event(), threading.Event()

    def add_slowly() -> None:  # what `git worktree add` leaves for a moment, under the lock it is taken with
        with gitops.repo_lock(repo, "worktree"):
            half.mkdir(parents=True)
            (half / "gitdir").write_text(f"{repo.parent / 'half'}/.git\n")
            (half / "commondir").write_text("")
            holding.set()
            listed.wait(1.0)  # the listing must not get through while the worktree is half made
            for f in half.iterdir():
                f.unlink()
            half.rmdir()

    adder = threading.Thread(target=add_slowly)
    adder.start()
    assert holding.wait(10)
    found = gitops.worktrees(repo)
    listed.set()
    adder.join(10)
    assert [p for p, _ in found] == [str(repo)]
