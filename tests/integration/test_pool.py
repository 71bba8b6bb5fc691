"""--reuse-workspaces, local: runs take the workspaces earlier runs left (their ignored files kept, --setup run
again only when the command or a --setup-key file changed), never two runs one workspace, what an earlier run left
uncommitted saved on a ref, a damaged workspace made anew (said), caps, and ``distpar clean --workspaces``:
real git, the fake agent, the Python API and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from distpar.core.errors import ExitCode
from distpar.infra import paths, pool
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import run_distpar
from tests.integration.conftest import commit, journal, run_plan

pytestmark = pytest.mark.integration


def ready(run_id: str) -> list[dict[str, Any]]:
    """The run's workspace_ready events, by worker."""
    events = [e for e in journal().events(run_id) if e.kind == "workspace_ready"]
    return [dict(e.data, worker=e.worker) for e in sorted(events, key=lambda e: e.worker or 0)]


@pytest.fixture
def setup_log(tmp_path: Path) -> Path:
    return tmp_path / "setup-runs.log"


def pooled_run(repo: Path, ids: list[int], setup_log: Path, workers: int = 2, **options: Any) -> Any:
    setup = options.pop("setup", f"mkdir -p deps && echo ran >> deps/installed && echo $PWD >> {setup_log}")
    batches = [fake_batch(i, writes={f"out{i}.txt": f"unit {i}"}, extra=[f"@fake copy deps/installed seen{i}.txt"])
               for i in ids]
    report, runner = run_plan(repo, batches, workers=workers, setup=setup, reuse_workspaces=True, **options)
    assert report.exit_code == ExitCode.OK, [r.error for r in report.results]
    return report, runner


def setup_runs(setup_log: Path) -> list[str]:
    return setup_log.read_text().splitlines() if setup_log.exists() else []


def test_a_second_run_reuses_the_workspaces_with_their_ignored_files_and_setup(repo: Path, setup_log: Path) -> None:
    commit(repo, {".gitignore": "deps/\n", "package.json": "{}\n"})
    first, _ = pooled_run(repo, [1, 2], setup_log, setup_key=("package.json",))
    one = ready(first.run_id)
    assert [e["how"] for e in one] == ["new", "new"] and [e["setup"] for e in one] == ["ran", "ran"]
    where = paths.worktrees_base(repo) / pool.LOCAL_POOL
    assert {Path(e["path"]).parent for e in one} == {where}
    assert len(setup_runs(setup_log)) == 2
    # Given back: clean, no branch of the run left in them, their ignored files kept.
    for e in one:
        ws = Path(e["path"])
        assert sh_git(ws, "status", "--porcelain") == ""
        assert sh_git(ws, "for-each-ref", "refs/heads/") == ""
        assert (ws / "deps" / "installed").read_text() == "ran\n"

    second, _ = pooled_run(repo, [3, 4], setup_log, setup_key=("package.json",))
    two = ready(second.run_id)
    assert [e["how"] for e in two] == ["reused", "reused"] and [e["setup"] for e in two] == ["kept", "kept"]
    assert {e["path"] for e in two} == {e["path"] for e in one}
    assert len(setup_runs(setup_log)) == 2  # not again
    assert (repo / "seen3.txt").read_text() == "ran\n"  # the unit saw the setup's files
    assert (repo / "out1.txt").read_text() == "unit 1" and (repo / "out4.txt").read_text() == "unit 4"
    status = run_distpar("status", second.run_id, cwd=repo)
    assert "workspace of w1: reused (setup kept), ready in" in status.stdout, status.stdout


def test_setup_runs_again_when_a_key_file_or_the_command_changed(repo: Path, setup_log: Path) -> None:
    commit(repo, {".gitignore": "deps/\n", "package-lock.json": "v1\n"})
    pooled_run(repo, [1], setup_log, workers=1, setup_key=("package-lock.json",))
    assert len(setup_runs(setup_log)) == 1
    commit(repo, {"package-lock.json": "v2\n"}, "bump")
    r2, _ = pooled_run(repo, [2], setup_log, workers=1, setup_key=("package-lock.json",))
    assert [(e["how"], e["setup"]) for e in ready(r2.run_id)] == [("reused", "ran")]
    assert len(setup_runs(setup_log)) == 2
    r3, _ = pooled_run(repo, [3], setup_log, workers=1, setup_key=("package-lock.json",))
    assert [(e["how"], e["setup"]) for e in ready(r3.run_id)] == [("reused", "kept")]
    other = f"mkdir -p deps && echo ran >> deps/installed && echo other >> {setup_log}"
    r4, _ = pooled_run(repo, [4], setup_log, workers=1, setup_key=("package-lock.json",), setup=other)
    assert [(e["how"], e["setup"]) for e in ready(r4.run_id)] == [("reused", "ran")]
    assert setup_runs(setup_log)[-1] == "other"


