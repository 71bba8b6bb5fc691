"""transfer.increment: what a worker that keeps its clone lacks of a base, with real git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from distpar.infra import gitops, transfer
from distpar.testing.builders import make_repo, sh_git

pytestmark = pytest.mark.integration  # real git


def commit(repo: Path, name: str) -> str:
    (repo / name).write_text(name + "\n")
    sh_git(repo, "add", name)
    sh_git(repo, "commit", "--quiet", "-m", name)
    return sh_git(repo, "rev-parse", "HEAD")


def test_increment_holds_only_what_the_worker_lacks(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "# r\n"})
    start = sh_git(repo, "rev-parse", "HEAD")
    worker = tmp_path / "worker"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(worker)], check=True)
    a = commit(repo, "a.txt")
    ref = "refs/distpar/r/ray/1"

    assert transfer.increment(repo, {ref: start}, [start]) is None  # it holds the base already
    data = transfer.increment(repo, {ref: a}, [start, "0" * 40])  # an unknown commit is not excluded, not fatal
    assert data is not None and data.startswith(b"# v2 git bundle")
    bundle = tmp_path / "inc.bundle"
    bundle.write_bytes(data)
    # Only the new commit travels: the bundle requires the worker's start commit.
    verify = subprocess.run(["git", "bundle", "verify", str(bundle)], cwd=worker, capture_output=True, text=True)
    assert verify.returncode == 0 and "requires this ref" in verify.stdout + verify.stderr
    assert start in verify.stdout + verify.stderr
    gitops.fetch(worker, bundle, [f"+{ref}:refs/in/base"])
    assert sh_git(worker, "rev-parse", "refs/in/base") == a
    assert sh_git(worker, "rev-list", "--count", f"{start}..refs/in/base") == "1"
    everything = transfer.increment(repo, {ref: a}, [])
    assert everything is not None and len(everything) > len(data)
