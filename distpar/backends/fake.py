"""An in-process backend whose workers are scripted, for tests of the coordinator (like fabric's ``MockRemote``).

No agent and no worker run: each dispatch of a unit does what the script says for it, in a thread of this
process, with the coordinator's own repository. A unit that succeeds gets a real commit on its branch (from its
base, written with git plumbing: no worktree), so dependency merges and the final landing work as on any other
backend::

    backend = FakeBackend({"a": commit({"a.txt": "1"}), "b": [lost("node gone"), commit()], "c": hang()})

A unit's entry is one act (every dispatch does it) or a list (dispatch n does act n; the last one repeats); a
unit with no entry succeeds with ``commit()``. ``dispatches`` and ``cancels`` record what the coordinator asked.
With no script (``--backend fake``) every unit succeeds with a commit of one small file.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from distpar.backends.base import Backend, RunContext
from distpar.core import names
from distpar.core.errors import BackendError
from distpar.core.model import AgentOutcome, UnitReply, UnitResult, UnitSpec, UnitStatus, WorkerSettings
from distpar.infra import gitops

NODE = "fake"
LIMIT = 60.0  # seconds a scripted wait lasts at most: a unit nobody cancels fails (once) instead of hanging


@dataclass(frozen=True, slots=True)
class Act:
    """What one dispatch of a unit does: build it with ``commit``, ``garbled``, ``fail``, ``lost``, ``hang`` or
    ``rate_limited``."""

    kind: str  # commit, garbled, fail, lost, hang, rate_limited
    files: Mapping[str, str] = field(default_factory=dict)  # commit: path -> text (empty: one file of its own)
    message: str = ""
    after: float = 0.0  # seconds before it happens (a cancel meanwhile ends the unit as interrupted)
    until: tuple[str, ...] = ()  # commit: only once these units' dispatches ended (in this backend)
    cost_usd: float | None = None
    retry_after: float | None = None  # rate_limited: what the provider said


def commit(files: Mapping[str, str] | None = None, *, after: float = 0.0, until: Sequence[str] = (),
           cost_usd: float | None = 0.01) -> Act:
    """The agent succeeds and its work is committed on the unit's branch."""
    return Act("commit", dict(files or {}), "done", after, tuple(until), cost_usd)


def garbled(files: Mapping[str, str] | None = None, *, after: float = 0.0, until: Sequence[str] = ()) -> Act:
    """Like ``commit``, but the work comes back in a bundle git cannot read (a transfer that broke on the way):
    the coordinator's own git fails when it fetches it."""
    return Act("garbled", dict(files or {}), "done", after, tuple(until), 0.01)


def fail(message: str = "the agent failed", *, after: float = 0.0, cost_usd: float | None = 0.01) -> Act:
    """The agent ran and failed (a deterministic failure: the coordinator does not retry it)."""
    return Act("fail", message=message, after=after, cost_usd=cost_usd)


def lost(message: str = "the connection to the worker was lost", *, after: float = 0.0) -> Act:
    """The transport fails after ``after`` seconds: the unit's future raises BackendError (retried)."""
    return Act("lost", message=message, after=after)


def hang() -> Act:
    """Runs until the coordinator cancels (then ends interrupted, as a worker told to stop does)."""
    return Act("hang", message="the run was interrupted")


def rate_limited(retry_after: float | None = 0.1, *, message: str = "429 rate limited") -> Act:
    """The agent was refused by its provider's rate limit (the coordinator requeues the unit)."""
    return Act("rate_limited", message=message, retry_after=retry_after, cost_usd=None)


@dataclass(frozen=True, slots=True)
class Dispatch:
    uid: str
    worker: int
    attempt: int
    base: str
    act: str


Script = Mapping[str, "Act | Sequence[Act]"]


