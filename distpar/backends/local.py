"""The local backend: each worker is a thread of this process with a worktree of the user's repository that it
keeps for the whole run (no copy of the code is made); its agents run in child process groups."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from distpar.backends.base import Backend, RunContext
from distpar.core.model import SegmentResult, SegmentSpec
from distpar.worker.worker import run_segment


class LocalBackend(Backend):
    name = "local"
    remote = False

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._cancel = threading.Event()
        self._ctx: RunContext | None = None

    def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._pool = ThreadPoolExecutor(max_workers=max(1, ctx.workers), thread_name_prefix="distpar-stream")

    def submit(self, spec: SegmentSpec) -> Future[SegmentResult]:
        assert self._pool is not None, "start() first"
        events = self._ctx.events if self._ctx else None
        return self._pool.submit(run_segment, spec, self._cancel, events)

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        if self._pool is not None:
            self._cancel.set()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
