"""Dependency merges: a unit's base holds the work of every unit it depends on; and early conflict detection:
each finished unit is merged (without a worktree) into a preview of the final result, so a conflict that will
stop the final merge is known the moment it exists. Neither ever resolves a conflict."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from distpar.coordinator.merge import Conflict, changed_paths, dirs_of, touching
from distpar.infra import gitops

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Base:
    commit: str | None  # None: merging the dependencies conflicted
    conflict: Conflict | None = None


def base_for(repo: Path, start: str, uid: str, deps: Sequence[tuple[str, str]], branch: str,
             branch_of: Callable[[str], str], run_id: str, env: dict[str, str], resolved: str | None = None) -> Base:
    """The base of unit ``uid``: ``start`` with the commits of ``deps`` ((dep uid, commit) in plan order) merged
    in one by one. A dependency already contained in the base needs no merge; a single dependency is its commit.

    ``resolved``: the tip of the unit's branch, when it exists. When it holds every dependency and none of the
    unit's own commits, it is the merge of its dependencies the user resolved by hand (the commands a dependency
    conflict prints): it is the base as it is, never merged again."""
    if resolved is not None and deps and _resolved_base(repo, start, uid, [tip for _, tip in deps], resolved):
        return Base(resolved)
    head = start
    for dep, tip in deps:
        if gitops.is_ancestor(repo, tip, head):
            continue
        if gitops.is_ancestor(repo, head, tip):
            head = tip  # fast-forward: nothing to merge
            continue
        msg = f"distpar: merge {dep} into the base of {uid}\n\nDistpar-Run: {run_id}\n"
        outcome = gitops.merge_commit(repo, head, tip, msg, env)
        if outcome.commit is None:
            commands = (f"git switch -c {branch} {head}", f"git merge --no-ff {tip}",
                        "# resolve the files above, then: git add <files> && git commit",
                        f"distpar resume {run_id}")
            return Base(None, Conflict("dependency", branch, branch_of(dep), outcome.conflicts, uid, commands))
        head = outcome.commit
    return Base(head)


def _resolved_base(repo: Path, start: str, uid: str, tips: list[str], resolved: str) -> bool:
    if not all(gitops.is_ancestor(repo, t, resolved) for t in [start, *tips]):
        return False
    own = gitops.git(repo, "log", "--format=%(trailers:key=Distpar-Batch,valueonly)", resolved, "--not", start,
                     *tips, check=False).stdout.split()
    return uid not in own  # the unit's own earlier commit is no base


Found = tuple[tuple[str, ...], tuple[str, ...]]  # (conflicting files, finished units that touched them)


@dataclass
class Preview:
    """The merge of every finished unit so far, in the order they finished: a prediction of the final merge.

    A unit whose changed paths (when known: the worker reports them) meet no path of the units already in
    cannot conflict with them: it joins without a merge (no git process), pending; the pending units are merged
    in as soon as a unit that touches the preview's paths arrives, or the head is asked for."""

    repo: Path
    _head: str
    env: dict[str, str]
    start: str
    members: dict[str, str] = field(default_factory=dict)  # uid -> commit merged into the preview (or pending)
    # Holds the preview's merge commits (``refs/distpar/<run>/preview/head``): reachable from a ref, a concurrent
    # ``git gc --prune=now`` keeps them; ``drop`` removes it once the run needs no more predictions.
    ref: str | None = None
    touched: set[str] | None = field(default_factory=set)  # paths its members changed; None once one is unknown
    pending: dict[str, str] = field(default_factory=dict)  # uid -> commit: members not merged in yet
    late: list[tuple[str, Found]] = field(default_factory=list)  # pending members that conflicted when merged

    @property
    def head(self) -> str:
        self._flush()
        return self._head

    def add(self, uid: str, commit: str, paths: set[str] | None = None) -> Found | None:
        """Merge ``commit`` in (``paths``: what it changed since its base, a superset will do). None when clean;
        else (conflicting files, finished units that touched them)."""
        if paths is not None and self.touched is not None and not touching(paths, self.touched):
            self.touched |= paths
            self.members[uid] = self.pending[uid] = commit
            return None
        if self.touched is not None:
            if paths is None:
                self.touched = None  # from now on every unit is merged
            else:
                self.touched |= paths
        self._flush()
        return self._merge(uid, commit)

    def _flush(self) -> None:
        pending, self.pending = self.pending, {}
        for uid, commit in pending.items():
            del self.members[uid]
            found = self._merge(uid, commit)
            if found is not None:  # disjoint paths that still conflict (a directory renamed): said late
                self.late.append((uid, found))

    def _merge(self, uid: str, commit: str) -> Found | None:
        # One merge-base answers both questions: already in (it is the commit) or a fast-forward (the head).
        base = gitops.git(self.repo, "merge-base", self._head, commit, check=False).stdout.strip()
        if base == commit:
            self.members[uid] = commit
            return None
        if base == self._head:
            self._move(commit)
            self.members[uid] = commit
            return None
        outcome = gitops.merge_commit(self.repo, self._head, commit, f"distpar: preview {uid}\n", self.env)
        if outcome.commit is None:
            files = set(outcome.conflicts)
            others = tuple(u for u, c in self.members.items()
                           if files & set(gitops.out(self.repo, "diff", "--name-only", self.start, c).splitlines()))
            return outcome.conflicts, others
        self._move(outcome.commit)
        self.members[uid] = commit
        return None

    def _move(self, head: str) -> None:
        if self.ref is not None and head != self.start:
            gitops.update_ref(self.repo, self.ref, head)
        self._head = head

    def drop(self) -> None:
        if self.ref is not None:
            gitops.delete_ref(self.repo, self.ref)


