"""A thin git wrapper: each function is one git operation distpar needs, run as argv with a clean env."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from distpar.core.errors import GitError, RepoError

MIN_VERSION = (2, 38)  # merge-tree --write-tree
_SCRUB = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR", "GIT_PREFIX")


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    env["LC_ALL"] = "C"
    env["GIT_NO_REPLACE_OBJECTS"] = "1"  # distpar works on the objects as they are, never on replacements
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
    # No hook of the repository runs under distpar's own git commands (a reference-transaction hook runs on
    # every ref update, post-merge on a fast-forward, ...) unless ``env`` comes from ``hooks_env(env, True)``.
    quiet = () if env is not None and env.get(HOOKS_VAR) == "1" else ("-c", f"core.hooksPath={os.devnull}")
    argv = ["git", "-c", "gc.auto=0", "-c", "maintenance.auto=false", *quiet, *args]
    try:
        proc = subprocess.run(
            argv,
            cwd=str(cwd),
            env=git_env(env),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            # Any file name survives (Linux allows every byte but NUL and /): undecodable bytes become lone
            # surrogates, which os.fsencode and subprocess turn back into the same bytes when a path is passed on.
            encoding="utf-8",
            errors="surrogateescape",
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


def git_bytes(cwd: str | Path, *args: str, stdin: bytes | BinaryIO | None = None,
              stdout: BinaryIO | None = None) -> bytes:
    """A git command whose input or output is not text (a pack, a bundle): ``stdin`` bytes or a file, ``stdout`` a
    file (else its output is returned). GitError when it fails."""
    feed: dict[str, Any] = {"input": stdin} if isinstance(stdin, bytes) else \
        {"stdin": subprocess.DEVNULL if stdin is None else stdin}
    proc = subprocess.run(["git", "-c", "gc.auto=0", *args], cwd=str(cwd), env=git_env(),
                          stdout=subprocess.PIPE if stdout is None else stdout, stderr=subprocess.PIPE,
                          start_new_session=True, **feed)
    if proc.returncode != 0:
        raise GitError(list(args), proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout or b""


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
    proc = git(p, "rev-parse", "--is-bare-repository", "--is-inside-git-dir", "--show-toplevel", check=False)
    lines = proc.stdout.split()
    if lines[:1] == ["true"]:
        raise RepoError(f"{p.resolve()} is a bare repository: distpar needs a checkout to merge into",
                        hint=f"clone it (git clone {p.resolve()}) or add a worktree "
                             f"(git -C {p.resolve()} worktree add DIR BRANCH) and run distpar there")
    if lines[1:2] == ["true"]:
        raise RepoError(f"{p.resolve()} is inside a .git directory",
                        hint="run distpar in the repository's working tree")
    if proc.returncode != 0 or len(lines) < 3:
        raise RepoError(f"not a git repository: {p.resolve()}", hint="run distpar inside the repository to change")
    return Path(proc.stdout.splitlines()[2].strip())


_git_dirs: dict[str, Path] = {}


def git_dir(ws: str | Path) -> Path:
    """The absolute git directory of the checkout at ``ws``, asked of git once per path and process (a unit's
    preparation and end look it up a dozen times); checked to still hold a ``HEAD`` each time, else asked anew."""
    key = str(ws)
    found = _git_dirs.get(key)
    if found is None or not (found / "HEAD").is_file():
        found = _git_dirs[key] = Path(out(ws, "rev-parse", "--path-format=absolute", "--git-dir"))
    return found


def head_log(ws: str | Path) -> list[tuple[str, str]]:
    """The HEAD reflog of the checkout at ``ws``, newest first: (commit, message) as ``git reflog show
    --format='%H %gs' HEAD`` gives them, read from ``logs/HEAD`` (a unit asks twice; no process needed)."""
    try:
        lines = (git_dir(ws) / "logs" / "HEAD").read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return []
    out_: list[tuple[str, str]] = []
    for line in reversed(lines):
        head, _, message = line.partition("\t")
        fields = head.split(" ", 2)
        if len(fields) == 3:
            out_.append((fields[1], message))
    return out_


def head_ref(ws: str | Path) -> str | None:
    """The branch HEAD is on (``refs/heads/...``), or None when detached, as ``git symbolic-ref HEAD`` says."""
    try:
        text = (git_dir(ws) / "HEAD").read_text(encoding="utf-8", errors="surrogateescape").strip()
    except OSError:
        return None
    return text.removeprefix("ref: ").strip() if text.startswith("ref: ") else None


FULL_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a commit id (SHA-1 or SHA-256), not a name to resolve


def head_commit(ws: str | Path) -> str:
    """The commit HEAD points to, read from the files when HEAD is a loose branch or detached (as a commit just
    left it), else asked of git."""
    ref = head_ref(ws)
    try:
        text = (git_dir(ws) / ref if ref else git_dir(ws) / "HEAD").read_text().strip()
    except OSError:
        text = ""
    if FULL_ID.fullmatch(text):
        return text
    return out(ws, "rev-parse", "HEAD")


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
    # runs and workers take turns registering theirs (quick, --no-checkout) and check the files out in parallel.
    with repo_lock(repo, "worktree"):
        git(repo, "worktree", "add", "--quiet", "--no-checkout", "-B", branch, str(path), base)
    git(path, "reset", "--quiet", "--hard")


# What a repository of its own takes from the user's repository's configuration: how files are read and
# written (filters, line endings), who commits and how commits are signed. Never remotes, hooks, aliases,
# sparse checkout or anything that runs a program on distpar's behalf in the user's repository.
BORROWED_CONFIG = ("user.", "filter.", "lfs.", "gpg.", "i18n.", "core.autocrlf", "core.eol", "core.safecrlf",
                   "core.filemode", "core.symlinks", "core.ignorecase", "core.precomposeunicode",
                   "commit.gpgsign", "tag.gpgsign")


def own_repository(repo: str | Path, path: str | Path, branch: str, base: str, hooks: bool = False) -> None:
    """Make ``path`` a repository of its own with ``branch`` checked out at ``base``: it borrows ``repo``'s
    object store read-only (``objects/info/alternates``, as ``git clone --shared`` does) and has no remote, so
    nothing run in it reaches ``repo``'s refs, config, hooks, stash or ``info/``. It gets copies of ``repo``'s
    branches and tags (an agent may look at, move or delete them: only the copies change), the config that
    says how files are stored (``BORROWED_CONFIG``), ``info/attributes`` and ``info/exclude``; with ``hooks``
    a copy of the hooks. distpar fetches the work back (``fetch``)."""
    path = Path(path)
    fmt, common, hooks_dir = out(repo, "rev-parse", "--show-object-format", "--path-format=absolute",
                                 "--git-common-dir", "--git-path", "hooks", env={HOOKS_VAR: "1"}).splitlines()
    # The git directory is written directly (what ``git init --template=`` writes, plus the borrowed store and
    # settings): a workspace costs a few git processes, as a worktree did.
    gd = path / ".git"
    for d in ("objects/info", "refs/heads", "refs/tags", "info"):
        (gd / d).mkdir(parents=True, exist_ok=True)
    (gd / "objects" / "info" / "alternates").write_text(str(Path(common) / "objects") + "\n")
    (gd / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    sha1 = fmt == "sha1"
    config = ["[core]", f"\trepositoryformatversion = {0 if sha1 else 1}", "\tbare = false",
              "\tlogallrefupdates = true", *([] if sha1 else ["[extensions]", f"\tobjectformat = {fmt}"])]
    config += _config_lines(_borrowed_config(repo))
    (gd / "config").write_text("\n".join(config) + "\n")
    listing = out(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", "refs/tags/")
    copies = [line for line in listing.splitlines() if line and " refs/heads/distpar/" not in line]
    if copies:
        (gd / "packed-refs").write_text("".join(line + "\n" for line in copies))
    for name in ("attributes", "exclude"):
        if (Path(common) / "info" / name).is_file():
            shutil.copyfile(Path(common) / "info" / name, gd / "info" / name)
    if hooks and Path(hooks_dir).is_dir():
        shutil.copytree(hooks_dir, gd / "hooks", dirs_exist_ok=True)
    env = {HOOKS_VAR: "1"} if hooks else None
    git(path, "checkout", "--quiet", "--force", "-B", branch, base, env=env)


def _borrowed_config(repo: str | Path) -> list[tuple[str, str | None]]:
    """The ``BORROWED_CONFIG`` entries of ``repo``'s own config, in order (None: a key without a value)."""
    raw = git(repo, "config", "--local", "--list", "-z", check=False).stdout
    pairs = [entry.partition("\n") for entry in raw.split("\0") if entry]
    return [(k, v if sep else None) for k, sep, v in pairs if k.startswith(BORROWED_CONFIG)]


