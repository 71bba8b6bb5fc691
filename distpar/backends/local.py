"""The local backend: each worker is a thread of this process with a workspace it keeps for the whole run, a
repository of its own that borrows the user's object store (no copy of the code is made, no remote points back;
the coordinator fetches each unit's branch from it); its agents run in child process groups."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from distpar.backends.base import Backend, RunContext
from distpar.core.model import UnitReply, UnitSpec, WorkerSettings
from distpar.worker.unit import run_unit


class LocalBackend(Backend):
    name = "local"
    remote = False

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._cancel = threading.Event()
        self._ctx: RunContext | None = None
        self._settings: dict[int, WorkerSettings] = {}  # worker -> its settings: one object for all its units

    def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._pool = ThreadPoolExecutor(max_workers=max(1, ctx.workers), thread_name_prefix="distpar-worker")

    def submit(self, settings: WorkerSettings, spec: UnitSpec) -> Future[UnitReply]:
        assert self._pool is not None, "start() first"
        events = self._ctx.events if self._ctx else None
        settings = self._settings.setdefault(spec.worker, settings)
        return self._pool.submit(run_unit, settings, spec, self._cancel, events)

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        if self._pool is not None:
            self._cancel.set()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
