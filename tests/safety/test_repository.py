"""The user's repository: its submodules (item 6), its hooks and a target branch in the middle of a rebase or
merge (item 7), a bare repository (item 8)."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from distpar.infra import gitops
from distpar.testing.builders import IDENTITY, fake_batch, make_repo, sh_git, tree_files, write_plan
from tests.conftest import run_distpar, run_id_of
from tests.safety.conftest import sh


def git_file(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "protocol.file.allow=always", *args], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, **IDENTITY})


@pytest.fixture
def super_repo(tmp_path: Path) -> Path:
    """A repository with an initialised submodule ``lib`` (holding lib.txt)."""
    make_repo(tmp_path / "lib-src", {"lib.txt": "library\n"})
    repo = make_repo(tmp_path / "super", {"README.md": "# super\n"})
    git_file(repo, "submodule", "add", "--quiet", str(tmp_path / "lib-src"), "lib")
    sh_git(repo, "commit", "--quiet", "-m", "add lib")
    return repo


def test_submodules_are_initialised_in_worktrees_as_in_the_checkout(super_repo: Path) -> None:
    config = (super_repo / ".git" / "config").read_text()
    plan = write_plan(super_repo.parent / "p.md", [
        fake_batch(1, extra=[sh("test -f lib/lib.txt && cp lib/lib.txt copied.txt")]),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=super_repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh_git(super_repo, "show", "main:copied.txt") == "library"
    assert [p for p, _ in gitops.worktrees(super_repo)] == [str(super_repo)]  # removed at the end all the same
    assert (super_repo / ".git" / "config").read_text() == config  # nothing written to the user's config


@pytest.mark.parametrize("initialised", [True, False])
def test_edits_inside_a_submodule_fail_the_batch_with_the_files_saved(super_repo: Path, initialised: bool) -> None:
    if not initialised:  # the user's checkout has it uninitialised: so has the worktree (an empty directory)
        git_file(super_repo, "submodule", "deinit", "--quiet", "--force", "lib")
    main = sh_git(super_repo, "rev-parse", "main")
    plan = write_plan(super_repo.parent / "p.md", [
        fake_batch(1, writes={"lib/new.txt": "agent's edit", "top.txt": "top"}),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=super_repo)
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    archive = Path(res.stdout.split("those files are saved in ")[1].split()[0])
    assert "batch 1 (w1) failed: the agent edited files inside submodule(s) lib, which distpar does not commit: " \
           "those files are saved in" in res.stdout
    with tarfile.open(archive) as tar:
        member = tar.extractfile("lib/new.txt")
        assert member is not None and member.read() == b"agent's edit"
    assert sh_git(super_repo, "show", f"refs/distpar/{rid}/saved/1:top.txt") == "top"
    assert sh_git(super_repo, "rev-parse", "main") == main
    assert "Traceback" not in res.stdout + res.stderr


def hook(repo: Path, name: str, body: str) -> Path:
    path = repo / ".git" / "hooks" / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_hooks_do_not_run_by_default(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "hooks-ran"
    for name in ("pre-commit", "commit-msg", "post-commit", "post-checkout"):
        hook(repo, name, f"echo {name} >> {marker}")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "a.txt" in tree_files(repo, "main")
    assert not marker.exists()


def test_with_hooks_a_failing_pre_commit_hook_fails_the_batch(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "hooks-ran"
    hook(repo, "commit-msg", f"echo commit-msg >> {marker}")
    hook(repo, "pre-commit", f"echo pre-commit >> {marker}; git diff --cached --name-only | grep -q bad.txt "
                             "&& { echo 'bad.txt is not allowed' >&2; exit 1; }; exit 0")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"good.txt": "g"}),
                                             fake_batch(2, writes={"bad.txt": "b"})])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", "--hooks", cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    rid = run_id_of(res.stdout)
    assert ("batch 2 (w1) failed: git commit was refused (a pre-commit or commit-msg hook, or the repository's "
            "settings): bad.txt is not allowed") in res.stdout
    assert marker.read_text().split() == ["pre-commit", "commit-msg", "pre-commit"]
    assert sh_git(repo, "show", f"refs/distpar/{rid}/saved/2:bad.txt") == "b"
    assert "good.txt" in tree_files(repo, f"distpar/{rid}/b/1")


def conflicting(repo: Path, *args: str) -> bool:
    """Run a git command that stops on a conflict (as the user's own rebase or merge would)."""
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env={**os.environ, **IDENTITY})
    return proc.returncode == 1 and "CONFLICT" in proc.stdout


def diverge(repo: Path, branch: str) -> None:
    """``branch`` and main each change README.md their own way (main checked out)."""
    for name, create in ((branch, ("-c",)), ("main", ())):
        sh_git(repo, "switch", "--quiet", *create, name)
        (repo / "README.md").write_text(f"{name}\n")
        sh_git(repo, "commit", "--quiet", "-am", name)


def test_landing_into_a_branch_being_rebased_is_refused(repo: Path) -> None:
    diverge(repo, "topic")
    sh_git(repo, "switch", "--quiet", "topic")
    assert conflicting(repo, "rebase", "main")
    topic = sh_git(repo, "rev-parse", "topic")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    res = run_distpar("run", str(plan), "--agent", "fake", "--into", "topic", "--allow-dirty", cwd=repo)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.splitlines()[0] == (f"Error: cannot land into topic: branch topic is being rebased in {repo} "
                                          "(finish with git rebase --continue or git rebase --abort there first)")
    assert sh_git(repo, "rev-parse", "topic") == topic
    assert sh_git(repo, "for-each-ref", "refs/distpar/", "refs/heads/distpar/") == ""


def test_landing_into_a_branch_mid_merge_is_refused(repo: Path) -> None:
    diverge(repo, "side")
    assert conflicting(repo, "merge", "side")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    res = run_distpar("run", str(plan), "--agent", "fake", "--allow-dirty", cwd=repo)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.splitlines()[0] == (f"Error: cannot land into main: branch main has a merge in progress in "
                                          f"{repo} (finish it with git merge --continue or git merge --abort there "
                                          "first)")


def test_a_bare_repository_is_named_as_such(tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    plan = write_plan(tmp_path / "p.md", [fake_batch(1)])
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=bare)
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == f"Error: {bare} is a bare repository: distpar needs a checkout to merge into"
    assert res.stderr.splitlines()[1].startswith(f"Hint: clone it (git clone {bare})")


def test_target_that_gets_mid_merge_during_the_run_is_not_landed_into(repo: Path) -> None:
    sh_git(repo, "switch", "--quiet", "-c", "side")
    (repo / "README.md").write_text("side\n")
    sh_git(repo, "commit", "--quiet", "-am", "side")
    sh_git(repo, "switch", "--quiet", "main")
    (repo / "README.md").write_text("main\n")
    sh_git(repo, "commit", "--quiet", "-am", "main")
    main = sh_git(repo, "rev-parse", "main")
    # The user starts a merge in their checkout while the batch runs (here the agent does it for them).
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, writes={"a.txt": "a"}, extra=[sh(f"git -C {repo} merge side >/dev/null 2>&1; true")]),
    ])
    res = run_distpar("run", str(plan), "--agent", "fake", cwd=repo)
    assert res.returncode == 3, res.stdout + res.stderr
    assert (f"  # branch main has a merge in progress in {repo} (finish it with git merge --continue or git merge "
            "--abort there first)") in res.stdout.splitlines()
    assert sh_git(repo, "rev-parse", "main") == main and (repo / ".git" / "MERGE_HEAD").exists()
