"""The ordered merge: unit branches into an integration branch, then into the target. Never resolves a conflict."""

from __future__ import annotations

import logging
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from distpar.infra import gitops

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Conflict:
    """A merge that did not go through, with what the user needs to look at it and continue."""

    stage: str  # "dependency" (a batch's base) or "integration" (the final merge) or "target"
    ours: str  # branch or commit merged into
    theirs: str  # branch merged
    files: tuple[str, ...]
    unit_id: str | None = None
    commands: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "ours": self.ours,
            "theirs": self.theirs,
            "files": list(self.files),
            "unit_id": self.unit_id,
            "commands": list(self.commands),
        }


@dataclass(frozen=True, slots=True)
class MergeResult:
    head: str  # integration head: everything merged so far
    merged: tuple[str, ...]  # branches merged, in order
    conflict: Conflict | None


def merge_branches(
    repo: Path, base: str, branches: list[tuple[str, str]], integration: str, run_id: str, env: dict[str, str]
) -> MergeResult:
    """Merge ``branches`` ((name, head) in plan order) with --no-ff merges on top of ``base``.

    The integration branch is written once, at the end: on a conflict it holds everything merged before it,
    and the conflicting unit's branch is untouched. Which branch is already contained (nothing to merge) is
    read from one ``rev-list`` of the units' commits. A merge whose result needs no content merge (the unit's
    only fork point is one commit outside the units' history, and its changes and everything merged since that
    commit touch different paths, and nothing is deleted) is written without a per-unit git process: the
    consecutive ones go into one ``git fast-import``; every other merge is ``merge-tree`` and ``commit-tree``."""
    try:
        return _merge_branches(repo, base, branches, integration, run_id, env, fast_ok=True)
    except _FastFailed as exc:  # fast-import refused (an odd path, say): every merge through merge-tree
        log.warning("fast merges failed, merging one by one: %s", exc)
        return _merge_branches(repo, base, branches, integration, run_id, env, fast_ok=False)


class _FastFailed(Exception):
    pass


def _merge_branches(repo: Path, base: str, branches: list[tuple[str, str]], integration: str, run_id: str,
                   env: dict[str, str], fast_ok: bool) -> MergeResult:
    graph = _Graph.load(repo, base, [tip for _, tip in branches])
    fast = _Fast.start(repo, graph, branches, env) if fast_ok else None
    head = base
    merged: list[str] = []
    seen: set[str] = set()  # the units' commits already in head (not those of base)
    pending: list[tuple[str, str, list[_Change]]] = []  # fast merges not written yet: (name, tip, changes)
    ours: _Paths | None = None  # what head changed since ``anchor``, while fast merges can go on
    anchor: str | None = None

    def flush() -> None:
        nonlocal head
        if pending:
            head = fast.write(head, pending, integration, run_id) if fast else head
            merged.extend(name for name, _, _ in pending)
            pending.clear()

    for name, tip in branches:
        if tip not in graph.parents or tip in seen:
            continue  # nothing new (no changes, or already merged through a dependency)
        ancestors, bounds = graph.ancestry(tip)
        changes = fast.changes.get(tip) if fast and len(bounds) == 1 and not ancestors & seen else None
        if changes is not None and fast is not None:
            (fork,) = bounds
            if fork != anchor:
                flush()
                anchor, ours = fork, fast.paths_between(fork, head)
            if ours is not None and ours.accepts(changes):
                ours.add(changes)
                pending.append((name, tip, changes))
                seen |= ancestors
                continue
        flush()
        anchor = ours = None
        outcome = gitops.merge_commit(repo, head, tip, _message(name, run_id), env)
        if outcome.commit is None:
            gitops.update_ref(repo, f"refs/heads/{integration}", head)
            commands = (
                f"git switch {integration}",
                f"git merge --no-ff {name}",
                "# resolve the files above, then: git add <files> && git commit",
                f"distpar resume {run_id}",
            )
            return MergeResult(
                head, tuple(merged), Conflict("integration", integration, name, outcome.conflicts, None, commands)
            )
        head = outcome.commit
        merged.append(name)
        seen |= ancestors
    flush()
    gitops.update_ref(repo, f"refs/heads/{integration}", head)
    return MergeResult(head, tuple(merged), None)


def _message(name: str, run_id: str) -> str:
    return f"distpar: merge {name}\n\nDistpar-Run: {run_id}\n"


@dataclass(frozen=True, slots=True)
class _Change:
    status: str  # A, M or T (a fast merge has no deletions)
    mode: str
    oid: str
    path: str


