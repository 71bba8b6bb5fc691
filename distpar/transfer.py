"""How code travels between the coordinator's repository and a worker, one mode each:

- ``worktree`` (local workers): the worker adds a worktree of the coordinator's repository; nothing is copied
  and nothing comes back (the branch is already in the repository).
- ``bundle`` (remote workers): the base is sent as a git bundle of the run's start commit (made once per run)
  plus a small increment with what a base holds beyond it (dependency merges, other units' work); the worker's
  new commits and saved work come back as a bundle, fetched into the coordinator's repository.
- ``url`` (``--repo-url``): the base is pushed to the remote under ``refs/distpar/<run>/bases/…``; the worker
  clones or fetches from there and pushes its branch back.
"""

from __future__ import annotations

from pathlib import Path

from distpar import gitops
from distpar.model import SegmentResult, Source


class Transfer:
    def __init__(self, repo: Path, run_id: str, run_dir: Path, start: str, remote: bool,
                 repo_url: str | None) -> None:
        self.repo, self.run_id, self.start = repo, run_id, start
        self.remote, self.repo_url = remote, repo_url
        self.bundles = run_dir / "bundles"
        self._full: Path | None = None

    @property
    def return_bundle(self) -> bool:
        return self.remote and not self.repo_url

    def source(self, base: str, name: str, extra: tuple[str, ...] = ()) -> Source:
        """Where a worker gets ``base`` from; ``name`` keeps the refs and files of one dispatch apart. ``extra``:
        refs the worker needs too (the saved work an interrupted unit goes on from)."""
        if not self.remote:
            return Source("worktree", str(self.repo))
        ref = f"refs/distpar/{self.run_id}/bases/{name}"
        if self.repo_url:
            gitops.git(self.repo, "push", "--quiet", "--force", self.repo_url, f"{base}:{ref}",
                       *(f"+{r}:{r}" for r in extra))
            return Source("url", self.repo_url)
        self.bundles.mkdir(parents=True, exist_ok=True)
        if self._full is None:
            self._full = self.bundles / "base.bundle"
            gitops.update_ref(self.repo, f"refs/distpar/{self.run_id}/base", self.start)
            gitops.bundle_create(self.repo, self._full, [f"refs/distpar/{self.run_id}/base"])
        if base == self.start and not extra:
            return Source("bundle", str(self._full))
        gitops.update_ref(self.repo, ref, base)
        inc = self.bundles / f"{name}.bundle"
        gitops.bundle_create(self.repo, inc, [ref, *extra, f"^{self.start}"])
        return Source("bundle", str(self._full), (str(inc),))

    def fetch_back(self, result: SegmentResult, source: Source) -> None:
        """Bring a remote worker's new commits (and saved work) into the coordinator's repository."""
        if source.kind != "url" and not result.bundle:
            return
        where = source.location if source.kind == "url" else result.bundle
        assert where
        saved = f"refs/distpar/{self.run_id}/saved"
        refspecs = [f"+{saved}/*:{saved}/*"]
        if result.head != result.base:  # a bundle of only saved work (nothing committed) has no branch ref
            refspecs.insert(0, f"+refs/heads/{result.branch}:refs/heads/{result.branch}")
        gitops.fetch(self.repo, where, refspecs)

    def clear(self) -> None:
        for f in self.bundles.glob("*.bundle"):
            f.unlink()


def push_run(repo: Path, remote: str, branches: list[str], target: str) -> list[str]:
    """``--push REMOTE``: the run's branches go to REMOTE for review, and the target too when it tracks a
    branch there (the landing then reaches the team, not only this checkout). Returns the refs pushed."""
    refs = [b for b in branches if gitops.try_rev(repo, f"refs/heads/{b}")]
    upstream = gitops.git(repo, "config", f"branch.{target}.remote", check=False).stdout.strip()
    specs = [f"+refs/heads/{b}:refs/heads/{b}" for b in refs]
    if upstream == remote:
        merge = gitops.git(repo, "config", f"branch.{target}.merge", check=False).stdout.strip() or \
            f"refs/heads/{target}"
        specs.append(f"refs/heads/{target}:{merge}")  # not forced: a target that moved there is refused
        refs.append(target)
    if specs:
        gitops.git(repo, "push", "--quiet", remote, *specs)
    return refs
