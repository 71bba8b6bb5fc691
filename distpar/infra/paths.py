"""Where distpar keeps its files: the state directory (journal, logs), a run's directory, and its worktrees.

Worktrees are placed outside the user's checkout: an agent that climbs out of its worktree with ``../..``
passes through distpar's own directories, never through the user's files. (The git directory of a checkout is
inside it, so the state directory ``<repo>/.git/distpar`` is no place for them.)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from distpar.core.errors import RepoError
from distpar.infra import gitops

HOME_VAR = "DISTPAR_HOME"  # redirects all state (tests, or a shared location)
WORKTREES_VAR = "DISTPAR_WORKTREES"  # where run worktrees go (default: a cache directory outside the checkout)


def state_dir(repo: str | Path) -> Path:
    """The journal, logs and scratch files of ``repo``'s runs: ``$DISTPAR_HOME`` or ``<git dir>/distpar``."""
    home = os.environ.get(HOME_VAR)
    return Path(home).resolve() if home else gitops.common_dir(repo) / "distpar"


def run_dir(repo: str | Path, run_id: str) -> Path:
    """Per-run state on the coordinator: logs, bundles, prompt files."""
    return state_dir(repo) / "runs" / run_id


def repo_key(repo: str | Path) -> str:
    """A short name for a repository that is unique per git directory (two clones named alike differ)."""
    common = gitops.common_dir(repo).resolve()
    top = common.parent if common.name == ".git" else common
    digest = hashlib.sha1(str(common).encode()).hexdigest()[:10]
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in top.name)[:40] or "repo"
    return f"{name}-{digest}"


def _candidates() -> list[Path]:
    out = []
    if os.environ.get(WORKTREES_VAR):
        out.append(Path(os.environ[WORKTREES_VAR]).expanduser())
    if os.environ.get(HOME_VAR):
        out.append(Path(os.environ[HOME_VAR]) / "worktrees")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    out.append(Path(cache) / "distpar" / "worktrees")
    out.append(Path(tempfile.gettempdir()) / f"distpar-{os.getuid()}" / "worktrees")
    return out


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def worktrees_root(repo: str | Path, run_id: str) -> Path:
    """The directory that holds the worktrees of one run: ``<worktrees_base>/<run id>``."""
    return worktrees_base(repo) / run_id


def worktrees_base(repo: str | Path) -> Path:
    """Where the runs of ``repo`` put their worktrees (``<root>/<repo key>``), outside every checkout of
    ``repo``: the first of ``$DISTPAR_WORKTREES``, ``$DISTPAR_HOME/worktrees``,
    ``~/.cache/distpar/worktrees`` and ``<tmp>/distpar-<uid>/worktrees`` that lies outside them
    (a repository at ``~`` holds ``~/.cache``). An explicit ``$DISTPAR_WORKTREES`` inside a checkout is refused."""
    checkouts = [Path(p).resolve() for p, _ in gitops.worktrees(repo)]
    explicit = os.environ.get(WORKTREES_VAR)
    for i, cand in enumerate(_candidates()):
        base = cand.resolve()
        holder = next((c for c in checkouts if _inside(base, c)), None)
        if holder is None:
            return base / repo_key(repo)
        if explicit and i == 0:
            raise RepoError(f"${WORKTREES_VAR}={explicit} is inside the checkout {holder}: an agent could reach "
                            "the checkout's files from its worktree", hint="point it outside the repository")
    raise RepoError("no directory outside the repository to put worktrees in",
                    hint=f"set ${WORKTREES_VAR} to a directory outside {checkouts[0]}")


def workspace(repo: str | Path, run_id: str, worker: int) -> Path:
    """The worktree worker ``worker`` (0-based) of a local run keeps for the whole run."""
    return worktrees_root(repo, run_id) / f"w{worker + 1}"


def remove_worktrees_root(repo: str | Path, run_id: str) -> None:
    """Remove a run's worktree directory once its worktrees are gone (an empty directory only)."""
    for d in (worktrees_root(repo, run_id), worktrees_base(repo)):
        try:
            d.rmdir()
        except OSError:  # not empty (a worktree was kept, another run's) or already gone
            return