def _config_lines(pairs: list[tuple[str, str | None]]) -> list[str]:
    """Config file lines for ``pairs`` (a section header each: git merges repeated sections)."""
    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'

    lines = []
    for key, value in pairs:
        section, _, rest = key.partition(".")
        sub, _, name = rest.rpartition(".")
        lines.append(f"[{section} {quote(sub)}]" if sub else f"[{section}]")
        lines.append(f"\t{name}" if value is None else f"\t{name} = {quote(value)}")
    return lines


def is_sparse(repo: str | Path) -> bool:
    """Whether the checkout ``repo`` is a sparse checkout (its workspaces are full ones all the same)."""
    return git(repo, "config", "--bool", "core.sparseCheckout", check=False).stdout.strip() == "true"


def is_own_repository(path: str | Path) -> bool:
    """Whether ``path`` is a repository of its own (its ``.git`` a directory), not a linked worktree."""
    return (Path(path) / ".git").is_dir()


def unreturned(repo: str | Path, ws: str | Path) -> list[str]:
    """The branches of the repository of its own ``ws`` whose tips ``repo`` does not have: commits that never
    came back (an agent's branch of its own, a unit whose reply never came)."""
    tips = refs(ws, "refs/heads/")
    if not tips:
        return []
    lines = git(repo, "cat-file", "--batch-check", input="".join(f"{o}\n" for o in tips.values())).stdout
    return [ref for ref, line in zip(tips, lines.splitlines(), strict=False) if line.endswith(" missing")]


