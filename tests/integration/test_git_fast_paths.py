"""distpar's per-unit git work with fewer processes (issue 23): refs read from the files, one ``git status`` for
a unit's end, bundles written and taken in by one ``pack-objects`` / ``unpack-objects``. Each is held against
what git itself says, on real repositories."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distpar.core.errors import GitError
from distpar.infra import gitops, process
from distpar.testing.builders import IDENTITY, make_repo, sh_git

pytestmark = pytest.mark.integration


def _for_each_ref(repo: Path, prefix: str) -> dict[str, str]:
    lines = sh_git(repo, "for-each-ref", "--format=%(refname) %(objectname)", prefix).splitlines()
    return dict(line.split(" ", 1) for line in lines if line)


def _nested(path: Path, name: str) -> Path:
    """A repository of its own at ``path``, one commit holding the file ``name``."""
    path.mkdir()
    sh_git(path, "init", "--quiet")
    (path / name).write_text("x\n")
    sh_git(path, "add", name)
    sh_git(path, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "--quiet", "-m", "x")
    return path


def test_refs_read_from_the_files_are_what_git_lists(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = sh_git(repo, "rev-parse", "HEAD")
    for name in ("a", "dir/b", "dir/deeper/c"):
        sh_git(repo, "branch", name)
    sh_git(repo, "pack-refs", "--all")  # a, dir/b, dir/deeper/c, main packed ...
    sh_git(repo, "commit", "--quiet", "--allow-empty", "-m", "two")
    sh_git(repo, "branch", "-f", "a")  # ... a loose again, newer than its packed line
    sh_git(repo, "branch", "loose")
    assert gitops._refs_from_files(repo, "refs/heads/") is not None  # the files were read, no process
    assert gitops.refs(repo, "refs/heads/") == _for_each_ref(repo, "refs/heads/")
    assert gitops.refs(repo, "refs/heads/dir/") == _for_each_ref(repo, "refs/heads/dir/")
    assert gitops.branch_tip(repo, "a") == sh_git(repo, "rev-parse", "a") != head
    assert gitops.branch_tip(repo, "dir/b") == head
    assert gitops.branch_tip(repo, "dir") is None  # a directory of refs is no branch
    assert gitops.branch_tip(repo, "nope") is None
    # A linked worktree reads the main repository's branches.
    wt = tmp_path / "wt"
    sh_git(repo, "worktree", "add", "--quiet", "-b", "other", str(wt))
    assert gitops.refs(wt, "refs/heads/") == _for_each_ref(repo, "refs/heads/")
    assert gitops.branch_tip(wt, "other") == sh_git(repo, "rev-parse", "other")


def test_a_symbolic_ref_is_left_to_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    sh_git(repo, "symbolic-ref", "refs/heads/alias", "refs/heads/main")
    assert gitops._refs_from_files(repo, "refs/heads/") is None
    assert gitops.refs(repo, "refs/heads/") == _for_each_ref(repo, "refs/heads/")
    assert gitops.branch_tip(repo, "alias") == sh_git(repo, "rev-parse", "main")


def test_status_names_what_a_commit_of_everything_takes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "# r\n", "src/a.py": "a\n", "gone.txt": "g\n"})
    assert gitops.status(repo).clean
    (repo / "README.md").write_text("changed\n")
    (repo / "gone.txt").unlink()
    (repo / "new.txt").write_text("n\n")
    (repo / "newdir" / "deep").mkdir(parents=True)
    (repo / "newdir" / "deep" / "f.txt").write_text("f\n")
    (repo / ".gitignore").write_text("ignored/\n")
    (repo / "ignored").mkdir()
    (repo / "ignored" / "x").write_text("x\n")
    _nested(repo / "app", "x.txt")
    sh_git(repo, "add", "app")  # a gitlink, staged
    st = gitops.status(repo)
    assert sorted(st.changed) == ["README.md", "app", "gone.txt"]
    assert sorted(st.untracked) == [".gitignore", "new.txt", "newdir/"]
    assert st.gitlinks == ("app",)
    assert not st.clean


def test_commit_all_of_a_clean_tree_runs_no_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "repo")
    monkeypatch.setattr(gitops, "git", lambda *a, **k: pytest.fail("no git command for a clean tree"))
    assert gitops.commit_all(repo, "m", dict(IDENTITY), dirty=False) is False


def test_commit_all_tells_nothing_staged_from_a_refused_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    # Only a submodule's own edits: status shows a change, add stages none, nothing is committed.
    sub = _nested(repo / "sub", "x")
    sh_git(repo, "add", "sub")
    sh_git(repo, "commit", "--quiet", "-m", "sub")
    (sub / "x").write_text("edited inside the submodule\n")
    before = sh_git(repo, "rev-parse", "HEAD")
    assert not gitops.status(repo).clean
    assert gitops.commit_all(repo, "m", dict(IDENTITY)) is False
    assert sh_git(repo, "rev-parse", "HEAD") == before
    # A hook that refuses the commit is an error, saying so.
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "pre-commit").write_text("#!/bin/sh\necho refused by the hook >&2\nexit 1\n")
    (hooks / "pre-commit").chmod(0o755)
    (repo / "new.txt").write_text("n\n")
    with pytest.raises(GitError) as err:
        gitops.commit_all(repo, "m", dict(IDENTITY), hooks=True)
    assert "refused by the hook" in err.value.stderr


def test_a_bundle_of_one_pack_objects_is_a_bundle_git_reads_and_unbundle_takes_in(tmp_path: Path) -> None:
    src = make_repo(tmp_path / "src")
    base = sh_git(src, "rev-parse", "HEAD")
    (src / "work.txt").write_text("work\n" * 100)
    sh_git(src, "add", "work.txt")
    sh_git(src, "commit", "--quiet", "-m", "work")
    tip = sh_git(src, "rev-parse", "HEAD")
    saved = sh_git(src, "commit-tree", f"{tip}^{{tree}}", "-p", tip, "-m", "saved")
    sh_git(src, "update-ref", "refs/distpar/r/saved/u", saved)
    bundle = tmp_path / "u.bundle"
    assert gitops.bundle_of(src, bundle, {"refs/heads/main": tip, "refs/distpar/r/saved/u": saved}, [base])
    assert not gitops.bundle_of(src, tmp_path / "empty.bundle", {"refs/heads/main": base}, [base])
    assert not (tmp_path / "empty.bundle").exists()
    dest = tmp_path / "dest"
    sh_git(tmp_path, "clone", "--quiet", "--no-checkout", str(src), str(dest))
    sh_git(dest, "remote", "remove", "origin")
    sh_git(dest, "reset", "--quiet", "--soft", base)  # dest holds base, not the work
    assert "okay" in subprocess.run(["git", "bundle", "verify", str(bundle)], cwd=dest, capture_output=True,
                                    text=True).stderr
    got = gitops.unbundle(dest, bundle, lambda ref: ref if ref.startswith("refs/distpar/") else None)
    assert got == {"refs/distpar/r/saved/u": saved}  # only the refs asked for
    assert sh_git(dest, "rev-parse", "refs/distpar/r/saved/u") == saved
    assert sh_git(dest, "cat-file", "-p", f"{tip}:work.txt") == ("work\n" * 100).strip()
    fsck = subprocess.run(["git", "fsck", "--no-dangling", "--connectivity-only"], cwd=dest, capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_unbundle_refuses_a_pack_whose_history_the_repository_lacks(tmp_path: Path) -> None:
    src = make_repo(tmp_path / "src")
    base = sh_git(src, "rev-parse", "HEAD")
    (src / "w.txt").write_text("w\n")
    sh_git(src, "add", "w.txt")
    sh_git(src, "commit", "--quiet", "-m", "w")
    bundle = tmp_path / "w.bundle"
    assert gitops.bundle_of(src, bundle, {"refs/heads/w": sh_git(src, "rev-parse", "HEAD")}, [base])
    stranger = make_repo(tmp_path / "stranger", {"other.txt": "another history\n"})  # has not got base
    with pytest.raises(GitError):
        gitops.unbundle(stranger, bundle, lambda ref: ref)
    assert sh_git(stranger, "for-each-ref", "refs/heads/w") == ""  # no ref to a broken history
    # A bundle that is not v2 (git's v3, say) is left to git fetch.
    v3 = tmp_path / "v3.bundle"
    sh_git(src, "bundle", "create", "--quiet", "--version=3", str(v3), "main", f"^{base}")
    assert gitops.unbundle(src, v3, lambda ref: ref) is None


def test_unit_processes_since_skips_what_started_before(tmp_path: Path) -> None:
    env = {**os.environ, "DISTPAR_RUN_ID": "run-since", "DISTPAR_BATCH_ID": "b1"}
    old = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env, start_new_session=True)
    try:
        time.sleep(0.05)
        since = process.boot_ticks() + 2  # two ticks after it started (clock ticks: 10 ms here)
        time.sleep(0.05)
        new = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env,
                               start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and new.pid not in process.unit_processes("run-since", "b1"):
                time.sleep(0.05)
            assert set(process.unit_processes("run-since", "b1")) == {old.pid, new.pid}
            assert process.unit_processes("run-since", "b1", since) == [new.pid]
        finally:
            new.kill()
            new.wait(10)
    finally:
        old.kill()
        old.wait(10)


def test_a_kept_workspace_stores_only_what_it_lacks_of_a_whole_history_bundle(tmp_path: Path) -> None:
    """A workspace kept from an earlier run is sent the next run's whole history (its start moved on): it stores
    only the new objects (git fetch would store the whole pack again), and nothing at all when it has the tip."""
    src = make_repo(tmp_path / "src", {f"f{i}.txt": f"{i}\n" for i in range(200)})
    one = tmp_path / "one.bundle"
    sh_git(src, "bundle", "create", "--quiet", str(one), "main")
    ws = tmp_path / "ws"
    ws.mkdir()
    sh_git(ws, "init", "--quiet")
    sh_git(ws, "fetch", "--quiet", str(one), "+refs/*:refs/distpar-in/*")

    def objects() -> dict[str, int]:
        lines = sh_git(ws, "count-objects", "-v").splitlines()
        return {k: int(v) for k, v in (line.split(": ") for line in lines) if k in ("count", "in-pack", "packs")}

    before = objects()
    assert before["count"] == 0 and before["in-pack"] >= 202
    rename = lambda ref: "refs/distpar-in/" + ref.removeprefix("refs/")  # noqa: E731
    assert gitops.unbundle(ws, one, rename, loose=True) == {"refs/distpar-in/heads/main": sh_git(src, "rev-parse",
                                                                                                   "main")}
    assert objects() == before  # it held the tip: nothing stored
    (src / "new.txt").write_text("new\n")
    sh_git(src, "add", "new.txt")
    sh_git(src, "commit", "--quiet", "-m", "new")
    two = tmp_path / "two.bundle"
    sh_git(src, "bundle", "create", "--quiet", str(two), "main")
    got = gitops.unbundle(ws, two, rename, loose=True)
    assert got == {"refs/distpar-in/heads/main": sh_git(src, "rev-parse", "main")}
    after = objects()
    assert after["in-pack"] == before["in-pack"] and after["packs"] == before["packs"]
    assert after["count"] == 3  # the new blob, tree and commit only
    assert sh_git(ws, "show", "refs/distpar-in/heads/main:new.txt") == "new"
