"""7. The tail: from the last unit's end to the run's end, by plan size (issue 23).

Plans of N zero-second independent units (the fake agent writes one file each) on W workers, local backend, a
2-file repository. Each run is timed through hooks the benchmark puts around the coordinator's steps (nothing
in distpar changes for it): the backend's close, the wait for early conflict checks, the plan-order merge, the
landing, the cleanup, the report (which deletes the run's branches) and the journal's end of run. The tail is
split into those parts, and the git processes each part started are counted. ``Runner.run`` returning is the
run's end (the report is printed then); what goes on after it (background removal of workspaces, which the
process waits for before it exits) is measured as ``after_return``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.config import Config
from bench.harness import Session, ended_ok
from bench.plans import make_shape, to_batches
from distpar.coordinator import executor, landing
from distpar.coordinator.options import RunOptions
from distpar.coordinator.prepare import prepare_run
from distpar.core.model import AgentConfig
from distpar.infra import gitops
from distpar.testing.builders import write_plan

PARTS = ("collect", "close", "early_checks", "merge", "land", "workers_exit", "cleanup", "report", "journal")
PART_HELP = {
    "collect": "the last agent's exit -> its unit collected (commit, hand-back)",
    "close": "the last unit collected -> the backend closed (worker processes told to stop)",
    "early_checks": "waiting for the early conflict checks still queued",
    "merge": "the plan-order merge into the integration branch (merge_branches)",
    "land": "moving the target (landing.land)",
    "workers_exit": "waiting for the backend's worker processes to exit",
    "cleanup": "workspaces saved (uncommitted work), moved aside and forgotten by git; their files go in a thread",
    "report": "the run's report: its branches and refs deleted",
    "journal": "the rest, up to Runner.run returning: the journal's end of run",
}


class Marks:
    """Times (perf_counter) at which the hooked steps began and ended, and git processes started in each."""

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}
        self.git: dict[str, int] = {}
        self._current: list[str] = []
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            self._current.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self._current.pop()
                self.spans.setdefault(name, []).extend((t, time.perf_counter()))
        return timed

    def count_git(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is threading.main_thread():
                key = self._current[-1] if self._current else "other"
            else:
                key = f"thread:{threading.current_thread().name.split('_')[0]}"
            with self._lock:
                self.git[key] = self.git.get(key, 0) + 1
            return fn(*args, **kwargs)
        return counted

    def first(self, name: str) -> float | None:
        return self.spans[name][0] if name in self.spans else None

    def last(self, name: str) -> float | None:
        return self.spans[name][-1] if name in self.spans else None


@contextmanager
def _patched(obj: Any, attr: str, new: Any) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, new)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def measure(session: Session, units: int, workers: int) -> dict[str, Any]:
    """One run of ``units`` zero-second units on ``workers`` workers; its tail split into ``PARTS``."""
    repo = session.repo(2)
    nonce = f"tail{units}-{time.monotonic_ns() % 10**6}"
    nodes = make_shape("independent-equal", units, 0.0)
    plan_path = write_plan(session.root / f"plan-{nonce}.md", to_batches(nodes, nonce), plan_id=f"bench-{nonce}")
    prepared = prepare_run(plan_path, RunOptions(agent=AgentConfig(preset="fake")), repo=repo, workers=workers)
    runner, journal = prepared.runner, prepared.journal
    marks = Marks()
    load = os.getloadavg()
    threads_before = set(threading.enumerate())
    try:
        backend = runner.backend
        backend.close = marks.wrap("close", backend.close)  # type: ignore[method-assign]
        backend.wait_closed = marks.wrap("wait_closed", backend.wait_closed)  # type: ignore[method-assign]
        runner.early.settle = marks.wrap("early_checks", runner.early.settle)  # type: ignore[method-assign]
        with _patched(landing, "merge_branches", marks.wrap("merge", landing.merge_branches)), \
                _patched(landing, "land", marks.wrap("land", landing.land)), \
                _patched(executor, "cleanup", marks.wrap("cleanup", executor.cleanup)), \
                _patched(executor.Runner, "_report", marks.wrap("report", executor.Runner._report)), \
                _patched(gitops, "git", marks.count_git(gitops.git)):
            t0, w0 = time.perf_counter(), time.time()
            report = runner.run()
            t_return = time.perf_counter()
            # What the run left running (a background removal): the process would wait for it before exiting.
            for th in set(threading.enumerate()) - threads_before:
                th.join(timeout=60)
            t_after = time.perf_counter()
        rows = journal.units(runner.run_id)
        events = journal.events(runner.run_id)
    finally:
        journal.close()
    ended_ok(report, f"tail run of {units} units")
    # Wall-clock (journal) times to perf_counter: the run began at w0 == t0.
    last_agent_end = max(r["ended"] for r in rows) - w0 + t0
    collected = [e.ts - w0 + t0 for e in events if e.kind == "unit_ended"]
    last_collected = max(collected)
    close_end = marks.last("close") or last_collected
    settle = marks.spans.get("early_checks", [close_end, close_end])
    merge_span = marks.spans.get("merge", [settle[-1], settle[-1]])
    land_span = marks.spans.get("land", [merge_span[-1], merge_span[-1]])
    exit_span = marks.spans.get("wait_closed", [land_span[-1], land_span[-1]])
    cleanup_end = marks.last("cleanup") or exit_span[-1]
    report_span = marks.spans.get("report", [cleanup_end, cleanup_end])
    parts = {
        "collect": last_collected - last_agent_end,
        "close": close_end - last_collected,
        "early_checks": settle[-1] - settle[0],
        "merge": merge_span[-1] - merge_span[0],
        "land": land_span[-1] - land_span[0],
        "workers_exit": exit_span[-1] - exit_span[0],
        "cleanup": cleanup_end - (marks.first("cleanup") or cleanup_end),
        "report": report_span[-1] - report_span[0],
        "journal": t_return - report_span[-1],
    }
    tail = t_return - last_agent_end
    return {
        "units": units,
        "workers": workers,
        "loadavg": [round(x, 2) for x in load],
        "wall": round(t_return - t0, 3),
        "running": round(last_agent_end - t0, 3),  # run start -> the last agent's exit
        "tail": round(tail, 3),
        "parts": {k: round(v, 3) for k, v in parts.items()},
        "unaccounted": round(tail - sum(parts.values()), 3),
        "after_return": round(t_after - t_return, 3),
        "git_processes": dict(sorted(marks.git.items())),
    }


def run(session: Session, cfg: Config) -> dict[str, Any]:
    rows = []
    for units in cfg.tail_sizes:
        for rep in range(cfg.light_reps):
            session.log(f"  tail: {units} zero-second units on {cfg.tail_workers} workers, rep {rep + 1}")
            session.settle(limit=30.0)
            rows.append(measure(session, units, cfg.tail_workers))
    return {"parts": PART_HELP, "runs": rows, "target": {"units": 300, "seconds": 3.0}}