def save_unreturned(repo: str | Path, ws: str | Path, prefix: str) -> list[str]:
    """Fetch what ``unreturned`` finds onto ``<prefix>-<branch>`` refs of ``repo``; returns those refs."""
    specs = {f"{prefix}-{ref.removeprefix('refs/heads/').replace('/', '-')}": ref for ref in unreturned(repo, ws)}
    if specs:
        fetch(repo, ws, [f"+{src}:{dst}" for dst, src in specs.items()])
    return list(specs)


def workspace_remove(repo: str | Path, *paths: str | Path) -> None:
    """Remove workspaces: repositories of their own (deleted) and linked worktrees of ``repo``."""
    linked = []
    for p in paths:
        if is_own_repository(p):
            shutil.rmtree(p)
        else:
            linked.append(p)
    worktree_remove(repo, *linked)


def worktree_remove(repo: str | Path, *paths: str | Path) -> None:
    with repo_lock(repo, "worktree"):  # prune must not see another run's half-made worktree
        for path in paths:
            if Path(path).exists():
                proc = git(repo, "worktree", "remove", "--force", str(path), check=False)
                if proc.returncode != 0 and "submodule" in proc.stderr:
                    # git will not remove a worktree holding initialised submodules; what the batches did in
                    # them was saved when they ended, and the administrative files go with the prune below.
                    shutil.rmtree(path, ignore_errors=True)
        git(repo, "worktree", "prune", check=False)


