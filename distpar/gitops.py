"""A thin git wrapper: each function is one git operation distpar needs, run as argv with a clean env."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from distpar.errors import GitError, RepoError

MIN_VERSION = (2, 38)  # merge-tree --write-tree
_SCRUB = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR", "GIT_PREFIX")


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def git(
    cwd: str | Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = ["git", "-c", "gc.auto=0", "-c", "maintenance.auto=false", *args]
    try:
        proc = subprocess.run(
            argv,
            cwd=str(cwd),
            env=git_env(env),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            # Its own session: a Ctrl+C to the terminal's process group must not kill git half way through a
            # checkout or a merge (distpar handles the signal itself and lets each git command finish).
            start_new_session=True,
        )
    except FileNotFoundError:
        raise RepoError("git is not installed (or not on PATH)") from None
    if check and proc.returncode != 0:
        raise GitError(list(args), proc.returncode, proc.stderr)
    return proc


def out(cwd: str | Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    return git(cwd, *args, env=env).stdout.strip()


def version() -> tuple[int, int]:
    m = re.search(r"(\d+)\.(\d+)", out(".", "--version"))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_version() -> None:
    v = version()
    if v < MIN_VERSION:
        raise RepoError(f"git {v[0]}.{v[1]} is too old: distpar needs git {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer")


def repo_root(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise RepoError(f"not a directory: {p}")
    proc = git(p, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise RepoError(f"not a git repository: {p.resolve()}", hint="run distpar inside the repository to change")
    return Path(proc.stdout.strip())


def common_dir(repo: str | Path) -> Path:
    return Path(out(repo, "rev-parse", "--path-format=absolute", "--git-common-dir"))


def current_branch(repo: str | Path) -> str | None:
    proc = git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def rev(repo: str | Path, revision: str) -> str:
    proc = git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", check=False)
    if proc.returncode != 0:
        raise RepoError(f"no such commit or branch: {revision}")
    return proc.stdout.strip()


def try_rev(repo: str | Path, revision: str) -> str | None:
    proc = git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def has_commits(repo: str | Path) -> bool:
    return git(repo, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode == 0


def dirty_files(repo: str | Path) -> list[str]:
    """Tracked files with staged or unstaged changes (untracked files do not make a tree dirty)."""
    lines = git(repo, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    return [line[3:] for line in lines if line.strip()]


def is_ancestor(repo: str | Path, a: str, b: str) -> bool:
    return git(repo, "merge-base", "--is-ancestor", a, b, check=False).returncode == 0


def tree_of(repo: str | Path, revision: str) -> str:
    return out(repo, "rev-parse", f"{revision}^{{tree}}")


# --- worktrees and commits -------------------------------------------------------------------------------


@contextmanager
def repo_lock(repo: str | Path, name: str) -> Iterator[None]:
    """An exclusive lock in the repository's git directory, across threads and processes (fcntl)."""
    with open(common_dir(repo) / f"distpar-{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def worktree_add(repo: str | Path, path: str | Path, branch: str, base: str) -> None:
    # Concurrent `git worktree add` on one repository can fail reading a half-made worktree's commondir, so
    # runs and streams take turns registering theirs (quick, --no-checkout) and check the files out in parallel.
    with repo_lock(repo, "worktree"):
        git(repo, "worktree", "add", "--quiet", "--no-checkout", "-B", branch, str(path), base)
    git(path, "reset", "--quiet", "--hard")


def worktree_remove(repo: str | Path, *paths: str | Path) -> None:
    with repo_lock(repo, "worktree"):  # prune must not see another run's half-made worktree
        for path in paths:
            if Path(path).exists():
                git(repo, "worktree", "remove", "--force", str(path), check=False)
        git(repo, "worktree", "prune", check=False)


def worktree_prune(repo: str | Path) -> None:
    with repo_lock(repo, "worktree"):
        git(repo, "worktree", "prune", check=False)


def worktrees(repo: str | Path) -> list[tuple[str, str | None]]:
    """(path, branch) of every worktree of the repository."""
    result: list[tuple[str, str | None]] = []
    path: str | None = None
    branch: str | None = None
    for line in [*out(repo, "worktree", "list", "--porcelain").splitlines(), ""]:
        if line.startswith("worktree "):
            path, branch = line[9:], None
        elif line.startswith("branch "):
            branch = line[7:].removeprefix("refs/heads/")
        elif not line and path:
            result.append((path, branch))
            path = None
    return result


def commit_all(ws: str | Path, message: str, env: Mapping[str, str]) -> bool:
    """Commit everything in the working tree (new, changed, deleted files). Returns False when clean."""
    git(ws, "add", "--all", env=env)
    if git(ws, "diff", "--cached", "--quiet", check=False, env=env).returncode == 0:
        return False
    git(ws, "commit", "--quiet", "--no-verify", "--allow-empty-message", "-m", message, env=env)
    return True


def snapshot(ws: str | Path, message: str, env: Mapping[str, str]) -> str | None:
    """A commit of the working tree on top of HEAD, made without touching HEAD, the branch or the index."""
    index = Path(out(ws, "rev-parse", "--path-format=absolute", "--git-dir")) / "distpar-snapshot-index"
    e = {**env, "GIT_INDEX_FILE": str(index)}
    try:
        git(ws, "read-tree", "HEAD", env=e)
        git(ws, "add", "--all", env=e)
        tree = out(ws, "write-tree", env=e)
    finally:
        index.unlink(missing_ok=True)
    if tree == tree_of(ws, "HEAD"):
        return None
    return out(ws, "commit-tree", tree, "-p", "HEAD", "-m", message, env=env)


def update_ref(repo: str | Path, ref: str, oid: str) -> None:
    git(repo, "update-ref", ref, oid)


def delete_ref(repo: str | Path, ref: str) -> None:
    git(repo, "update-ref", "-d", ref, check=False)


def refs(repo: str | Path, prefix: str) -> dict[str, str]:
    lines = out(repo, "for-each-ref", "--format=%(refname) %(objectname)", prefix).splitlines()
    return dict(line.split(" ", 1) for line in lines if line)  # type: ignore[misc]


# --- merging ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    commit: str | None  # the merge commit, when clean
    conflicts: tuple[str, ...]  # conflicting paths, when not


def merge_commit(
    repo: str | Path, ours: str, theirs: str, message: str, env: Mapping[str, str]
) -> MergeOutcome:
    """A --no-ff merge of ``theirs`` into ``ours`` without a worktree (``git merge-tree --write-tree``)."""
    proc = git(repo, "merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs, check=False)
    if proc.returncode not in (0, 1):
        raise GitError(["merge-tree", ours, theirs], proc.returncode, proc.stderr)
    lines = proc.stdout.splitlines()
    if proc.returncode == 1:
        return MergeOutcome(None, tuple(dict.fromkeys(line for line in lines[1:] if line)))
    tree = lines[0].strip()
    commit = out(repo, "commit-tree", tree, "-p", ours, "-p", theirs, "-m", message, env=env)
    return MergeOutcome(commit, ())


# --- bundles ---------------------------------------------------------------------------------------------


def bundle_create(repo: str | Path, path: str | Path, revs: Sequence[str]) -> bool:
    """Write a bundle of ``revs`` (refs, with ``^oid`` exclusions). False when there was nothing to bundle."""
    proc = git(repo, "bundle", "create", "--quiet", str(path), *revs, check=False)
    if proc.returncode != 0:
        if "empty bundle" in proc.stderr:
            return False
        raise GitError(["bundle", "create", str(path), *revs], proc.returncode, proc.stderr)
    return True


def fetch(repo: str | Path, source: str | Path, refspecs: Sequence[str]) -> None:
    """Fetch from a bundle file or a remote URL."""
    git(repo, "fetch", "--quiet", "--no-tags", "--force", str(source), *refspecs)
