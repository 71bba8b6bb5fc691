"""The ordered merge: unit branches into an integration branch, then into the target. Never resolves a conflict."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from distpar.infra import gitops


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

    The integration branch is written after every clean merge, so on a conflict it holds everything merged so
    far, and the conflicting unit branch is untouched."""
    head = base
    merged: list[str] = []
    gitops.update_ref(repo, f"refs/heads/{integration}", head)
    for name, tip in branches:
        if gitops.is_ancestor(repo, tip, head):
            continue  # nothing new (no changes, or already merged through a dependency)
        outcome = gitops.merge_commit(
            repo, head, tip, f"distpar: merge {name}\n\nDistpar-Run: {run_id}\n", env
        )
        if outcome.commit is None:
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
        gitops.update_ref(repo, f"refs/heads/{integration}", head)
        merged.append(name)
    return MergeResult(head, tuple(merged), None)


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
    if checked_out:
        proc = gitops.git(checked_out[0], "merge", "--ff-only", "--quiet", new, check=False, env=env)
        if proc.returncode != 0:
            files = tuple(
                line.strip() for line in proc.stderr.splitlines() if line.startswith(("\t", "    "))
            )
            return Conflict("target", target, integration, files, None,
                            (f"git -C {checked_out[0]} status", f"git merge --ff-only {integration}"))
    else:
        gitops.git(repo, "update-ref", f"refs/heads/{target}", new, current, env=env)
    return None