def worktree_prune(repo: str | Path) -> None:
    with repo_lock(repo, "worktree"):
        git(repo, "worktree", "prune", check=False)


def worktrees(repo: str | Path) -> list[tuple[str, str | None]]:
    """(path, branch) of every worktree of the repository."""
    result: list[tuple[str, str | None]] = []
    path: str | None = None
    branch: str | None = None
    with repo_lock(repo, "worktree"):  # a worktree being added has no commondir yet: listing it then fails
        listing = out(repo, "worktree", "list", "--porcelain")
    for line in [*listing.splitlines(), ""]:
        if line.startswith("worktree "):
            path, branch = line[9:], None
        elif line.startswith("branch "):
            branch = line[7:].removeprefix("refs/heads/")
        elif not line and path:
            result.append((path, branch))
            path = None
    return result


NO_HOOKS = {"core.hooksPath": os.devnull}  # distpar's own git operations run none of the repository's hooks
HOOKS_VAR = "DISTPAR_GIT_HOOKS"  # "1" in the env given to ``git``: this command runs the repository's hooks


def config_env(settings: Mapping[str, str]) -> dict[str, str]:
    """Variables that add ``settings`` to the configuration of git commands run with them (after any
    ``GIT_CONFIG_COUNT`` entries of the environment, which are kept)."""
    n = int(os.environ.get("GIT_CONFIG_COUNT") or 0)
    env = {"GIT_CONFIG_COUNT": str(n + len(settings))}
    for i, (key, value) in enumerate(settings.items(), n):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    return env


def hooks_env(env: Mapping[str, str], hooks: bool) -> dict[str, str]:
    """``env`` for distpar's git commands: without the repository's hooks unless ``hooks`` (``git`` turns them
    off for every command whose env does not say otherwise)."""
    return {**env, HOOKS_VAR: "1"} if hooks else {**env, **config_env(NO_HOOKS)}


def explain(exc: GitError) -> str:
    """A git failure while committing, in words: what broke and what to do (gpg, filters, hooks, refs)."""
    text = exc.stderr
    low = text.lower()
    last = "; ".join(line.strip() for line in text.strip().splitlines()[-3:]) or f"exit code {exc.returncode}"
    if "no space left" in low or "disk quota exceeded" in low:
        return f"the disk is full: git could not write to the repository or the worktree ({last})"
    if "gpg failed to sign" in low or "failed to sign" in low or "gpg.ssh" in low:
        return (f"git could not sign the commit (commit.gpgsign is set and signing failed: {last}); fix the "
                "signing program, or set commit.gpgsign=false for this repository")
    m = re.search(r"(clean|smudge|process) filter '([^']*)' failed|filter '([^']*)'.*required", text)
    if m or ("filter" in low and ("failed" in low or "required" in low)):
        name = (m.group(2) or m.group(3)) if m else "?"
        return f"the repository's required git filter {name!r} failed: {last}"
    if "not a valid ref name" in low or "invalid ref" in low or "bad ref" in low or "refname" in low:
        return f"git refused a ref name: {last}"
    if "hook" in low or exc.argv[:1] == ["commit"]:
        return f"git commit was refused (a pre-commit or commit-msg hook, or the repository's settings): {last}"
    return f"git {' '.join(exc.argv[:2])} failed: {last}"


@dataclass(frozen=True, slots=True)
class Status:
    """A working tree against HEAD, from one ``git status``: what a unit's end needs to know before committing."""

    changed: tuple[str, ...]  # tracked paths with staged or unstaged changes (deletions too)
    untracked: tuple[str, ...]  # untracked files, and untracked directories (ending with "/") as git folds them
    gitlinks: tuple[str, ...]  # paths the index records as gitlinks (submodules) where HEAD has none

    @property
    def clean(self) -> bool:
        return not (self.changed or self.untracked)