class _Graph:
    """The units' commits that ``base`` does not hold, with their parents (one ``rev-list``)."""

    def __init__(self, parents: dict[str, tuple[str, ...]]) -> None:
        self.parents = parents

    @classmethod
    def load(cls, repo: Path, base: str, tips: list[str]) -> _Graph:
        if not tips:
            return cls({})
        text = gitops.git(repo, "rev-list", "--parents", "--stdin",
                          input="\n".join([*tips, f"^{base}"]) + "\n").stdout
        parents = {}
        for line in text.splitlines():
            oid, *rest = line.split()
            parents[oid] = tuple(rest)
        return cls(parents)

    def ancestry(self, tip: str) -> tuple[set[str], set[str]]:
        """The units' commits ``tip`` holds (itself included), and the commits of base's history it forks from."""
        inside, outside, todo = set(), set(), [tip]
        while todo:
            c = todo.pop()
            if c in inside:
                continue
            inside.add(c)
            for p in self.parents[c]:
                (todo.append(p) if p in self.parents else outside.add(p))
        return inside, outside


class _Paths:
    """The paths one side of a merge changed since the fork point, with the directories that hold them."""

    def __init__(self, changes: list[_Change]) -> None:
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.deletes = False
        self.add(changes)

    def add(self, changes: list[_Change]) -> None:
        for c in changes:
            self.deletes = self.deletes or c.status not in "AMT"
            self.files.add(c.path)
            self.dirs.update(dirs_of(c.path))

    def accepts(self, theirs: list[_Change]) -> bool:
        """True when merging ``theirs`` needs no content merge and no rename or directory/file decision: the
        result is then this side with ``theirs`` written over it."""
        if self.deletes:
            return False
        return not any(c.path in self.files or c.path in self.dirs or not self.files.isdisjoint(dirs_of(c.path))
                       for c in theirs)


def changed_paths(repo: Path, pairs: list[tuple[str, str]]) -> dict[str, set[str]]:
    """The paths each commit changed since its partner, for (commit, since) ``pairs``, in one ``diff-tree``."""
    if not pairs:
        return {}
    changes = _diff_many(repo, [f"{c} {since}" for c, since in pairs])
    return {c: {x.path for x in changes.get(c, [])} for c, _ in pairs}


def touching(mine: set[str], others: set[str]) -> bool:
    """True when two sets of changed paths meet: a path in both, or a file where the other has a directory."""
    if mine & others:
        return True
    return any(d in others for p in mine for d in dirs_of(p)) or any(d in mine for p in others for d in dirs_of(p))


def _diff_many(repo: Path, lines: list[str]) -> dict[str, list[_Change]]:
    """``git diff-tree --stdin`` of "<commit> <since>" lines: each commit's changes since its partner."""
    raw = gitops.git(repo, "diff-tree", "-r", "-z", "--no-renames", "--stdin", input="\n".join(lines) + "\n").stdout
    changes: dict[str, list[_Change]] = {}
    tokens = raw.split("\0")
    current: list[_Change] | None = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith(":"):
            _, mode, _, oid, status = tok[1:].split(" ")
            if current is not None and i + 1 < len(tokens):
                current.append(_Change(status[0], mode, oid, tokens[i + 1]))
            i += 2
            continue
        if tok.strip():
            current = changes.setdefault(tok.strip(), [])
        i += 1
    return changes


