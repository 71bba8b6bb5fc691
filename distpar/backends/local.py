"""The local backend: each segment runs in a thread of this process, its agent in a child process group,
in a worktree of the user's repository (no copy of the code is made)."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from distpar.backends.base import Backend, RunContext
from distpar.model import SegmentResult, SegmentSpec
from distpar.worker import run_segment


class LocalBackend(Backend):
    name = "local"
    remote = False

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._cancel = threading.Event()

    def start(self, ctx: RunContext) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, ctx.workers), thread_name_prefix="distpar-stream")

    def submit(self, spec: SegmentSpec) -> Future[SegmentResult]:
        assert self._pool is not None, "start() first"
        return self._pool.submit(run_segment, spec, self._cancel)

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        if self._pool is not None:
            self._cancel.set()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