def status(ws: str | Path) -> Status:
    """``git status`` of the working tree (ignored files left out, untracked directories folded)."""
    raw = git(ws, "status", "--porcelain=v2", "-z", "--no-renames", "--untracked-files=normal").stdout
    changed: list[str] = []
    untracked: list[str] = []
    gitlinks: list[str] = []
    tokens = iter(raw.split("\0"))
    for entry in tokens:
        kind = entry[:2]
        if kind == "? ":
            untracked.append(entry[2:])
        elif kind == "1 ":
            fields = entry.split(" ", 8)
            changed.append(fields[8])
            if fields[4] == "160000" and fields[3] != "160000":
                gitlinks.append(fields[8])
        elif kind == "u ":
            changed.append(entry.split(" ", 10)[10])
        elif kind == "2 ":  # a rename (not asked for): its new path, then its old one
            changed.append(entry.split(" ", 9)[9])
            changed.append(next(tokens, ""))
    return Status(tuple(changed), tuple(untracked), tuple(gitlinks))


def commit_all(ws: str | Path, message: str, env: Mapping[str, str], hooks: bool = False,
               dirty: bool = True) -> bool:
    """Commit everything in the working tree (new, changed, deleted files). Returns False when there was nothing
    to commit. ``dirty=False``: ``status`` said the tree is clean (then no git command runs). Without ``hooks``
    the repository's hooks are not run (pre-commit, commit-msg, post-commit)."""
    if not dirty:
        return False
    env = hooks_env(env, hooks)
    git(ws, "add", "--all", env=env)
    argv = ["commit", "--quiet", *(() if hooks else ("--no-verify",)), "--allow-empty-message", "-m", message]
    proc = git(ws, *argv, env=env, check=False)
    if proc.returncode == 0:
        return True
    # Refused: by a hook or the settings, or because nothing was staged (a submodule's own edits, which add
    # leaves out): only the first is an error.
    if git(ws, "diff", "--cached", "--quiet", check=False, env=env).returncode == 0:
        return False
    raise GitError(argv, proc.returncode, proc.stderr)


def _filters_off(repo: str | Path) -> dict[str, str]:
    """Settings that turn off every configured filter driver (so that files are stored as they are)."""
    proc = git(repo, "config", "--name-only", "--get-regexp", r"^filter\.", check=False)
    names = {line.rsplit(".", 1)[0] for line in proc.stdout.split() if line.count(".") >= 2}
    return {f"{n}.{k}": v for n in sorted(names) for k, v in
            (("clean", ""), ("smudge", ""), ("process", ""), ("required", "false"))}


def snapshot(ws: str | Path, message: str, env: Mapping[str, str], parent: str | None = None) -> str | None:
    """A commit of the working tree on top of HEAD (or ``parent``: an unborn HEAD has no commit), made without
    touching HEAD, the branch or the index. When a filter of the repository fails, the files are stored
    unfiltered: saved work is never lost."""
    gd = git_dir(ws)
    index = gd / "distpar-snapshot-index"
    e = {**env, "GIT_INDEX_FILE": str(index)}
    base = parent or "HEAD"

    def start() -> None:
        if parent is None:
            git(ws, "read-tree", "HEAD", env=e)
        elif (gd / "index").is_file():  # what the index holds (an orphan switch keeps it), then the files
            shutil.copyfile(gd / "index", index)
        else:
            git(ws, "read-tree", "--empty", env=e)

    try:
        start()
        try:
            git(ws, "add", "--all", env=e)
        except GitError:
            off = _filters_off(ws)
            if not off:
                raise
            e = {**e, **config_env(off)}
            start()
            git(ws, "add", "--all", env=e)
        tree = out(ws, "write-tree", env=e)
    finally:
        index.unlink(missing_ok=True)
    if tree == tree_of(ws, base):
        return None
    return out(ws, "commit-tree", tree, "-p", base, "-m", message, env=env)


