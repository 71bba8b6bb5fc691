"""Which unit's merge broke the check: the integration branch is the plan-order sequence of merges on top of the
run's start (first parents), so when ``--verify-merged`` fails on its head the first merge that makes the check
fail is found by bisecting that sequence, the check run in a worktree of distpar's own on intermediate merge
commits (O(log n) runs). ``--verify-each-merge`` runs the check after every merge instead, in order, up to the
first failure (n runs at most: for cheap checks). Neither touches a branch; each run's output has its own log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distpar.infra import gitops
from distpar.infra.workspace import HookResult

MERGE_SUBJECT = "distpar: merge "


@dataclass(frozen=True, slots=True)
class Merge:
    """One commit of the integration branch's first-parent sequence: what it merged."""

    commit: str
    label: str  # the unit branch it merged, or the commit's subject (a commit of the user's own there)
    unit: str | None  # the unit whose branch it merged (its commit's Distpar-Batch trailer)
    units: tuple[str, ...]  # every unit it brought in (the unit, and dependencies merged through it)


@dataclass
class Bisected:
    """The first merge after which the check fails, and the check's output there."""

    unit: str | None  # None: the check fails at the run's start already, before any merge (or on a user commit)
    label: str
    commit: str
    units: list[str]
    exit_code: int | None
    tail: str
    log_path: str
    runs: int  # checks run to find it
    each: bool  # --verify-each-merge (in order) rather than bisection
    tried: list[dict[str, Any]] = field(default_factory=list)  # (commit, label, ok) in the order run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.unit is None and self.label == "start":
            return "the check fails on the run's start already, before any unit's merge"
        what = f"unit {self.unit}" if self.unit else self.label
        brought = [u for u in self.units if u != self.unit]
        through = f" (bringing in {', '.join(brought)} through it)" if brought else ""
        return f"the check first fails after the merge of {what}{through} ({self.commit[:12]})"


def merge_sequence(repo: Path, start: str, head: str) -> list[Merge]:
    """The first-parent commits from ``start`` (excluded) to ``head``, oldest first, with the units each brought in."""
    rows = gitops.out(repo, "log", "--first-parent", "--reverse", "--format=%H%x1f%P%x1f%s",
                      f"{start}..{head}").splitlines()
    seq = []
    for row in rows:
        commit, parents, subject = row.split("\x1f", 2)
        ps = parents.split()
        units: list[str] = []
        if len(ps) > 1:
            trailers = gitops.out(repo, "log", "--format=%(trailers:key=Distpar-Batch,valueonly,separator=%x1e)",
                                  ps[1], "--not", ps[0])
            units = list(dict.fromkeys(u.strip() for u in trailers.replace("\x1e", "\n").splitlines() if u.strip()))
            units.reverse()  # oldest first: dependencies before the unit that brought them
        tip_unit = None
        if len(ps) > 1:
            own = gitops.out(repo, "log", "-1", "--format=%(trailers:key=Distpar-Batch,valueonly)", ps[1]).strip()
            tip_unit = own or None
        label = subject[len(MERGE_SUBJECT):] if subject.startswith(MERGE_SUBJECT) else f"commit {commit[:12]}: " \
            + subject
        seq.append(Merge(commit, label, tip_unit, tuple(units)))
    return seq


class Stopped(Exception):
    """The search was interrupted (Ctrl+C while landing): the gate's failure stands, resume searches again."""


Check = Callable[[str, int], HookResult]  # (commit, step number) -> the check's result there


def bisect(seq: list[Merge], check: Check, head_failed: HookResult, start: str) -> Bisected:
    """The first merge of ``seq`` after which ``check`` fails, knowing it fails after the last (``head_failed``).
    The start is taken to pass unless the search ends at the first merge (then the start is checked too)."""
    tried: list[dict[str, Any]] = []
    lo, hi, bad = -1, len(seq) - 1, head_failed
    runs = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        runs += 1
        r = check(seq[mid].commit, runs)
        tried.append({"commit": seq[mid].commit, "label": seq[mid].label, "ok": r.ok})
        if r.ok:
            lo = mid
        else:
            hi, bad = mid, r
    if hi == 0:
        runs += 1
        r = check(start, runs)
        tried.append({"commit": start, "label": "start", "ok": r.ok})
        if not r.ok:
            return Bisected(None, "start", start, [], r.exit_code, r.tail, r.log_path, runs, False, tried)
    m = seq[hi]
    return Bisected(m.unit, m.label, m.commit, list(m.units), bad.exit_code, bad.tail, bad.log_path, runs, False,
                    tried)


def each_merge(seq: list[Merge], check: Check) -> tuple[HookResult | None, Bisected | None]:
    """The check after every merge of ``seq`` in order, up to the first failure: (the last result, where it first
    failed or None). An empty sequence checks nothing."""
    tried: list[dict[str, Any]] = []
    last = None
    for i, m in enumerate(seq):
        last = check(m.commit, i + 1)
        tried.append({"commit": m.commit, "label": m.label, "ok": last.ok})
        if not last.ok:
            return last, Bisected(m.unit, m.label, m.commit, list(m.units), last.exit_code, last.tail,
                                  last.log_path, i + 1, True, tried)
    return last, None
