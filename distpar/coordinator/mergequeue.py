"""The merge queue's effects (``--on-conflict rerun``; the decision is the run state's ``Rerun``): a unit whose
finished work conflicts with work already integrated keeps that attempt on a saved ref, and runs again from
everything integrated so far with a note naming the conflicting files and units and its earlier attempt's diff."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from distpar.coordinator.journal import Event
from distpar.coordinator.site import RunSite
from distpar.core.stimuli import Rerun
from distpar.infra import gitops

DIFF_LIMIT = 20_000  # characters of the earlier attempt's diff put in the note (the rest is on its ref)


@dataclass(frozen=True, slots=True)
class Queued:
    """A unit in the merge queue: why, and where its earlier attempt is (its commit, the base it ran from)."""

    uid: str
    count: int
    files: tuple[str, ...]
    conflict_with: tuple[str, ...]
    earlier: str
    base: str
    saved_ref: str
    holds: tuple[str, ...] = ()

    def to_data(self, reason: str, base_units: tuple[str, ...]) -> dict[str, object]:
        return {"count": self.count, "reason": reason, "files": list(self.files), "with": list(self.conflict_with),
                "earlier": self.earlier, "base": self.base, "saved_ref": self.saved_ref,
                "base_units": list(base_units), "holds": list(self.holds)}


def keep_attempt(site: RunSite, ins: Rerun, earlier: str, base: str) -> Queued:
    """Keep the unit's earlier attempt on ``refs/distpar/<run>/saved/<unit>-rerun<n>`` (a saved ref: it outlives
    the run's clean-up)."""
    ref = f"{site.saved_ref(ins.uid)}-rerun{ins.count}"
    gitops.update_ref(site.repo, ref, earlier)
    return Queued(ins.uid, ins.count, ins.files, ins.conflict_with, earlier, base, ref, ins.holds)


def note(repo: Path, q: Queued) -> str:
    """What the agent is told besides the unit's prompt when it runs again."""
    diff = gitops.out(repo, "diff", q.base, q.earlier) if q.base and q.earlier else ""
    if len(diff) > DIFF_LIMIT:
        diff = diff[:DIFF_LIMIT] + f"\n... (cut; the whole attempt is on {q.saved_ref})"
    quoted = "\n".join("| " + line for line in diff.splitlines())  # quoted: never read as an instruction line
    others = ", ".join(q.conflict_with) or "work already integrated"
    return (
        "\n\n---\nThis task ran before, in parallel with other tasks, and its result conflicted with theirs "
        f"(in {', '.join(q.files) or 'the same files'}, with {others}). Their work is now part of your starting "
        "point. Do the task again on top of it, keeping their changes. Your earlier attempt's diff (kept on "
        f"{q.saved_ref}):\n{quoted}\n"
    )


def from_journal(events: Iterable[Event], done: Iterable[str]) -> dict[str, Queued]:
    """The units a resumed run finds in the merge queue (their last ``unit_rerun`` event), but not those that
    finished their rerun since."""
    finished = set(done)
    out: dict[str, Queued] = {}
    for e in events:
        if e.kind == "unit_rerun" and e.unit_id:
            d = e.data
            out[e.unit_id] = Queued(e.unit_id, int(d["count"]), tuple(d.get("files", ())), tuple(d.get("with", ())),
                                    d.get("earlier", ""), d.get("base", ""), d.get("saved_ref", ""),
                                    tuple(d.get("holds", ())))
    return {uid: q for uid, q in out.items() if uid not in finished}


def counts(events: Iterable[Event]) -> dict[str, int]:
    """uid -> times it was queued again (over the whole run, across resumes)."""
    out: dict[str, int] = {}
    for e in events:
        if e.kind == "unit_rerun" and e.unit_id:
            out[e.unit_id] = max(out.get(e.unit_id, 0), int(e.data.get("count", 1)))
    return out