def large_files(repo: str | Path, before: str, after: str, limit: int) -> list[tuple[str, int]]:
    """(path, bytes) of files added or changed between two commits whose new content is over ``limit`` bytes."""
    raw = git(repo, "diff-tree", "-r", "-z", "--no-renames", "--diff-filter=AMT", before, after).stdout
    parts = raw.split("\0")
    oids: list[tuple[str, str]] = []
    for meta, path in zip(parts[::2], parts[1::2], strict=False):
        fields = meta.split()
        if len(fields) >= 4 and fields[1] != "160000":
            oids.append((fields[3], path))
    # The blob of a file still in the working tree is about its size there (a filter may shrink it: LFS); only
    # the files within a factor of four of the limit, or gone, are asked about (usually none: no process).
    oids = [(o, path) for o, path in oids if _maybe_over(Path(repo) / path, limit)]
    if not oids:
        return []
    sizes = git(repo, "cat-file", "--batch-check=%(objectsize)", input="".join(o + "\n" for o, _ in oids)).stdout
    return [(path, int(n)) for (_, path), n in zip(oids, sizes.split(), strict=False) if int(n) > limit]


def _maybe_over(path: Path, limit: int) -> bool:
    try:
        return path.lstat().st_size * 4 > limit
    except OSError:
        return True


_gitlinks: dict[str, tuple[str, ...]] = {}  # commit id -> its submodule paths (a commit's tree never changes)


def submodules(repo: str | Path, revision: str = "HEAD") -> list[str]:
    """Paths of the submodules (gitlinks) in ``revision``; asked of git once per process for a commit id (every
    unit asks twice about its base, and a whole tree is listed)."""
    if (known := _gitlinks.get(revision)) is not None:
        return list(known)
    raw = git(repo, "ls-tree", "-r", "-z", revision).stdout
    found = tuple(entry.split("\t", 1)[1] for entry in raw.split("\0") if entry.startswith("160000 "))
    if FULL_ID.fullmatch(revision):
        if len(_gitlinks) >= 4096:
            _gitlinks.clear()
        _gitlinks[revision] = found
    return list(found)


def submodules_like(repo: str | Path, ws: str | Path) -> list[str]:
    """Initialise in worktree ``ws`` the submodules that the checkout ``repo`` has initialised, cloning each
    from the checkout's own copy (no network, nothing written to the repository's configuration). Returns the
    paths that could not be initialised (their commit is not in the checkout's copy, say)."""
    names = git(ws, "config", "--file", ".gitmodules", "--get-regexp", r"^submodule\..*\.path$", check=False)
    failed = []
    for line in names.stdout.splitlines():
        key, _, path = line.partition(" ")
        name = key.removeprefix("submodule.").removesuffix(".path")
        source = Path(repo) / path
        if not (source / ".git").exists():
            continue  # not initialised in the user's checkout: not here either
        proc = git(ws, "-c", "protocol.file.allow=always", "-c", f"submodule.{name}.url={source}",
                   "submodule", "update", "--init", "--quiet", "--", path, check=False)
        if proc.returncode != 0:
            failed.append(path)
    return failed


def busy_with(repo: str | Path, branch: str) -> str | None:
    """What is under way on ``branch`` in some worktree (a rebase, a merge, a cherry-pick, a revert, a bisect),
    as a sentence; None when nothing is."""
    ref = f"refs/heads/{branch}"
    for path, checked_out in worktrees(repo):
        proc = git(path, "rev-parse", "--absolute-git-dir", check=False)
        if proc.returncode != 0:
            continue
        gd = Path(proc.stdout.strip())
        for d, cmd in (("rebase-merge", "rebase"), ("rebase-apply", "rebase")):
            head_name = gd / d / "head-name"
            if head_name.is_file() and head_name.read_text().strip() == ref:
                return (f"branch {branch} is being rebased in {path} (finish with git {cmd} --continue or "
                        f"git {cmd} --abort there first)")
        if checked_out != branch:
            continue
        for name, what, cmd in (("MERGE_HEAD", "a merge", "merge"), ("CHERRY_PICK_HEAD", "a cherry-pick",
                                "cherry-pick"), ("REVERT_HEAD", "a revert", "revert"),
                                ("BISECT_LOG", "a bisect", "bisect")):
            if (gd / name).exists():
                end = "git bisect reset" if cmd == "bisect" else f"git {cmd} --continue or git {cmd} --abort"
                return f"branch {branch} has {what} in progress in {path} (finish it with {end} there first)"
    return None