class EarlyConflicts:
    """Checks each finished unit against the preview off the dispatch path: the coordinator hands a result over
    and goes on starting units while one thread merges it into the preview (in the order handed over) and
    reports a conflict through ``report``. With ``inline`` (``--stop-on-conflict``: whether new units start
    depends on the answer) ``check`` merges at once and answers.

    When every unit has ended (``settle``), the checks still queued are made in one batch: one ``diff-tree``
    gives the paths each of them changed, and only those whose paths meet the preview's or another queued
    unit's are merged into the preview; the others cannot conflict. The end of the run does not wait for a
    queue of merges."""

    def __init__(self, preview: Preview, report: Callable[[str, Found], None], inline: bool) -> None:
        self.preview, self.report, self.inline = preview, report, inline
        self._pool: ThreadPoolExecutor | None = None
        self._queued: dict[str, tuple[str, set[str] | None]] = {}  # handed over, not started: uid -> (commit, paths)
        self._lock = threading.Lock()

    def check(self, uid: str, commit: str, paths: set[str] | None = None) -> Found | None:
        """``paths``: what the unit changed since its base, when the worker said (a superset will do). Inline,
        every unit is merged at once: a conflict no path shows (a directory one unit renamed, where another adds
        a file) stops the run then too."""
        if self.inline:
            return self.preview.add(uid, commit)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distpar-preview")
        with self._lock:
            self._queued[uid] = (commit, paths)
        self._pool.submit(self._later, uid)
        return None

    def _later(self, uid: str) -> None:
        with self._lock:
            queued = self._queued.pop(uid, None)
        if queued is not None:
            self._add(uid, *queued)

    def _add(self, uid: str, commit: str, paths: set[str] | None) -> None:
        try:
            found = self.preview.add(uid, commit, paths)
        except Exception:  # a prediction only: the final merge still finds and reports every conflict
            log.exception("early conflict check of %s failed", uid)
            return
        late, self.preview.late = self.preview.late, []
        for earlier, what in late:
            self.report(earlier, what)
        if found is not None:
            self.report(uid, found)

    def settle(self) -> None:
        """Finish the checks handed over (before the final merge, so that the report lists them all): the one
        under way, then what is still queued, in one batch; the preview's ref goes (a resume builds a new
        preview)."""
        try:
            self._settle()
        finally:
            self.preview.drop()

    def _settle(self) -> None:
        if self._pool is None:
            return
        with self._lock:
            queued, self._queued = self._queued, {}
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        if not queued:
            return
        p = self.preview
        # What the preview's members changed: known when the workers said it for each (their pending merges are
        # never made), else asked of git with the queued units' paths.
        ask = [(c, p.start) for c, _ in queued.values()] + ([] if p.touched is not None else [(p.head, p.start)])
        try:
            paths = changed_paths(p.repo, ask)
        except Exception:
            log.exception("early conflict checks of %d unit(s) failed", len(queued))
            return
        done = set(p.touched) if p.touched is not None else paths.get(p.head, set())
        mine = {uid: paths.get(c, set()) for uid, (c, _) in queued.items()}
        dirs = {uid: {d for f in fs for d in dirs_of(f)} for uid, fs in mine.items()}
        files_n, dirs_n = Counter(f for fs in mine.values() for f in fs), Counter(d for ds in dirs.values() for d in ds)
        for uid, (commit, _) in queued.items():
            fs, ds = mine[uid], dirs[uid]
            among_queued = any(files_n[f] > 1 or dirs_n[f] > (f in ds) for f in fs) or \
                any(files_n[d] > (d in fs) for d in ds)
            if among_queued or touching(fs, done):
                self._add(uid, commit, fs)
                done |= fs