class FakeBackend(Backend):
    """Scripted workers (see the module's docstring); ``limit`` bounds every scripted wait, in seconds."""

    name = "fake"
    remote = False

    def __init__(self, script: Script | None = None, limit: float = LIMIT) -> None:
        self.script = dict(script or {})
        self.limit = limit
        for uid, acts in self.script.items():
            if not isinstance(acts, Act) and (not acts or not all(isinstance(a, Act) for a in acts)):
                raise TypeError(f"script[{uid!r}]: an Act or a non-empty list of Acts, not {acts!r}")
        self.dispatches: list[Dispatch] = []
        self.cancels = 0
        self._ended: set[str] = set()
        self._changed = threading.Condition()
        self._cancel = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._ctx: RunContext | None = None

    # --- the contract ----------------------------------------------------------------------------------

    def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._pool = ThreadPoolExecutor(max_workers=max(1, ctx.workers), thread_name_prefix="distpar-fake-worker")

    def submit(self, settings: WorkerSettings, spec: UnitSpec) -> Future[UnitReply]:
        if self._pool is None:
            raise BackendError("the fake backend was not started")
        uid = spec.uid
        with self._changed:
            n = sum(1 for d in self.dispatches if d.uid == uid)
            act = self._act(uid, n)
            self.dispatches.append(Dispatch(uid, spec.worker, spec.attempt, spec.base, act.kind))
        return self._pool.submit(self._run, settings, spec, act)

    def cancel(self) -> None:
        with self._changed:
            self.cancels += 1
            self._cancel.set()
            self._changed.notify_all()

    def close(self) -> None:
        if self._pool is not None:
            with self._changed:  # what still waits ends (not counted in ``cancels``: only the run's own)
                self._cancel.set()
                self._changed.notify_all()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # --- one dispatch ------------------------------------------------------------------------------------

    def _act(self, uid: str, n: int) -> Act:
        acts = self.script.get(uid, commit())
        if isinstance(acts, Act):
            return acts
        return acts[min(n, len(acts) - 1)]

    def _run(self, settings: WorkerSettings, spec: UnitSpec, act: Act) -> UnitReply:
        uid = spec.uid
        try:
            return self._do(settings, spec, act, uid)
        finally:
            with self._changed:
                self._ended.add(uid)
                self._changed.notify_all()

    def _do(self, settings: WorkerSettings, spec: UnitSpec, act: Act, uid: str) -> UnitReply:
        started = time.time()
        done = functools.partial(self._result, settings.run_id, spec)
        repo = self._repo(spec)
        gitops.update_ref(repo, f"refs/heads/{spec.branch}", spec.base)  # the unit's branch, at its base
        if self._ctx is not None and self._ctx.events is not None:
            self._ctx.events("unit_started", {"unit": uid, "worker": spec.worker, "attempt": spec.attempt,
                                              "node": NODE, "at": started})
        waited = self._wait(act)
        if waited is None:  # failed, not lost: a transport error would be retried, and wait as long again
            why = (f"the fake backend waited {self.limit:g}s: a {act.kind} nobody cancelled"
                   + (f", or units {list(act.until)} that never ended" if act.until else ""))
            return done(UnitStatus.FAILED, started, spec.base, why, AgentOutcome("error", False, why),
                                exit_code=1)
        if not waited or act.kind == "hang":
            return done(UnitStatus.INTERRUPTED, started, spec.base, "the run was interrupted",
                                AgentOutcome("interrupted", False, "run interrupted"), interrupted=True)
        if act.kind == "lost":
            raise BackendError(act.message)
        if act.kind == "fail":
            return done(UnitStatus.FAILED, started, spec.base, act.message,
                                AgentOutcome("error", False, act.message, cost_usd=act.cost_usd), exit_code=1)
        if act.kind == "rate_limited":
            outcome = AgentOutcome("api_error", False, act.message, transient=True, rate_limited=True,
                                   retry_after=act.retry_after)
            return done(UnitStatus.FAILED, started, spec.base, act.message, outcome, exit_code=1)
        head = self._commit(repo, settings, spec, uid, act.files)
        gitops.update_ref(repo, f"refs/heads/{spec.branch}", head)
        bundle = None
        if act.kind == "garbled":
            bundle = str(Path(settings.log_dir) / f"{names.key(uid)}-{spec.dispatch}.bundle")
            Path(bundle).parent.mkdir(parents=True, exist_ok=True)
            Path(bundle).write_text("# v2 git bundle\nnot a bundle at all\n")
        return done(UnitStatus.OK, started, head, "", AgentOutcome("success", True, act.message,
                                                                                  cost_usd=act.cost_usd), bundle=bundle)

    def _wait(self, act: Act) -> bool | None:
        """Until ``act.after`` passed and its ``until`` units ended (``hang``: until cancelled): True; False once
        cancelled; None after ``limit`` seconds (so a test that forgot to cancel fails instead of hanging)."""
        t0 = time.time()
        with self._changed:
            while not self._cancel.is_set():
                elapsed = time.time() - t0
                if elapsed >= self.limit:
                    return None
                if act.kind != "hang" and elapsed >= act.after and set(act.until) <= self._ended:
                    return True
                left = act.after - elapsed if act.kind != "hang" and elapsed < act.after else self.limit - elapsed
                self._changed.wait(max(0.01, left))
            return False

    def _repo(self, spec: UnitSpec) -> str:
        if spec.source.kind == "worktree":
            return spec.source.location
        if self._ctx is not None:
            return str(self._ctx.repo)
        raise BackendError(f"the fake backend cannot reach the repository of a {spec.source.kind} source")

    def _commit(self, repo: str, settings: WorkerSettings, spec: UnitSpec, uid: str, files: Mapping[str, str]) -> str:
        """A commit of ``files`` on top of ``spec.base``, made without a worktree (a private index)."""
        files = files or {f"fake/{names.key(uid)}.txt": f"unit {uid}, attempt {spec.attempt}\n"}
        env = settings.identity.env()
        fd, index = tempfile.mkstemp(prefix="distpar-fake-index-")
        os.close(fd)
        os.unlink(index)  # git wants to create it itself
        try:
            ienv = {**env, "GIT_INDEX_FILE": index}
            gitops.git(repo, "read-tree", spec.base, env=ienv)
            for path, text in files.items():
                blob = gitops.git(repo, "hash-object", "-w", "--stdin", input=text).stdout.strip()
                gitops.git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=ienv)
            tree = gitops.out(repo, "write-tree", env=ienv)
        finally:
            if os.path.exists(index):
                os.unlink(index)
        msg = f"distpar: unit {uid} (fake backend)\n\nDistpar-Run: {settings.run_id}\n"
        return gitops.out(repo, "commit-tree", tree, "-p", spec.base, "-m", msg, env=env)

    def _result(self, run_id: str, spec: UnitSpec, status: UnitStatus, started: float, head: str, error: str,
                outcome: AgentOutcome, exit_code: int | None = 0, interrupted: bool = False,
                bundle: str | None = None) -> UnitReply:
        uid = spec.uid
        r = UnitResult(uid, spec.worker, status, exit_code=exit_code, started=started, ended=time.time(),
                        commit=head, changed=head != spec.base, outcome=outcome, error=error, node=NODE,
                        attempt=spec.attempt, try_classes=(outcome.result_class,))
        return UnitReply(run_id, spec.worker, spec.dispatch, spec.branch, spec.base, head, r, node=NODE,
                         bundle=bundle, interrupted=interrupted)

