"""How code travels between the coordinator's repository and a worker, one mode each:

- ``worktree`` (local workers): the worker makes a repository of its own that borrows the coordinator's
  repository's object store (alternates) and has no remote; nothing is copied, and the coordinator fetches the
  unit's branch and saved work back from it (the reply's ``bundle`` names that repository).
- ``bundle`` (remote workers): the base is sent as a git bundle of the run's start commit (made once per run)
  plus a small increment with what a base holds beyond it (dependency merges, other units' work); the worker's
  new commits and saved work come back as a bundle, fetched into the coordinator's repository.
- ``url`` (``--repo-url``): the base is pushed to the remote under ``refs/distpar/<run>/bases/…``; the worker
  clones or fetches from there and pushes its branch back.

A worker that keeps its clone for the whole run (a Ray actor) needs only what it lacks: ``increment(repo, tips,
have)`` bundles the base (and saved work to restore) without the history of the commits the worker already
holds (what it was sent and what it handed back), straight into bytes, or says that nothing is missing. A
``bundle`` source without a location then means "the workspace already holds the base".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from distpar.core.errors import GitError
from distpar.core.model import Source, UnitReply, UnitSpec
from distpar.infra import gitops


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

    def fetch_back(self, result: UnitReply, source: Source) -> None:
        """Bring a remote worker's new commits (and saved work) into the coordinator's repository."""
        if source.kind != "url" and not result.bundle:
            return
        where = source.location if source.kind == "url" else result.bundle
        assert where
        saved = f"refs/distpar/{self.run_id}/saved"
        branch = f"refs/heads/{result.branch}"
        want = result.head != result.base or source.kind == "worktree"  # a bundle of only saved work has no branch
        if source.kind == "bundle":
            got = gitops.unbundle(self.repo, where, lambda ref: ref if (want and ref == branch)
                                  or ref.startswith(f"{saved}/") else None)
            if got is not None:
                if want and got.get(branch) != result.head:
                    raise GitError(["fetch", where, branch], 1, f"the bundle does not hold {branch} at {result.head}")
                return
        refspecs = [f"+{saved}/*:{saved}/*"]
        if want:
            refspecs.insert(0, f"+{branch}:{branch}")
        gitops.fetch(self.repo, where, refspecs)

    def clear(self) -> None:
        for f in self.bundles.glob("*.bundle"):
            f.unlink()


FETCHERS = 4  # units' work fetched back at once


class Inflow:
    """Each unit's work brought back into the coordinator's repository as soon as its worker hands it back, in a
    few threads of its own (``git fetch`` into one repository, each unit its own refs): the coordinator's loop,
    which starts the next units, never waits for a fetch, and the fetches of units that end together overlap.
    ``deliver(spec, future, error)`` gets each unit after its fetch (``error``: why the fetch failed)."""

    def __init__(self, fetch_back: Callable[[UnitReply, Source], None],
                 deliver: Callable[[UnitSpec, Future[UnitReply], BaseException | None], None]) -> None:
        self._fetch_back, self._deliver = fetch_back, deliver
        self._pool = ThreadPoolExecutor(max_workers=FETCHERS, thread_name_prefix="distpar-fetch")

    def watch(self, spec: UnitSpec, fut: Future[UnitReply]) -> None:
        """Fetch ``spec``'s work back once ``fut`` (the backend's answer) resolves."""
        def resolved(f: Future[UnitReply]) -> None:
            try:
                self._pool.submit(self._fetch, spec, f)
            except RuntimeError:  # closed: the run is over, nothing more is collected
                self._deliver(spec, f, None)
        fut.add_done_callback(resolved)

    def _fetch(self, spec: UnitSpec, fut: Future[UnitReply]) -> None:
        error: BaseException | None = None
        if not fut.cancelled() and fut.exception() is None:
            try:
                self._fetch_back(fut.result(), spec.source)
            except Exception as exc:
                error = exc
        self._deliver(spec, fut, error)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


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


def increment(repo: Path, tips: Mapping[str, str], have: Sequence[str]) -> bytes | None:
    """The bytes of a bundle of the refs ``tips`` (ref name -> commit, set here) holding what a worker with the
    commits ``have`` lacks of them; None when ``have`` already holds every tip. Commits of ``have`` this
    repository does not know are not excluded (the bundle is then larger, never incomplete)."""
    known = _known(repo, have)
    if known and not gitops.out(repo, "rev-list", "-n1", *tips.values(), "--not", *known):
        return None
    for ref, commit in tips.items():
        gitops.update_ref(repo, ref, commit)
    return gitops.git_bytes(repo, "bundle", "create", "--quiet", "-", *tips, *(f"^{c}" for c in known))


def _known(repo: Path, commits: Sequence[str]) -> list[str]:
    if not commits:
        return []
    lines = gitops.git(repo, "cat-file", "--batch-check", input="".join(f"{c}\n" for c in commits)).stdout
    return [c for c, line in zip(commits, lines.splitlines(), strict=False) if not line.endswith(" missing")]
