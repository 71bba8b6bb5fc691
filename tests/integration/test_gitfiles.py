"""What distpar reads from a workspace's git directory instead of starting git (a unit asks several times): the
same answers git gives, on a real repository that went through commits, branch switches and a detached HEAD."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from distpar.infra import gitops
from distpar.testing.builders import make_repo, sh_git

pytestmark = pytest.mark.integration


def git_reflog(ws: Path) -> list[tuple[str, str]]:
    out = sh_git(ws, "reflog", "show", "--format=%H %gs", "HEAD")
    return [(line.split(" ", 1)[0], line.split(" ", 1)[1] if " " in line else "") for line in out.splitlines()]


def test_head_log_and_head_ref_say_what_git_says(tmp_path: Path) -> None:
    ws = make_repo(tmp_path / "ws")
    assert gitops.head_ref(ws) == "refs/heads/main" and gitops.head_log(ws) == git_reflog(ws)
    sh_git(ws, "checkout", "-q", "-b", "other")
    (ws / "a.txt").write_text("a\n")
    sh_git(ws, "add", "a.txt")
    sh_git(ws, "commit", "-q", "-m", "a: with\ttab and spaces")
    sh_git(ws, "checkout", "-q", "main")
    assert gitops.head_ref(ws) == "refs/heads/main"
    sh_git(ws, "checkout", "-q", "--detach", "other")
    assert gitops.head_ref(ws) is None
    log = gitops.head_log(ws)
    assert log == git_reflog(ws) and len(log) == 5
    assert log[1][1].startswith("checkout: moving from other to main")
    assert gitops.git_dir(ws) == ws / ".git"
    assert gitops.head_commit(ws) == sh_git(ws, "rev-parse", "HEAD")  # detached
    sh_git(ws, "checkout", "-q", "other")
    assert gitops.head_commit(ws) == sh_git(ws, "rev-parse", "HEAD")  # a loose branch
    sh_git(ws, "pack-refs", "--all", "--prune")
    assert gitops.head_commit(ws) == sh_git(ws, "rev-parse", "HEAD")  # a packed one: git is asked


def test_git_dir_is_asked_again_once_the_repository_is_gone(tmp_path: Path) -> None:
    ws = make_repo(tmp_path / "ws")
    first = gitops.git_dir(ws)
    sh_git(tmp_path, "clone", "-q", "--separate-git-dir", str(tmp_path / "elsewhere.git"), str(ws), str(tmp_path / "c"))
    shutil.rmtree(ws)
    (tmp_path / "c").rename(ws)  # the same path, its git directory now elsewhere
    assert first != gitops.git_dir(ws) == (tmp_path / "elsewhere.git").resolve()