def dirs_of(path: str) -> list[str]:
    """The directories that hold ``path``: a/b/c -> a, a/b."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _fast_path(path: str) -> bool:
    return path.isascii() and path.isprintable() and not path.startswith('"')


class _Fast:
    """Merges written by one ``git fast-import``: their trees are the first parent's with the unit's files."""

    def __init__(self, repo: Path, env: dict[str, str], changes: dict[str, list[_Change]]) -> None:
        self.repo, self.env, self.changes = repo, env, changes
        self._idents: tuple[str, str] | None = None

    @classmethod
    def start(cls, repo: Path, graph: _Graph, branches: list[tuple[str, str]], env: dict[str, str]) -> _Fast | None:
        """The changes of every unit that may merge fast (one ``diff-tree``); None when no merge can (signed
        commits are asked for: only commit-tree signs)."""
        pairs = []
        for _, tip in branches:
            if tip in graph.parents:
                _, bounds = graph.ancestry(tip)
                if len(bounds) == 1:
                    pairs.append(f"{tip} {next(iter(bounds))}")
        if not pairs:
            return None
        sign = gitops.git(repo, "config", "--type=bool", "--get", "commit.gpgsign", check=False, env=env)
        if sign.stdout.strip() == "true":
            return None
        changes = _diff_many(repo, pairs)
        return cls(repo, env, {tip: cs for tip, cs in changes.items()
                               if cs and all(c.status in "AMT" and _fast_path(c.path) for c in cs)})

    def paths_between(self, fork: str, head: str) -> _Paths:
        if fork == head:
            return _Paths([])
        raw = gitops.git(self.repo, "diff-tree", "-r", "-z", "--no-renames", fork, head).stdout
        tokens = raw.split("\0")
        return _Paths([_Change(tokens[i][1:].split(" ")[4][0], "", "", tokens[i + 1])
                       for i in range(len(tokens) - 1) if tokens[i].startswith(":")])

    def write(self, head: str, pending: list[tuple[str, str, list[_Change]]], integration: str,
              run_id: str) -> str:
        """The merge commits of ``pending`` on top of ``head``, one after the other; the integration branch
        moves to the last. Returns it."""
        if self._idents is None:
            self._idents = (gitops.out(self.repo, "var", "GIT_AUTHOR_IDENT", env=self.env),
                            gitops.out(self.repo, "var", "GIT_COMMITTER_IDENT", env=self.env))
        author, committer = self._idents
        delim = f"DISTPAR-{secrets.token_hex(8)}"
        lines: list[str] = []
        for k, (name, tip, changes) in enumerate(pending, 1):
            lines += [f"commit refs/heads/{integration}", f"mark :{k}", f"author {author}",
                      f"committer {committer}", f"data <<{delim}", _message(name, run_id).rstrip("\n"), "", delim,
                      f"from {head}" if k == 1 else f"from :{k - 1}", f"merge {tip}"]
            lines += [f"M {c.mode} {c.oid} {c.path}" for c in changes]
            lines.append("")
        with tempfile.TemporaryDirectory(prefix="distpar-merge-") as tmp:
            marks = Path(tmp) / "marks"
            proc = gitops.git(self.repo, "fast-import", "--quiet", "--force", f"--export-marks={marks}",
                              input="\n".join(lines) + "\ndone\n", env=self.env, check=False)
            if proc.returncode != 0:
                raise _FastFailed(proc.stderr.strip()[-500:])
            written = dict(line.split(" ", 1) for line in marks.read_text().splitlines() if line)
        return written[f":{len(pending)}"].strip()


def land(repo: Path, target: str, start: str, integration: str, head: str, env: dict[str, str]) -> Conflict | None:
    """Move ``target`` to ``head``. If the target moved since the run started, merge (never resolve) first.

    When the target is checked out, the checkout is fast-forwarded with git itself, which refuses to overwrite
    local changes; then the conflict names the files and the integration branch keeps the work. Runs landing
    on one repository at the same time take turns (a lock in the git directory)."""
    with gitops.repo_lock(repo, "land"):
        return _land(repo, target, start, integration, head, env)


def _land(repo: Path, target: str, start: str, integration: str, head: str, env: dict[str, str]) -> Conflict | None:
    current = gitops.rev(repo, f"refs/heads/{target}")
    new = head
    if current != start and not gitops.is_ancestor(repo, current, head):
        outcome = gitops.merge_commit(repo, current, head, f"distpar: merge {integration} into {target}\n", env)
        if outcome.commit is None:
            return Conflict("target", target, integration, outcome.conflicts, None,
                            (f"git switch {target}", f"git merge --no-ff {integration}"))
        new = outcome.commit
    checked_out = [Path(p) for p, b in gitops.worktrees(repo) if b == target]
    busy = gitops.busy_with(repo, target)  # the user started a merge or rebase there while the run ran
    if busy:
        where = checked_out[0] if checked_out else repo
        return Conflict("target", target, integration, (), None,
                        (f"# {busy}", f"git -C {where} merge --ff-only {integration}"))
    if new != head:  # what the printed commands merge: the integration branch holds the target's new commits too
        gitops.update_ref(repo, f"refs/heads/{integration}", new)
    if checked_out:
        ck = checked_out[0]
        if _moved_under(ck, start, current):
            # Someone moved the branch itself (git update-ref, a fetch into it) while it was checked out: the
            # checkout's index and files are still the run's start. Move them from there to the landed commit
            # (git read-tree -m -u, as a checkout does: local changes are kept, or it refuses), then the branch.
            proc = gitops.git(ck, "read-tree", "-m", "-u", start, new, check=False, env=env)
            if proc.returncode != 0:
                return Conflict("target", target, integration, _files(proc.stderr), None,
                                (f"# {target} was moved while checked out in {ck}; its files are still those of "
                                 f"{start[:12]}: commit or stash your changes there, then",
                                 f"git -C {ck} read-tree -m -u {start} {integration}",
                                 f"git -C {ck} update-ref refs/heads/{target} {integration}"))
            gitops.git(repo, "update-ref", f"refs/heads/{target}", new, current, env=env)
            return None
        proc = gitops.git(ck, "merge", "--ff-only", "--quiet", new, check=False, env=env)
        if proc.returncode != 0:
            return Conflict("target", target, integration, _files(proc.stderr), None,
                            (f"git -C {ck} status", f"git -C {ck} merge --ff-only {integration}"))
    else:
        gitops.git(repo, "update-ref", f"refs/heads/{target}", new, current, env=env)
    return None


def _files(stderr: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in stderr.splitlines() if line.startswith(("\t", "    ")))


def _moved_under(checkout: Path, start: str, current: str) -> bool:
    """The checked-out branch was moved to ``current`` while its checkout's index still holds ``start``'s tree
    (its staged state is the run's start, not its HEAD's)."""
    if current == start:
        return False
    index = gitops.git(checkout, "write-tree", check=False)  # unmerged entries: not this case
    return index.returncode == 0 and index.stdout.strip() == gitops.tree_of(checkout, start) \
        and gitops.tree_of(checkout, start) != gitops.tree_of(checkout, current)
