"""``--on-verify-fail fix``: a fix unit runs the run's agent on the failing integration head, on this machine in
a workspace of its own, and commits on ``distpar/<run>/fix/<n>``, which stays (the gate then runs again)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distpar.backends import make_backend
from distpar.backends.base import RunContext
from distpar.coordinator import options as run_options
from distpar.coordinator.options import RunOptions
from distpar.coordinator.removal import cleanup
from distpar.coordinator.site import RunEvents, RunSite
from distpar.core.errors import DistparError
from distpar.core.model import Identity, Source, UnitReply, UnitResult, UnitSpec, UnitStatus, WorkerSettings

FIX_WAIT = 30.0  # past the agent's own timeout, for its worker to hand back


@dataclass(frozen=True)
class FixUnit:
    """What a fix unit is run with: the run's site, options and identity, and its own worker and dispatch."""

    site: RunSite
    options: RunOptions
    identity: Identity
    forwarded: dict[str, str]
    include: tuple[str, ...]
    plan_text: str
    worker: int  # a workspace of its own, after the run's workers'
    dispatch: int


def run_fix(fix: FixUnit, head: str, prompt: str, n: int, spent: float, events: RunEvents,
            on_event: Callable[[str, dict[str, Any]], None],
            fetch_back: Callable[[UnitReply, Source], None]) -> tuple[str | None, dict[str, Any], list[str]]:
    """Fix unit ``n`` on ``head``: its commit (None when it failed, changed nothing or the budget is spent), how it
    ended (journaled as ``verify_fix``, reported) and the refs its uncommitted work was saved on."""
    site, options = fix.site, fix.options
    uid, branch = f"fix-{n}", f"distpar/{site.run_id}/fix/{n}"
    if options.budget_usd is not None and spent >= options.budget_usd:
        end: dict[str, Any] = {"unit": uid, "status": "skipped", "error": "the run's budget is spent"}
        events.publish("verify_fix", None, uid, **{k: v for k, v in end.items() if k != "unit"})
        return None, end, []
    backend = make_backend("local", {})
    ctx = RunContext(site.run_id, site.repo, site.run_dir, 1, (options.agent,), on_event)
    ws = backend.workspace(ctx, fix.worker)
    settings = WorkerSettings(
        run_id=site.run_id, workspace=ws, log_dir=backend.log_dir(ctx), identity=fix.identity, env=fix.forwarded,
        return_bundle=False, include=fix.include, include_data={}, plan_text=fix.plan_text,
        options=run_options.worker_options(options))
    spec = UnitSpec(uid=uid, description="fix the merged tree's check", prompt=prompt, agent=options.agent,
                    timeout=options.timeout, worker=fix.worker, dispatch=fix.dispatch, branch=branch, base=head,
                    source=Source("worktree", str(site.repo)))
    events.publish("verify_fix_started", fix.worker, uid, base=head, branch=branch)
    backend.start(ctx)
    saved: list[str] = []
    try:
        reply = backend.submit(settings, spec).result(timeout=options.timeout + FIX_WAIT)
        fetch_back(reply, spec.source)  # the workspace is a repository of its own: its branch comes back
        r = reply.result
        saved += [reply.saved_ref] if reply.saved_ref else []
    except Exception as exc:  # the fix is one more try: the failing gate stands
        msg = exc.message if isinstance(exc, DistparError) else f"{type(exc).__name__}: {exc}"
        r = UnitResult(uid, fix.worker, UnitStatus.FAILED, error=msg)
    finally:
        backend.close()
        backend.wait_closed()
        saved += cleanup(site, events.journal, [Path(ws)])
    commit = r.commit if r.status.ok and r.changed and r.commit else None
    end = {"unit": uid, "status": r.status.value, "branch": branch, "commit": commit, "base": head,
           "duration": round(r.duration, 3), "error": r.error or ("" if commit else "the agent changed nothing"),
           "cost_usd": r.outcome.cost_usd if r.outcome else None, "log_path": r.log_path}
    events.publish("verify_fix", fix.worker, uid, **{k: v for k, v in end.items() if k != "unit"})
    return commit, end, saved
