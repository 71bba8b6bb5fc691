"""Continuing by hand, exactly as distpar prints it: a final-merge conflict resolved on the integration branch and a
conflict between two dependencies resolved on the dependent unit's branch; resume lands, and leaves the user on the
branch they had, clean; the summary's wall time covers the whole run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.infra import gitops
from distpar.testing.builders import fake_batch, sh_git, write_plan
from tests.conftest import run_distpar, run_id_of

pytestmark = pytest.mark.integration

USER = {"GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@x",
        "GIT_EDITOR": "true"}


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def printed_commands(stdout: str) -> list[str]:
    """The commands under 'To continue:' (indented), as printed."""
    lines = stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.endswith("To continue:"))
    cmds = []
    for line in lines[at + 1:]:
        if not line.startswith("  "):
            break
        cmds.append(line.strip())
    return cmds


def commit_resolution(repo: Path) -> None:
    subprocess.run(["git", "commit", "--quiet", "--no-edit"], cwd=repo, check=True, env={**os.environ, **USER})


def follow_with_commit(repo: Path, commands: list[str], resolve: dict[str, str]) -> subprocess.CompletedProcess[str]:
    at = next(i for i, c in enumerate(commands) if c.startswith("# resolve"))
    follow_part = commands[:at + 1]
    for cmd in follow_part:
        if cmd.startswith("# resolve"):
            for name, text in resolve.items():
                (repo / name).write_text(text)
            sh_git(repo, "add", *resolve)
            commit_resolution(repo)
            continue
        proc = subprocess.run(cmd, shell=True, cwd=repo, capture_output=True, text=True, env={**os.environ, **USER})
        assert proc.returncode == 0 or cmd.startswith("git merge"), (cmd, proc.stdout, proc.stderr)
    rest = commands[at + 1:]
    assert rest and rest[-1].startswith("distpar resume"), rest
    return run_distpar(*rest[-1].split()[1:], cwd=repo)


def test_a_final_merge_conflict_resolved_as_printed_lands_and_leaves_the_user_where_they_were(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"same.txt": "one\n"}),
                                             fake_batch(2, writes={"same.txt": "two\n"}),
                                             fake_batch(3, writes={"other.txt": "3\n"})])
    res = run_distpar("run", str(plan), "--agent", "fake", "--workers", "3", cwd=repo)
    assert res.returncode == 3, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    commands = printed_commands(res.stdout)
    assert commands[0].startswith("git switch distpar/"), commands
    again = follow_with_commit(repo, commands, {"same.txt": "one and two\n"})
    assert again.returncode == 0, again.stdout + again.stderr
    assert gitops.current_branch(repo) == "main"
    assert sh_git(repo, "status", "--porcelain") == ""
    assert (repo / "same.txt").read_text() == "one and two\n" and (repo / "other.txt").read_text() == "3\n"
    assert sh_git(repo, "show", "main:same.txt") == "one and two"
    assert "back on main" in again.stderr
    assert not [b for b in sh_git(repo, "branch", "--list", f"distpar/{rid}/*").split() if b != "*"]


def test_a_dependency_conflict_resolved_as_printed_is_taken_as_the_units_base(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch("a", writes={"same.txt": "from a\n"}),
                                             fake_batch("b", writes={"same.txt": "from b\n"}),
                                             fake_batch("c", extra=["@fake copy same.txt seen-by-c.txt"],
                                                        depends_on=["a", "b"])])
    res = run_distpar("run", str(plan), "--agent", "fake", "--workers", "2", cwd=repo)
    assert res.returncode == 3, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    commands = printed_commands(res.stdout)
    assert commands[0].startswith(f"git switch -c distpar/{rid}/b/c "), commands
    again = follow_with_commit(repo, commands, {"same.txt": "from a and b\n"})
    assert again.returncode == 0, again.stdout + again.stderr
    assert gitops.current_branch(repo) == "main" and sh_git(repo, "status", "--porcelain") == ""
    # c ran once more, from the resolved branch: it saw the resolution.
    assert (repo / "seen-by-c.txt").read_text() == "from a and b\n"
    assert (repo / "same.txt").read_text() == "from a and b\n"
    started = [e.unit_id or "" for e in journal().events(rid) if e.kind == "unit_started"]
    assert sorted(started) == ["a", "b", "c"]


def test_after_a_resume_the_wall_time_covers_the_whole_run(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"same.txt": "one\n"}, sleep=1.5),
                                             fake_batch(2, writes={"same.txt": "two\n"}, sleep=1.5)])
    res = run_distpar("run", str(plan), "--agent", "fake", "--workers", "2", "--json", "-q", cwd=repo)
    assert res.returncode == 3, res.stdout + res.stderr
    first = json.loads(res.stdout)
    rid = first["run_id"]
    assert first["wall"] >= 1.5
    integration = f"distpar/{rid}/integration"
    ws = repo.parent / "fix"
    sh_git(repo, "worktree", "add", "-q", str(ws), integration)
    subprocess.run(["git", "merge", "--no-ff", f"distpar/{rid}/b/2"], cwd=ws, capture_output=True,
                   env={**os.environ, **USER})
    (ws / "same.txt").write_text("both\n")
    sh_git(ws, "add", "same.txt")
    commit_resolution(ws)
    sh_git(repo, "worktree", "remove", str(ws))
    again = run_distpar("resume", rid, "--json", "-q", cwd=repo)
    assert again.returncode == 0, again.stdout + again.stderr
    second = json.loads(again.stdout)
    # The resume itself ran no agent: its own wall is short; the summary's covers the first attempt too.
    assert second["wall"] >= first["wall"]
    assert second["speedup"] <= second["agent_time"] / first["wall"] + 1e-6


def test_resume_refuses_a_resolution_not_yet_committed_and_changes_nothing(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"same.txt": "one\n"}),
                                             fake_batch(2, writes={"same.txt": "two\n"})])
    res = run_distpar("run", str(plan), "--agent", "fake", "--workers", "2", cwd=repo)
    assert res.returncode == 3, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    commands = printed_commands(res.stdout)
    for cmd in commands[:2]:  # git switch <integration>; git merge --no-ff <unit branch>: conflicted, unresolved
        subprocess.run(cmd, shell=True, cwd=repo, capture_output=True, env={**os.environ, **USER})
    integration = f"distpar/{rid}/integration"
    before = gitops.rev(repo, integration)
    refused = run_distpar("resume", rid, cwd=repo)
    assert refused.returncode == 2 and "uncommitted changes or an unfinished merge" in refused.stderr
    assert gitops.current_branch(repo) == integration and gitops.rev(repo, integration) == before
    assert gitops.rev(repo, "main") != before and journal().run(rid)["state"] == "conflict"  # type: ignore[index]
    (repo / "same.txt").write_text("one and two\n")
    sh_git(repo, "add", "same.txt")
    commit_resolution(repo)
    again = run_distpar("resume", rid, cwd=repo)
    assert again.returncode == 0, again.stdout + again.stderr
    assert gitops.current_branch(repo) == "main" and sh_git(repo, "status", "--porcelain") == ""
