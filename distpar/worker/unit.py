"""One unit's life in a worker, identical on every backend.

``run_unit(settings, spec)`` takes the worker's workspace (the run's own, or with ``--reuse-workspaces`` one
from this machine's pool: ``distpar.infra.pool``), gets the code into it (a repository of its own borrowing a
local repository's objects, a bundle, or a git remote), puts the unit's branch at ``spec.base``, runs the agent
(``retry.run_agent``), judges its work (the user's verify command, submodules), commits it or saves it
(``commit.record``) and returns a ``UnitReply``. ``settings`` are the worker's, the same for each of its units:
the local backend hands the same object to its worker thread, Ray actors and ``python -m distpar.worker
--serve`` (``serve``) keep them.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from distpar.core import model
from distpar.core.masking import mask
from distpar.core.model import AgentOutcome, UnitReply, UnitResult, UnitSpec, UnitStatus, WorkerSettings
from distpar.infra import gitops, pool, workspace
from distpar.worker import commit, retry
from distpar.worker.common import Emit, UnitRun, node_name, safe_name, tail

MAX_PATHS = 10_000  # paths a reply names at most (more: the coordinator asks git)
STATUS = {"success": UnitStatus.OK, "timeout": UnitStatus.TIMEOUT, "interrupted": UnitStatus.INTERRUPTED}


def run_unit(settings: WorkerSettings, spec: UnitSpec, cancel: threading.Event | None = None,
             emit: Emit | None = None) -> UnitReply:
    cancel = cancel or threading.Event()
    t0 = time.time()
    log_dir = Path(settings.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = settings.identity.env()
    ws, lease = workspace_for(settings, spec)
    saved = _prepare(settings, spec, ws, env)
    ready = _ready_workspace(settings, spec, ws, log_dir, cancel)
    setup_now, setup_failed, ports = ready.ran, ready.failed, ready.ports
    env = {**env, "DISTPAR_PORT_BASE": str(ports), "DISTPAR_PORT_COUNT": str(workspace.PORTS_PER_WORKER),
           **_plan_file(settings, log_dir)}
    u = UnitRun(settings, spec, ws, log_dir, env, cancel, emit, secrets=tuple(settings.env.values()))
    if cancel.is_set() or setup_failed:
        why = ("the run was interrupted" if cancel.is_set() else
               f"this worker's workspace is not usable: {setup_failed.describe()}" if setup_failed else "")
        result = UnitResult(spec.uid, spec.worker, UnitStatus.INTERRUPTED if cancel.is_set() else UnitStatus.FAILED,
                            error=why, node=node_name(), attempt=spec.attempt,
                            log_tail=setup_failed.tail if setup_failed else "")
    else:
        result = _run(u)
    if saved and not ready.first:  # said in ``workspace_ready`` for a worker's first unit; here for a later one
        result = replace(result, notes=(*result.notes, (
            f"uncommitted work was found in the workspace before this unit started (something an earlier unit "
            f"left running wrote it); it is saved on branch {saved.removeprefix('refs/heads/')} in {ws}, not "
            f"carried into this unit")))
    reply = _hand_back(u, result, setup_now)
    if ready.first:  # the worker's first unit in this workspace: how it was made ready, and how long it took
        how, reason = (lease.how, lease.reason) if lease else ("new", "")
        if saved:
            reason = "; ".join(filter(None, [reason, f"uncommitted work found in it was saved on {saved}"]))
        reply = replace(reply, workspace={"how": how, "reason": reason, "path": str(ws), "setup": ready.setup,
                                          "setup_seconds": round(setup_now.seconds, 3) if setup_now else 0.0,
                                          "seconds": round(ready.at - t0, 3)})
    return reply


_readied: set[tuple[str, int, str]] = set()  # (run, worker, workspace) made ready by this process
_leases: dict[tuple[str, int], pool.Lease] = {}  # (run, worker) -> the workspace it took from the pool
_pruned: set[tuple[str, str]] = set()  # (run, pool) pruned by this process


def workspace_for(settings: WorkerSettings, spec: UnitSpec) -> tuple[Path, pool.Lease | None]:
    """The worker's workspace: the run's own (``settings.workspace``) or, with ``--reuse-workspaces``, one taken
    from this machine's pool for the whole run (the lock is given back by the coordinator or when this process
    ends). Idle workspaces beyond the caps are removed in the background."""
    if not settings.pool:
        return Path(settings.workspace), None
    key = (settings.run_id, spec.worker)
    lease = _leases.get(key)
    if lease is None or not lease.active:
        where = Path(settings.pool)
        lease = _leases[key] = pool.acquire(where, settings.run_id, lambda p: _unusable(p, spec))
        if (settings.run_id, str(where)) not in _pruned:
            _pruned.add((settings.run_id, str(where)))
            o = settings.options
            threading.Thread(target=pool.prune, args=(where, pool.Caps(o.pool_size, o.pool_max_age,
                                                                       o.pool_max_size)),
                             name="distpar-pool-prune", daemon=True).start()
    return lease.path, lease


def _unusable(ws: Path, spec: UnitSpec) -> str:
    """Why a pooled workspace cannot be reused ('' when it can): it must be a sound repository that was fully
    prepared once (and, borrowing the user's objects, still reach them)."""
    if not (ws / ".git").is_dir():
        return "is not a repository"
    if not workspace.workspace_ready(ws) or workspace.load_state(ws) is None:
        return "was never fully prepared"
    checks = [("rev-parse", "--verify", "--quiet", "HEAD^{commit}"), ("status", "--porcelain")]
    if spec.source.kind == "worktree":
        checks.append(("cat-file", "-e", f"{spec.base}^{{commit}}"))
    for args in checks:
        proc = gitops.git(ws, *args, check=False)
        if proc.returncode != 0:
            return f"is damaged (git {args[0]}: {(proc.stderr.strip().splitlines() or ['failed'])[-1][:200]})"
    return ""


def _run(u: UnitRun) -> UnitResult:
    """The agent's tries, then the verdict on its work, then its commit (or its work saved on a ref)."""
    u.prompt_file.write_text(u.spec.prompt)
    base = u.spec.base  # _prepare just checked it out: a commit id needs no asking
    u.before = base if gitops.FULL_ID.fullmatch(base) else gitops.out(u.ws, "rev-parse", "HEAD")
    outcomes, tries, proc, started = retry.run_agent(u)
    outcome = model.totals(outcomes)
    status = STATUS.get(outcome.result_class, UnitStatus.FAILED)
    after = u.before
    if u.wrecked:
        status = UnitStatus.FAILED
        outcome = replace(outcome, result_class="workspace_destroyed", ok=False, transient=False,
                          message=u.wrecked + commit.salvage(u, _worktree_source(u)))
    else:
        try:
            status, outcome = _judge(u, status, outcome)
            status, outcome = commit.record(u, status, outcome)
            after = gitops.head_commit(u.ws)
            if status.ok:
                u.notes += commit.large_files(u, after)
        except Exception as exc:
            # A failure after the agent ran is not the transport's: the unit fails once, saying why, and its
            # work stays where it is (the next unit's preparation saves what is uncommitted on a ref).
            status = UnitStatus.FAILED
            outcome = replace(outcome, result_class="error", ok=False, transient=False,
                              message=f"distpar could not record the unit's work after the agent ran: "
                                      f"{type(exc).__name__}: {exc}")
            after = gitops.try_rev(u.ws, "HEAD") or u.before
    # What the agent printed reaches the message (a parser's last line): bounded like every tail.
    outcome = replace(outcome, message=model.bounded_tail(outcome.message))
    if u.notes:
        u.log("".join(f"--- distpar: note: {n}\n" for n in u.notes))
    return UnitResult(
        unit_id=u.spec.uid,
        worker=u.spec.worker,
        status=status,
        exit_code=proc.exit_code if proc else None,
        started=started,
        ended=(proc.ended if proc else None) or time.time(),
        commit=after,
        changed=after != u.before,
        outcome=outcome,
        log_path=str(u.log_path),
        log_tail=tail(u.log_path, u.secrets),
        error="" if status.ok else model.bounded_tail(mask(outcome.message or outcome.result_class, u.secrets)),
        node=node_name(),
        attempt=u.spec.attempt,
        tries=tries,
        try_classes=tuple(o.result_class for o in outcomes[:tries]),
        notes=tuple(mask(n, u.secrets) for n in u.notes),
    )


def _judge(u: UnitRun, status: UnitStatus, outcome: AgentOutcome) -> tuple[UnitStatus, AgentOutcome]:
    """The user's gate (a unit whose check fails is failed, its work saved) and the submodules (never ok with
    work left out of the commit)."""
    verify = u.opts.verify
    if status.ok and verify:
        gate = workspace.run_hook("verify", verify, u.ws, {**os.environ, **u.env, **u.settings.env}, u.log_path,
                                  u.secrets, u.cancel, timeout=u.spec.timeout)
        if not gate.ok:
            status = UnitStatus.FAILED
            outcome = replace(outcome, result_class="verify_failed", ok=False, message=gate.describe())
    sub_error = commit.submodule_edits(u.ws, u.log_dir, u.name, u.before)
    if sub_error and status.ok:
        status = UnitStatus.FAILED
        outcome = replace(outcome, result_class="submodule_edit", ok=False, message=sub_error)
    elif sub_error:
        u.notes.append(sub_error)
    return status, outcome


def _hand_back(u: UnitRun, result: UnitResult, setup_now: workspace.HookResult | None) -> UnitReply:
    """The reply: the branch's head, as a bundle (remote workers) or pushed (a git remote as the source)."""
    settings, spec, ws = u.settings, u.spec, u.ws
    if u.wrecked:  # nothing to hand back from a destroyed workspace: the branch is where the unit started
        return UnitReply(
            run_id=settings.run_id, worker=spec.worker, dispatch=spec.dispatch, branch=spec.branch, base=spec.base,
            head=u.before, result=result, node=node_name(), bundle=None, saved_ref=u.saved,
            interrupted=u.cancel.is_set(), setup=setup_now.to_dict() if setup_now else None,
        )
    head = result.commit or gitops.out(ws, "rev-parse", "HEAD")  # _run read it after recording the work
    bundle = _return_bundle(settings, spec, ws, u.saved) if settings.return_bundle else None
    if spec.source.kind == "worktree":
        bundle = str(ws)  # a repository of its own on this machine: the coordinator fetches from it
    if spec.source.kind == "url":  # hand the branch (and saved work) back by pushing it
        gitops.git(ws, "push", "--quiet", "--force", spec.source.location, f"HEAD:refs/heads/{spec.branch}",
                   *([f"{u.saved}:{u.saved}"] if u.saved else []))
    files = u.changed_files if result.status.ok else None  # what the commit changed, as its status said
    return UnitReply(
        run_id=settings.run_id, worker=spec.worker, dispatch=spec.dispatch, branch=spec.branch, base=spec.base,
        head=head, result=result, node=node_name(), bundle=bundle, saved_ref=u.saved,
        interrupted=u.cancel.is_set(), setup=setup_now.to_dict() if setup_now else None,
        paths=tuple(files) if files is not None and len(files) <= MAX_PATHS else None,
    )


def _worktree_source(u: UnitRun) -> str | None:
    return u.spec.source.location if u.spec.source.kind == "worktree" else None


def _plan_file(settings: WorkerSettings, log_dir: Path) -> dict[str, str]:
    """The plan travels with the work: prompts that say "per the plan at ..." can read it."""
    if not settings.plan_text:
        return {}
    plan_file = log_dir / "plan.md"
    if not plan_file.exists() or plan_file.read_text() != settings.plan_text:
        plan_file.write_text(settings.plan_text)
    return {"DISTPAR_PLAN_FILE": str(plan_file.resolve())}


@dataclass
class _Ready:
    ran: workspace.HookResult | None  # the setup, when it ran now
    failed: workspace.HookResult | None  # the setup, when it failed (now or before)
    ports: int  # the first of the worker's ports
    first: bool  # made ready now: the worker's first unit in this workspace in this run
    setup: str  # "ran", "kept" (a reused workspace's setup still holds) or "none"
    at: float  # when it was ready


def _ready_workspace(settings: WorkerSettings, spec: UnitSpec, ws: Path, log_dir: Path,
                     cancel: threading.Event) -> _Ready:
    """Once per workspace, run and worker process (the worker's first unit there; a resumed run's too): the
    included files, a block of ports, the setup command. A workspace an earlier run left (``--reuse-workspaces``)
    keeps its setup when the command and the ``--setup-key`` files (their blobs at the unit's base) are those it
    last ran with, and that run succeeded."""
    state = workspace.load_state(ws)
    if state is not None and (settings.run_id, spec.worker, str(ws)) in _readied:
        setup_state = state.get("setup")
        failed = workspace.HookResult.from_dict(setup_state) \
            if isinstance(setup_state, dict) and not setup_state.get("ok") else None
        return _Ready(None, failed, int(state["ports"]), False, "kept", time.time())  # type: ignore[call-overload]
    source = spec.source.location if spec.source.kind == "worktree" else None
    copied = workspace.populate(ws, source, settings.include, settings.include_data)
    ports = workspace.free_port_block(spec.worker)
    setup = settings.options.setup
    key = _setup_key(ws, setup, settings.options.setup_key)
    before = state.get("setup") if state else None
    kept = isinstance(before, dict) and before.get("ok") and state is not None and state.get("setup_key") == key
    ran: workspace.HookResult | None = None
    if setup and not kept:
        env = {**os.environ, **settings.env, "DISTPAR_PORT_BASE": str(ports),
               "DISTPAR_PORT_COUNT": str(workspace.PORTS_PER_WORKER), "DISTPAR_WORKTREE": str(ws)}
        ran = workspace.run_hook("setup", setup, ws, env, log_dir / f"setup-w{spec.worker + 1}.log",
                                 tuple(settings.env.values()), cancel, timeout=settings.options.setup_timeout)
    last = ran.to_dict() if ran else (before if kept else None)
    workspace.save_state(ws, {"run": settings.run_id, "ports": ports, "included": copied, "setup": last,
                              "setup_key": key})
    failed = ran if ran and not ran.ok else None
    _readied.add((settings.run_id, spec.worker, str(ws)))
    return _Ready(ran, failed, ports, True, "ran" if ran else "kept" if setup else "none", time.time())


def _setup_key(ws: Path, command: str | None, files: tuple[str, ...]) -> dict[str, str] | None:
    """What a workspace's setup depends on: the command and the blob of each key file at HEAD (the unit's base;
    ``absent`` for a file it lacks). None without a setup."""
    if not command:
        return None
    key = {"command": command}
    listed = gitops.out(ws, "ls-tree", "-z", "--full-tree", "HEAD", "--", *files) if files else ""
    blobs = {entry.split("\t", 1)[1]: entry.split("\t", 1)[0].split()[2] for entry in listed.split("\0") if entry}
    for f in files:
        key[f"file:{f}"] = blobs.get(f.strip("/"), "absent")
    return key


def _mark(ws: Path, ready: bool) -> None:
    marker = gitops.git_dir(ws) / workspace.READY
    if ready:
        marker.touch()
    else:
        marker.unlink(missing_ok=True)


def _prepare(settings: WorkerSettings, spec: UnitSpec, ws: Path, env: dict[str, str]) -> str | None:
    """Check out ``spec.branch`` at ``spec.base`` in ``ws``, getting the code as the source says. A workspace
    is kept for the worker's next units (and, pooled, for later runs): those only move it to their own branch and
    base, uncommitted work found in it saved first on a branch (returns it)."""
    kind, location = spec.source.kind, spec.source.location
    hooks = settings.options.hooks
    fresh = not (ws / ".git").exists()
    if kind == "worktree":
        if fresh:
            ws.parent.mkdir(parents=True, exist_ok=True)
            gitops.own_repository(location, ws, spec.branch, spec.base, hooks)
            gitops.submodules_like(location, ws)
            _mark(ws, True)
            return None
    elif kind in ("bundle", "url"):
        if fresh:
            ws.mkdir(parents=True, exist_ok=True)
            gitops.git(ws, "init", "--quiet")
        refspecs = ["+refs/*:refs/distpar-in/*"] if kind == "bundle" else [
            "+refs/heads/*:refs/remotes/origin/*", "+refs/distpar/*:refs/distpar/*"]
        for src in filter(None, (location, *spec.source.increments)):  # no location: the workspace has the base
            # A workspace kept from an earlier unit or run stores only what it lacks of a bundle (often the run's
            # whole history); git fetch would store all of it again beside what it has.
            if kind == "bundle" and not fresh and gitops.unbundle(
                    ws, src, lambda ref: f"refs/distpar-in/{ref[5:]}" if ref.startswith("refs/") else None,
                    loose=True) is not None:
                continue
            gitops.git(ws, "fetch", "--quiet", "--no-tags", "--force", src, *refspecs)
        if fresh:
            gitops.git(ws, "checkout", "--quiet", "-B", spec.branch, spec.base, env=gitops.hooks_env(env, hooks))
            _mark(ws, True)
            return None
    else:
        raise ValueError(f"unknown source kind {kind!r}")
    # A workspace from an earlier unit (or attempt) of this worker: move it to the new branch and base,
    # saving anything uncommitted first so that nothing is ever lost.
    # A branch: the coordinator saves a local workspace's branches that never came back; a remote one keeps it.
    saved = None
    leftover = gitops.out(ws, "status", "--porcelain")  # untracked files too (not ignored ones)
    if workspace.workspace_ready(ws) and leftover:
        snap = gitops.snapshot(ws, f"distpar: uncommitted work found before unit {spec.uid}", env)
        if snap:
            saved = f"refs/heads/distpar-kept/{settings.run_id}-w{spec.worker + 1}-{spec.dispatch}"
            gitops.update_ref(ws, saved, snap)
    _mark(ws, False)
    gitops.git(ws, "checkout", "--quiet", "--force", "-B", spec.branch, spec.base, env=gitops.hooks_env(env, hooks))
    if leftover:  # untracked files: gone (saved above); ignored ones stay
        gitops.git(ws, "clean", "-fdq")
    _mark(ws, True)
    return saved


def _return_bundle(settings: WorkerSettings, spec: UnitSpec, ws: Path, saved_ref: str | None) -> str | None:
    where = Path(settings.workspace).parent  # the run's directory (a pooled workspace lives elsewhere): what is
    where.mkdir(parents=True, exist_ok=True)  # left there when the run ends is work that never came back
    path = where / f"{safe_name(spec.branch)}-{spec.dispatch}-{spec.attempt}.bundle"
    refs = [f"refs/heads/{spec.branch}", *([saved_ref] if saved_ref else [])]
    tips = {ref: gitops.ref_tip(ws, ref) for ref in refs}
    if not all(tips.values()) or not gitops.FULL_ID.fullmatch(spec.base):  # let git say what is wrong
        return str(path) if gitops.bundle_create(ws, path, [refs[0], f"^{spec.base}", *refs[1:]]) else None
    return str(path) if gitops.bundle_of(ws, path, tips, [spec.base]) else None  # type: ignore[arg-type]