def test_uncommitted_work_an_earlier_run_left_is_saved_on_a_ref_never_carried(repo: Path, setup_log: Path) -> None:
    commit(repo, {".gitignore": "deps/\n"})
    first, _ = pooled_run(repo, [1], setup_log, workers=1)
    ws = Path(ready(first.run_id)[0]["path"])
    (ws / "left-behind.txt").write_text("an agent's unsaved work\n")  # what a killed run leaves
    (ws / "out1.txt").write_text("edited, never committed\n")
    second, _ = pooled_run(repo, [2], setup_log, workers=1)
    e = ready(second.run_id)[0]
    assert e["how"] == "reused" and "uncommitted work found in it was saved on refs/heads/distpar-kept/" in e["reason"]
    assert not (repo / "left-behind.txt").exists()  # never carried into a unit
    assert sh_git(repo, "show", "HEAD:out1.txt") == "unit 1"
    refs = sh_git(repo, "for-each-ref", "--format=%(refname)", f"refs/distpar/{second.run_id}/saved/").split()
    assert len(refs) == 1 and "distpar-kept" in refs[0], refs
    assert sh_git(repo, "show", f"{refs[0]}:left-behind.txt") == "an agent's unsaved work"
    assert sh_git(repo, "show", f"{refs[0]}:out1.txt") == "edited, never committed"
    assert refs[0] in second.saved_refs


@pytest.mark.parametrize("damage", ["index", "head", "state"])
def test_a_damaged_pooled_workspace_is_made_anew_and_said(repo: Path, setup_log: Path, damage: str) -> None:
    commit(repo, {".gitignore": "deps/\n"})
    first, _ = pooled_run(repo, [1], setup_log, workers=1)
    ws = Path(ready(first.run_id)[0]["path"])
    if damage == "index":
        (ws / ".git" / "index").write_bytes(b"garbage, not an index")
    elif damage == "head":
        (ws / ".git" / "HEAD").write_text("ref: refs/heads/nowhere\n")
    else:
        (ws / ".git" / "distpar-workspace.json").unlink()
    second, _ = pooled_run(repo, [2], setup_log, workers=1)
    e = ready(second.run_id)[0]
    assert e["how"] == "rebuilt" and e["path"] == str(ws), e
    assert ("is damaged" if damage != "state" else "was never fully prepared") in e["reason"]
    assert e["setup"] == "ran" and len(setup_runs(setup_log)) == 2
    assert (repo / "out2.txt").read_text() == "unit 2"


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from distpar.infra import pool
    lease = pool.acquire(Path(sys.argv[1]), "other-run")
    print(lease.path, flush=True)
    sys.stdin.read()  # held until the test closes our stdin
