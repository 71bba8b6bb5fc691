"""Item 9: what an agent can reach outside its worktree. Worktrees live outside the user's checkout, so
``../..`` never lands in it; a child that leaves the agent's session (``setsid``) is reaped at the end of the
batch; ``--sandbox`` (bubblewrap) confines an agent's writes to its worktree and the paths the user allows."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distpar.infra import paths
from distpar.testing.builders import fake_batch, sh_git, tree_files, write_plan
from tests.conftest import processes_with_mark, run_distpar, run_id_of
from tests.safety.conftest import sh

ESCAPE = "../" * 6 + "escape.txt"  # from <repo>/.git/distpar/runs/<run>/wt/s1, where worktrees used to be


def test_relative_escape_does_not_reach_the_checkout(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("DISTPAR_HOME")  # state in <repo>/.git/distpar, as for a user
    cwd_file = tmp_path / "agent-cwd"
    plan = write_plan(tmp_path / "p.md", [
        fake_batch(1, extra=[sh(f"pwd > {cwd_file}; echo escaped > {ESCAPE}"), "@fake write ok.txt fine"]),
    ])
    res = run_distpar("run", str(plan), "--agent", "fake", "--keep-branches", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    worktree = Path(cwd_file.read_text().strip())
    assert worktree == paths.workspace(repo, run_id_of(res.stdout), 0)
    assert not worktree.is_relative_to(repo)  # no number of ../ from it passes through the checkout
    assert not (repo / "escape.txt").exists()
    assert (Path.home() / "escape.txt").read_text() == "escaped\n"  # it landed in distpar's cache's parents
    assert sh_git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert "ok.txt" in tree_files(repo, "main")


def test_worktrees_never_go_inside_the_checkout(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repository at $HOME holds ~/.cache: the worktrees go to the temporary directory instead."""
    monkeypatch.setenv("HOME", str(repo))
    monkeypatch.delenv("DISTPAR_HOME")
    root = paths.worktrees_root(repo, "r1")
    assert not root.is_relative_to(repo.resolve()) and root.name == "r1"
    monkeypatch.setenv("DISTPAR_WORKTREES", str(repo / "inside"))
    plan = write_plan(repo.parent / "p.md", [fake_batch(1)])
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=repo)
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == (f"Error: $DISTPAR_WORKTREES={repo / 'inside'} is inside the checkout "
                                          f"{repo.resolve()}: an agent could reach the checkout's files from its "
                                          "worktree")


def test_child_that_leaves_the_agents_session_is_reaped(repo: Path, isolated_env: str) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh("setsid sleep 300 </dev/null >/dev/null 2>&1 &"), "@fake write a.txt a"]),
        fake_batch(2, extra=[sh("setsid sh -c 'trap \"\" TERM; sleep 300' </dev/null >/dev/null 2>&1 &")]),
    ])
    res = run_distpar("run", str(plan), "--agent", "fake", "--workers", "2", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert processes_with_mark(isolated_env, wait=0) == []  # gone when the run ended, not left to `clean`


needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


@needs_bwrap
def test_sandbox_confines_writes_to_the_worktree(repo: Path, tmp_path: Path, isolated_env: str) -> None:
    in_tmp, allowed = tmp_path / "outside.txt", tmp_path / "allowed"
    outside = Path("/var/tmp") / f"distpar-sandbox-{isolated_env}.txt"  # a real file system outside /tmp
    allowed.mkdir()
    plan = write_plan(tmp_path / "p.md", [
        fake_batch(1, extra=["@fake write in.txt inside", "@fake commit 'agent commits in the sandbox'",
                             sh(f"echo ok > {allowed}/a.txt")]),
        fake_batch(2, extra=[sh(f"echo private > {in_tmp}")]),  # /tmp is the sandbox's own
        fake_batch(3, extra=[sh(f"echo escaped > {outside}")]),
    ])
    try:
        res = run_distpar("run", str(plan), "--agent", "fake", "--workers", "3", "--sandbox", "--sandbox-allow",
                          str(allowed), cwd=repo)
        assert res.returncode == 1, res.stdout + res.stderr
        assert not outside.exists() and not in_tmp.exists()
    finally:
        outside.unlink(missing_ok=True)
    assert "Read-only file system" in re.split(r"batch 3 \(w\d\) failed:", res.stdout)[1]  # its log tail
    assert (allowed / "a.txt").read_text() == "ok\n"
    rid = run_id_of(res.stdout)
    assert "in.txt" in tree_files(repo, f"distpar/{rid}/b/1")
    assert sh_git(repo, "log", "-1", "--format=%s", f"distpar/{rid}/b/1~1") == "agent commits in the sandbox"


@needs_bwrap
def test_sandbox_reaps_what_the_agent_started_even_without_its_environment(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh("env -i setsid /bin/sleep 301.7 </dev/null >/dev/null 2>&1 &"), "@fake write a.txt a"]),
    ])
    res = run_distpar("run", str(plan), "--agent", "fake", "--sandbox", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "a.txt" in tree_files(repo, "main")
    assert [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p) == ["/bin/sleep", "301.7"]] == []


def _cmdline(p: Path) -> list[str]:
    try:
        return [a.decode() for a in (p / "cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def test_sandbox_without_bubblewrap_is_refused(repo: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1)])
    res = run_distpar("run", str(plan), "--agent", "fake", "--sandbox", cwd=repo, env={"PATH": str(bin_dir)})
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.splitlines()[0] == "Error: --sandbox needs bubblewrap (bwrap), which is not on PATH"
    assert sh_git(repo, "for-each-ref", "refs/heads/distpar/") == ""


SUBREAPER_SCRIPT = r"""
import os, subprocess, sys, time
from distpar.infra import process
assert process.become_subreaper()
env = {**os.environ, "DISTPAR_RUN_ID": "r1", "DISTPAR_BATCH_ID": "b1"}
# An "agent" that leaves a child in a session of its own and exits.
subprocess.run([sys.executable, "-c", "import subprocess; subprocess.Popen(['setsid', 'sleep', '300'])"],
               env=env, check=True)
deadline = time.time() + 10
while time.time() < deadline and not process.unit_processes("r1", "b1"):
    time.sleep(0.05)
(pid,) = process.unit_processes("r1", "b1")
ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
print("parent", "self" if ppid == os.getpid() else ppid)
print("killed", process.reap_unit("r1", "b1") == [pid])
print("collected", not os.path.exists(f"/proc/{pid}"))
"""


def test_a_worker_process_is_the_subreaper_of_what_its_agents_leave() -> None:
    proc = subprocess.run([sys.executable, "-c", SUBREAPER_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["parent self", "killed True", "collected True"]


@needs_bwrap
def test_sandboxed_agent_reads_its_prompt_file(repo: Path, tmp_path: Path) -> None:
    """The prompt file lives in the run's state directory, outside the worktree: it stays readable."""
    plan = write_plan(tmp_path / "p.md", [fake_batch(1, description="from the file")])
    res = run_distpar("run", str(plan), "--sandbox", "--agent-cmd", "sh -c 'cp {prompt_file} got.md'", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh_git(repo, "show", "main:got.md").startswith("Batch 1: do the work.")