def update_ref(repo: str | Path, ref: str, oid: str) -> None:
    git(repo, "update-ref", ref, oid)


def delete_ref(repo: str | Path, ref: str) -> None:
    git(repo, "update-ref", "-d", ref, check=False)


def refs(repo: str | Path, prefix: str) -> dict[str, str]:
    """Ref name -> object id of the refs under ``prefix`` (``refs/heads/``), read from the repository's files when
    it keeps them there (a unit asks twice: no process), else asked of ``git for-each-ref``."""
    found = _refs_from_files(repo, prefix)
    if found is not None:
        return found
    lines = out(repo, "for-each-ref", "--format=%(refname) %(objectname)", prefix).splitlines()
    return dict(line.split(" ", 1) for line in lines if line)  # type: ignore[misc]


def ref_tip(repo: str | Path, ref: str) -> str | None:
    """The commit the full ref name ``ref`` points to, or None when there is no such ref: ``try_rev``, read from
    the files when the repository keeps its refs there."""
    found = _refs_from_files(repo, ref, exact=True)
    if found is not None:
        return found.get(ref)
    return try_rev(repo, ref)


def branch_tip(repo: str | Path, branch: str) -> str | None:
    return ref_tip(repo, f"refs/heads/{branch}")


def _ref_store(repo: str | Path) -> Path | None:
    """The directory holding the repository's shared refs when they are plain files (``refs/`` and
    ``packed-refs``); None for a ref store distpar does not read itself (reftable)."""
    gd = git_dir(repo)
    common = gd
    if (gd / "commondir").is_file():  # a linked worktree: its branches live in the main repository
        common = (gd / (gd / "commondir").read_text().strip()).resolve()
    if (common / "reftable").exists() or not (common / "refs").is_dir():
        return None
    return common


def _refs_from_files(repo: str | Path, prefix: str, exact: bool = False) -> dict[str, str] | None:
    """The refs under ``prefix`` (or the one ref ``prefix`` with ``exact``) as git stores them in files: loose
    refs over ``packed-refs``. None when git must be asked: another ref store, a symbolic or unreadable ref."""
    try:
        store = _ref_store(repo)
        if store is None or not prefix.startswith("refs/"):
            return None
        found: dict[str, str] = {}
        packed = store / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
                if line[:1] in ("#", "^") or not line:
                    continue
                oid, _, name = line.partition(" ")
                if name == prefix if exact else name.startswith(prefix):
                    found[name] = oid
        top = store / prefix
        loose = [top] if exact else []
        if not exact and top.is_dir():
            for root, _dirs, files in os.walk(top):
                loose += [Path(root, f) for f in files if not f.endswith(".lock")]
        for path in loose:
            try:
                text = path.read_text(encoding="utf-8", errors="surrogateescape").strip()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
            if not FULL_ID.fullmatch(text):
                return None  # a symbolic ref (or a torn one): git knows what to make of it
            found[path.relative_to(store).as_posix()] = text
        return found
    except (OSError, GitError):
        return None


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