""")


def hold_one(where: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(where)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_workspace_another_run_holds_is_never_shared(repo: Path, setup_log: Path) -> None:
    commit(repo, {".gitignore": "deps/\n"})
    first, _ = pooled_run(repo, [1, 2], setup_log)
    where = paths.worktrees_base(repo) / pool.LOCAL_POOL
    proc, held = hold_one(where)  # another process (another run) takes the warmest workspace
    try:
        assert held in {Path(e["path"]) for e in ready(first.run_id)}
        second, _ = pooled_run(repo, [3, 4], setup_log)
        two = ready(second.run_id)
        assert str(held) not in {e["path"] for e in two}
        assert sorted(e["how"] for e in two) == ["new", "reused"]
        assert "no free workspace" in next(e["reason"] for e in two if e["how"] == "new")
    finally:
        proc.communicate("", timeout=30)
    # Its lock went with its process: the next run may take it.
    third, _ = pooled_run(repo, [5, 6, 7], setup_log, workers=3)
    assert held in {Path(e["path"]) for e in ready(third.run_id)}


def test_two_runs_at_once_take_different_workspaces(repo: Path, tmp_path: Path, setup_log: Path) -> None:
    """Two checkouts of one repository (the pool is the repository's) run at the same time."""
    commit(repo, {".gitignore": "deps/\n"})
    other = tmp_path / "second-checkout"
    sh_git(repo, "worktree", "add", "-q", "-b", "other", str(other))
    plans = []
    for where, i in ((repo, 1), (other, 2)):
        batch = fake_batch(i, writes={f"o{i}.txt": "x"}, extra=["@fake sleep 3"])
        plans.append(write_plan(where.parent / f"plan-at-once-{i}.md", [batch]))
    procs = [subprocess.Popen([sys.executable, "-m", "distpar", "run", str(plan), "--agent", "fake",
                               "--reuse-workspaces", "--workers", "1"], cwd=where, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for where, plan in zip((repo, other), plans, strict=True)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = [r["id"] for r in journal().runs()][:2]
    paths_used = [ready(r)[0]["path"] for r in runs]
    assert len(set(paths_used)) == 2, paths_used


def test_the_caps_remove_the_least_recently_used_idle_workspaces(tmp_path: Path) -> None:
    where = tmp_path / "pool"
    leases = [pool.acquire(where, "r") for _ in range(3)]
    for i, lease in enumerate(leases):
        lease.path.mkdir()
        (lease.path / "f").write_bytes(b"x" * 1000)
        pool.release(lease)
        os.utime(where / f"{lease.path.name}.lock", (1000.0 + i, 1000.0 + i))  # ws-3 the most recently used
    busy = pool.acquire(where, "r")  # the warmest: held, never pruned
    assert busy.path == leases[2].path and busy.how == "reused"
    assert pool.prune(where, pool.Caps(count=1, age=1e12, size=10**9), now=2000.0) == [leases[0].path]
    assert pool.prune(where, pool.Caps(count=9, age=500.0, size=10**9), now=2000.0) == [leases[1].path]
    assert leases[2].path.exists()
    pool.release(busy)
    assert pool.prune(where, pool.Caps(count=9, age=1e12, size=10), now=2000.0) == [leases[2].path]


def test_clean_workspaces_removes_idle_ones_saves_their_work_and_keeps_held_ones(repo: Path,
                                                                                setup_log: Path) -> None:
    commit(repo, {".gitignore": "deps/\n"})
    first, _ = pooled_run(repo, [1, 2], setup_log)
    where = paths.worktrees_base(repo) / pool.LOCAL_POOL
    proc, held = hold_one(where)
    idle = next(Path(e["path"]) for e in ready(first.run_id) if Path(e["path"]) != held)
    (idle / "unsaved.txt").write_text("left by a killed run\n")
    try:
        dry = run_distpar("clean", "--workspaces", "--dry-run", cwd=repo)
        assert f"would remove workspace {idle}" in " ".join(dry.stdout.split()) and idle.exists()
        out = run_distpar("clean", "--workspaces", cwd=repo)
        text = " ".join(out.stdout.split())
        assert f"keep workspace {held} (in use by a run)" in text, out.stdout
        assert f"remove workspace {idle}" in text and not idle.exists() and held.exists(), out.stdout
        ref = f"refs/distpar/pool/saved/{idle.name}"
        assert sh_git(repo, "show", f"{ref}:unsaved.txt") == "left by a killed run"
    finally:
        proc.communicate("", timeout=30)


def test_reuse_workspaces_and_setup_key_come_from_the_repository_settings(repo: Path, setup_log: Path) -> None:
    commit(repo, {".gitignore": "deps/\n", "pyproject.toml": textwrap.dedent("""
        [tool.distpar]
        reuse-workspaces = true
        setup-key = ["pyproject.toml"]
        pool-size = 4
        pool-max-age = 7
    """)})
    batches = [fake_batch(1, writes={"a.txt": "a"})]
    report, runner = run_plan(repo, batches, setup=f"echo x >> {setup_log}")
    assert report.exit_code == ExitCode.OK
    assert runner.options.reuse_workspaces and runner.options.setup_key == ("pyproject.toml",)
    assert runner.options.pool_size == 4 and runner.options.pool_max_age == 7 * 86400
    assert ready(report.run_id)[0]["path"].startswith(str(paths.worktrees_base(repo) / pool.LOCAL_POOL))
