"""``distpar clean``: remove what finished runs left behind, and sweep what a crashed coordinator orphaned.

A run leaves worktrees, branches ``distpar/<run>/*``, refs ``refs/distpar/<run>/*`` and a state directory
(logs, bundles, worktrees). ``plan_clean`` decides, for each of them, to remove or to keep and says why;
``apply_clean`` carries the decisions out. The rule that never bends without ``--force``: a branch or ref
whose commits are not in the run's target is kept, and a worktree's uncommitted work is saved on a ref before
the worktree goes. Two kinds of ref are not work and go without ``--force``: the saved attempt of a unit that
succeeded later in a run that ended ok (superseded; its commit is named), and the early conflict check's
preview. Live runs are never touched; a run is live when the journal says ``running`` and its coordinator process
still exists (the same process: its start time is checked against the journal).
Agents still running for a run that is not live are killed (Linux: found through ``/proc/*/environ``).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distpar.coordinator.journal import Journal
from distpar.coordinator.removal import REMOVING, save_left, wait_for_removal
from distpar.coordinator.runtime import run_is_live
from distpar.core import names
from distpar.core.errors import DistparError, UsageError
from distpar.infra import gitops, paths, pool
from distpar.infra.process import agent_processes, kill_process_group

CLEAN_IDENTITY = {"GIT_AUTHOR_NAME": "distpar", "GIT_AUTHOR_EMAIL": "distpar@localhost",
                  "GIT_COMMITTER_NAME": "distpar", "GIT_COMMITTER_EMAIL": "distpar@localhost"}
START_GRACE = 60.0  # a run with no journal row younger than this may be starting right now: left alone


@dataclass(frozen=True, slots=True)
class Item:
    """One thing a run left, and what clean does with it."""

    run_id: str
    kind: str  # process, worktree, removal, branch, ref, state-dir, run
    name: str
    action: str  # remove, kill, keep
    reason: str
    path: str = ""  # worktrees: the directory; refs and branches: the full ref name
    save_to: str = ""  # worktrees with uncommitted work: the ref it is saved on before removal

    @property
    def removes(self) -> bool:
        return self.action in ("remove", "kill")


# --- liveness ----------------------------------------------------------------------------------------------


def _started_recently(run_id: str, state_dir: Path, now: float) -> bool:
    """A run with no journal row may be one that is starting this second: its id carries its start time."""
    try:
        t = time.mktime(time.strptime(run_id[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        try:
            t = (state_dir / "runs" / run_id).stat().st_mtime
        except OSError:
            return False
    return now - t < START_GRACE


# --- planning ----------------------------------------------------------------------------------------------


@dataclass
class _Found:
    branches: dict[str, str]  # full ref -> oid
    refs: dict[str, str]
    worktrees: list[tuple[str, str | None]]
    state_dir: Path | None
    pids: list[int]
    removing: Path | None = None  # workspaces moved aside at the run's end whose removal was cut short


def _run_of_ref(ref: str, prefix: str) -> str | None:
    rest = ref[len(prefix):]
    return rest.split("/", 1)[0] if "/" in rest else None


def inventory(repo: Path, state_dir: Path, journal: Journal) -> tuple[dict[str, _Found], dict[str, dict[str, Any]]]:
    """Everything that belongs to some run of ``repo``: by run id; and the journal rows of those runs."""
    found: dict[str, _Found] = {}

    def get(run_id: str) -> _Found:
        return found.setdefault(run_id, _Found({}, {}, [], None, []))

    for ref, oid in gitops.refs(repo, "refs/heads/distpar/").items():
        if (rid := _run_of_ref(ref, "refs/heads/distpar/")) is not None:
            get(rid).branches[ref] = oid
    for ref, oid in gitops.refs(repo, "refs/distpar/").items():
        if (rid := _run_of_ref(ref, "refs/distpar/")) is not None:
            get(rid).refs[ref] = oid
    runs_root = (state_dir / "runs").resolve()
    wt_root = paths.worktrees_base(repo)  # where local runs put their worktrees
    for path, branch in gitops.worktrees(repo)[1:]:  # the first one is the main worktree: never ours
        rid = None
        if branch and branch.startswith("distpar/"):
            rid = _run_of_ref("refs/heads/" + branch, "refs/heads/distpar/")
        p = Path(path).resolve()
        if rid is None and p.is_relative_to(runs_root):
            rid = p.relative_to(runs_root).parts[0]
        if rid is None and p.is_relative_to(wt_root):
            rid = p.relative_to(wt_root).parts[0]
        if rid:
            get(rid).worktrees.append((path, branch))
    if (wt_root / REMOVING).is_dir():
        for d in (wt_root / REMOVING).iterdir():
            if d.is_dir():
                wait_for_removal(d)  # its coordinator may be removing it right now
                try:
                    if any(d.iterdir()):
                        get(d.name).removing = d
                except OSError:  # removed meanwhile
                    pass
    # Local workspaces are repositories of their own (not worktrees of ``repo``): found by where they live.
    if wt_root.is_dir():
        for ws in sorted(wt_root.glob("*/w*")):
            # (pooled ones are ``clean --workspaces``'s)
            if ws.parent.name not in (REMOVING, pool.LOCAL_POOL) and gitops.is_own_repository(ws):
                get(ws.parent.name).worktrees.append((str(ws), gitops.current_branch(ws)))
    rows = {r["id"]: r for r in journal.runs_for_repo(str(repo))}
    for rid in rows:
        get(rid)
    if (state_dir / "runs").is_dir():
        for d in (state_dir / "runs").iterdir():
            # A shared DISTPAR_HOME holds other repositories' runs too: those are cleaned from their repository.
            other = journal.run_exact(d.name)
            if d.is_dir() and (d.name in found or other is None):
                get(d.name).state_dir = d
    for rid, pids in agent_processes().items():
        if rid in found:
            found[rid].pids = pids
    return found, rows


def plan_run(repo: Path, run_id: str, f: _Found, row: dict[str, Any] | None, live: bool, force: bool,
             now: float, state_dir: Path, ok_units: dict[str, str] | None = None) -> list[Item]:
    """The decisions for one run. ``ok_units``: key (as in ref names) -> unit id of the units that ended ok."""
    if live:
        return [Item(run_id, "run", run_id, "keep", f"live: coordinator pid {row['pid'] if row else '?'} is running")]
    if row is None and _started_recently(run_id, state_dir, now):
        return [Item(run_id, "run", run_id, "keep", "no journal row yet and started seconds ago: may be starting")]
    if row is None and f.pids and not force:
        # Agents of a run this journal does not know (another DISTPAR_HOME, say): its coordinator may well be
        # alive elsewhere, so nothing of it is touched without --force.
        return [Item(run_id, "process", f"pid {pid}", "keep", "agent of a run with no journal row here, still "
                     "running: its coordinator may be live; --force kills it") for pid in f.pids] + [
            Item(run_id, "run", run_id, "keep", "its agents are running")]
    gone = row is None or row["state"] == "running"
    why = "no journal row (orphan)" if row is None else ("coordinator gone" if gone else f"run {row['state']}")
    items = [Item(run_id, "process", f"pid {pid}", "kill", f"agent of a run that is not live: {why}")
             for pid in f.pids]
    target = row["target"] if row else None
    target_oid = gitops.try_rev(repo, f"refs/heads/{target}") if target else None
    into = target or "any branch"

    def unmerged(oid: str) -> int:
        """Commits of ``oid`` not in the target (0 when merged)."""
        if target_oid is not None:
            if gitops.is_ancestor(repo, oid, target_oid):
                return 0
            return int(gitops.out(repo, "rev-list", "--count", oid, f"^{target_oid}"))
        # No journal row (or the target is gone): merged means reachable from a branch that is not distpar's.
        holders = gitops.out(repo, "for-each-ref", "--contains", oid, "--format=%(refname)", "refs/heads/").split()
        return 0 if any(not h.startswith("refs/heads/distpar/") for h in holders) else 1

    own_root = (state_dir / "runs" / run_id).resolve()
    wt_own = paths.worktrees_root(repo, run_id)
    checked_out: dict[str, str] = {}  # branch ref -> worktree kept with it checked out
    main_path, main_branch = gitops.worktrees(repo)[0]
    if main_branch:
        checked_out["refs/heads/" + main_branch] = main_path
    for path, branch in f.worktrees:
        p = Path(path)
        if not (p.resolve().is_relative_to(own_root) or p.resolve().is_relative_to(wt_own)):
            items.append(Item(run_id, "worktree", path, "keep", "not created by distpar (outside the run's directory)",
                              path))
            if branch:
                checked_out["refs/heads/" + branch] = path
            continue
        if not p.exists():
            items.append(Item(run_id, "worktree", path, "remove", "its directory is gone (stale entry)", path))
            continue
        dirty = gitops.git(p, "status", "--porcelain", "--untracked-files=all", check=False).stdout.strip()
        if dirty and not force:
            ref = f"refs/distpar/{run_id}/saved/{p.name}-clean"
            items.append(Item(run_id, "worktree", path, "remove",
                              f"{why}; its uncommitted changes are saved on {ref} first", path, ref))
            items.append(Item(run_id, "ref", ref, "keep", "will hold the worktree's uncommitted changes", ref))
        else:
            items.append(Item(run_id, "worktree", path, "remove",
                              why + ("; uncommitted changes discarded (--force)" if dirty else ""), path))
    for kind, refs in (("branch", f.branches), ("ref", f.refs)):
        for ref, oid in sorted(refs.items()):
            name = ref.removeprefix("refs/heads/") if kind == "branch" else ref
            n = unmerged(oid)
            superseded = _superseded(run_id, ref, row, ok_units or {})
            if ref in checked_out:
                items.append(Item(run_id, kind, name, "keep", f"checked out in {checked_out[ref]}", ref))
            elif ref.startswith(f"refs/distpar/{run_id}/preview/"):
                items.append(Item(run_id, kind, name, "remove", "the early conflict check's preview merge (a "
                                  "prediction, never work)", ref))
            elif superseded:
                items.append(Item(run_id, kind, name, "remove", f"superseded: unit {superseded} succeeded later "
                                  f"and the run ended ok (the saved attempt was {oid[:12]})", ref))
            elif n and not force:
                what = "unfinished work saved by distpar" if "/saved/" in ref else f"{n} commit(s)"
                items.append(Item(run_id, kind, name, "keep",
                                  f"holds {what} not merged into {into}; --force removes it", ref))
            else:
                items.append(Item(run_id, kind, name, "remove",
                                  f"not merged into {into}, removed by --force" if n else f"merged into {into}", ref))
    if f.removing is not None:
        items.append(Item(run_id, "removal", str(f.removing), "remove", "workspaces whose removal at the end of "
                          "the run was cut short (their work was saved first)", str(f.removing)))
    if f.state_dir is not None:
        kept = [i for i in items if i.action == "keep"]
        if any(i.kind == "worktree" and Path(i.path).resolve().is_relative_to(f.state_dir.resolve()) for i in kept):
            items.append(Item(run_id, "state-dir", str(f.state_dir), "keep", "holds a worktree that is kept"))
        elif any(i.kind in ("branch", "ref") for i in kept) and not force:
            items.append(Item(run_id, "state-dir", str(f.state_dir), "keep",
                              "logs of a run with unmerged work, kept for resume; --force removes them"))
        else:
            items.append(Item(run_id, "state-dir", str(f.state_dir), "remove", f"logs and scratch files; {why}",
                              str(f.state_dir)))
    return items


def plan_clean(repo: Path, state_dir: Path, journal: Journal, run_id: str | None = None, force: bool = False,
               now: float | None = None) -> list[Item]:
    """What ``clean`` would do, item by item. Changes nothing."""
    repo = Path(repo)
    now = time.time() if now is None else now
    found, rows = inventory(repo, state_dir, journal)
    if run_id is not None:
        row = journal.run(run_id)
        rid = row["id"] if row else run_id
        if rid not in found:
            raise UsageError(f"no run {run_id!r}: nothing of it in {journal.path} or in {repo}")
        if row is not None and run_is_live(journal, row):
            raise UsageError(f"run {rid} is still running (coordinator pid {row['pid']}): nothing to clean")
        if row is not None:
            rows[rid] = row
        found = {rid: found[rid]}
    items: list[Item] = []
    for rid in sorted(found):
        row = rows.get(rid) or journal.run_exact(rid)
        ok_units = {names.key(b["unit_id"]): b["unit_id"] for b in journal.units(rid) if b["state"] == "ok"} \
            if row is not None and row["state"] == "ok" else {}
        items += plan_run(repo, rid, found[rid], row, run_is_live(journal, row), force, now, state_dir, ok_units)
    return items


def _superseded(run_id: str, ref: str, row: dict[str, Any] | None, ok_units: dict[str, str]) -> str:
    """The unit whose later success superseded the work saved on ``ref`` (a run that ended ok), or ""."""
    prefix = f"refs/distpar/{run_id}/saved/"
    if row is None or row["state"] != "ok" or not ref.startswith(prefix):
        return ""
    return ok_units.get(ref[len(prefix):], "")


# --- doing -------------------------------------------------------------------------------------------------


def apply_clean(repo: Path, items: list[Item], journal: Journal | None = None) -> list[tuple[Item, str]]:
    """Carry out the removals of ``items`` in a safe order (agents, worktrees, branches, refs, directories).
    Returns the items that could not be done, with why."""
    failures: list[tuple[Item, str]] = []
    order = ("process", "worktree", "removal", "branch", "ref", "state-dir")
    for kind in order:
        for it in items:
            if it.kind != kind or not it.removes:
                continue
            try:
                why = _apply(repo, it)
            except OSError as exc:
                why = str(exc)
            if why:
                failures.append((it, why))
        if kind == "worktree":
            gitops.worktree_prune(repo)
    if journal is not None:
        for rid in sorted({i.run_id for i in items if i.removes}):
            if journal.run_exact(rid) is not None:
                journal.event(rid, "cleaned", removed=[f"{i.kind} {i.name}" for i in items
                                                        if i.removes and i.run_id == rid])
    return failures


def _apply(repo: Path, it: Item) -> str:
    if it.kind == "process":
        kill_process_group(int(it.name.split()[1]))
        return ""
    if it.kind == "worktree":
        p = Path(it.path)
        own = gitops.is_own_repository(p)
        if it.save_to and p.exists():
            snap = gitops.snapshot(p, f"distpar clean: uncommitted work of {p.name}\n\nDistpar-Run: {it.run_id}\n",
                                   CLEAN_IDENTITY)
            if snap:
                gitops.update_ref(p, it.save_to, snap)
                if own:  # the snapshot is in the workspace's own object store
                    gitops.fetch(repo, p, [f"+{it.save_to}:{it.save_to}"])
        if own and p.exists():  # a local workspace: what never came back is saved, then it goes
            gitops.save_unreturned(repo, p, f"refs/distpar/{it.run_id}/saved/{p.name}-clean")
            shutil.rmtree(p)
            return ""
        if p.exists():
            proc = gitops.git(repo, "worktree", "remove", "--force", "--force", str(p), check=False)
            if proc.returncode != 0 and p.exists():
                return proc.stderr.strip() or "git worktree remove failed"
        return ""
    if it.kind == "branch":
        proc = gitops.git(repo, "update-ref", "-d", it.path, check=False)
        return "" if proc.returncode == 0 else proc.stderr.strip()
    if it.kind == "ref":
        gitops.delete_ref(repo, it.path)
        return ""
    if it.kind in ("state-dir", "removal"):
        shutil.rmtree(it.path, ignore_errors=False)
        if it.kind == "removal":
            with contextlib.suppress(OSError):  # not empty: another run's
                Path(it.path).parent.rmdir()
        return ""
    return f"unknown kind {it.kind}"


def clean_workspaces(repo: Path, dry_run: bool = False) -> list[tuple[str, str, str]]:
    """``distpar clean --workspaces``: remove the workspaces ``--reuse-workspaces`` keeps for ``repo`` on this
    machine. One a run holds is kept; what one holds that is not in the repository (uncommitted work, branches
    that never came back) is saved first on ``refs/distpar/pool/saved/<workspace>-...``. Returns (path, action,
    reason) for each."""
    where = paths.worktrees_base(repo) / pool.LOCAL_POOL
    out: list[tuple[str, str, str]] = []
    for ws in pool.slots(where):
        lease = pool.take(ws)
        if lease is None:
            out.append((str(ws), "keep", "in use by a run"))
            continue
        try:
            if dry_run:
                out.append((str(ws), "would remove", "idle"))
                continue
            try:
                saved = save_left(repo, ws, f"refs/distpar/pool/saved/{ws.name}",
                                  "distpar clean: uncommitted work found in a pooled workspace", CLEAN_IDENTITY)
            except DistparError as exc:  # never removed unsaved
                out.append((str(ws), "keep", f"its work could not be saved: {exc.message}"))
                continue
            shutil.rmtree(ws, ignore_errors=True)
            pool.busy_marker(ws).unlink(missing_ok=True)
            out.append((str(ws), "remove", f"saved on {', '.join(saved)}" if saved else "idle, nothing unsaved"))
        finally:
            pool.release(lease)
    with contextlib.suppress(OSError):
        if not dry_run and not any(where.glob("ws-*[0-9]")):
            shutil.rmtree(where)
    return out