def bundle_of(repo: str | Path, path: str | Path, tips: Mapping[str, str], exclude: Sequence[str]) -> bool:
    """Write a bundle of the refs ``tips`` (full ref name -> commit id) without the history of the commits
    ``exclude`` (which the receiver holds: the bundle's prerequisites); False when it would be empty. What ``git
    bundle create`` writes, with one process (``git pack-objects``) instead of two."""
    want = {ref: oid for ref, oid in tips.items() if oid not in exclude}
    if not want:
        return False
    ids = [*want.values(), *exclude]
    if not all(len(oid) == 40 and FULL_ID.fullmatch(oid) for oid in ids):  # SHA-256 needs a v3 header: git's
        return bundle_create(repo, path, [*want, *(f"^{oid}" for oid in exclude)])
    header = "# v2 git bundle\n" + "".join(f"-{oid}\n" for oid in dict.fromkeys(exclude)) + \
        "".join(f"{oid} {ref}\n" for ref, oid in want.items()) + "\n"
    revs = "".join(f"{oid}\n" for oid in want.values()) + "".join(f"^{oid}\n" for oid in exclude)
    with open(path, "wb") as f:
        f.write(header.encode("utf-8", "surrogateescape"))
        f.flush()
        try:
            git_bytes(repo, "pack-objects", "--stdout", "--thin", "--delta-base-offset", "--revs", "--quiet",
                      stdin=revs.encode(), stdout=f)
        except GitError:
            Path(path).unlink(missing_ok=True)
            raise
    return True


UNPACK_LIMIT = 100  # objects below which a bundle's pack is stored as loose objects (git's transfer.unpackLimit)


def unbundle(repo: str | Path, path: str | Path, refs: Callable[[str], str | None],
             loose: bool = False) -> dict[str, str] | None:
    """What ``git fetch`` of a bundle does, in two processes instead of three: the pack's objects checked and
    stored (``unpack-objects --strict`` or ``index-pack --strict --fix-thin``: a broken object or a link to
    one missing fails it, nothing written), then each ref of the bundle that ``refs(name)`` names a ref for
    (None: not taken) is set, in one transaction. Returns them (ref set -> commit); None when the bundle is not a
    v2 SHA-1 one (then ``fetch`` it).

    ``loose``: for a repository that holds most of the bundle already (a workspace kept from an earlier run, sent
    the run's whole history): nothing is done when it holds every tip, else only the objects it lacks are stored
    (``unpack-objects`` skips the others; ``index-pack`` would store the whole pack again)."""
    with open(path, "rb") as f:
        if f.readline() != b"# v2 git bundle\n":
            return None
        tips: dict[str, str] = {}
        while (line := f.readline().rstrip(b"\n")):
            if line.startswith(b"-"):
                continue  # a prerequisite: the pack's links to it are checked with the objects
            oid, _, name = line.decode("utf-8", "surrogateescape").partition(" ")
            if len(oid) != 40 or not FULL_ID.fullmatch(oid):
                return None
            if (dest := refs(name)) is not None:
                tips[dest] = oid
        start = f.tell()
        header = f.read(12)
    if len(header) < 12 or header[:4] != b"PACK":
        return None
    count = int.from_bytes(header[8:12], "big")
    held = loose and bool(tips) and " missing" not in git(
        repo, "cat-file", "--batch-check", input="".join(f"{oid}\n" for oid in tips.values())).stdout
    if not held:
        argv = ["unpack-objects", "-q", "--strict"] if loose or count < UNPACK_LIMIT else \
            ["index-pack", "--stdin", "--fix-thin", "--strict"]
        with open(path, "rb", buffering=0) as pack:  # unbuffered: git reads the file from where this seeks
            pack.seek(start)
            git_bytes(repo, *argv, stdin=pack)
    if tips:
        git(repo, "update-ref", "--stdin", input="".join(f"update {ref} {oid}\n" for ref, oid in tips.items()))
    return tips


def fetch(repo: str | Path, source: str | Path, refspecs: Sequence[str]) -> None:
    """Fetch from a bundle file or a remote URL (FETCH_HEAD left alone: fetches into one repository may run at
    once, each into refs of its own)."""
    git(repo, "fetch", "--quiet", "--no-tags", "--force", "--no-write-fetch-head", str(source), *refspecs)
