"""Observers of a running plan: a live view for a terminal, plain lines for logs and CI, JSON lines for machines.

The Runner calls ``observer(kind, data)`` for every event it emits (see ``runtime.Runner.emit``). ``RunProgress``
is the state the observers share, built from those events alone: per-stream progress and an ETA from the plan's
estimates, rescaled by how long the finished batches really took. Nothing here writes to the terminal by itself:
the CLI hands in the console (or the write function) to use.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from distpar.plan import Plan
from distpar.schedule import Schedule

Clock = Callable[[], float]

STATUS_STYLE = {
    "ok": "green", "failed": "red", "timeout": "red", "blocked": "magenta", "skipped": "dim",
    "interrupted": "yellow", "running": "cyan", "waiting": "dim", "done": "green", "stopped": "red",
}


@dataclass
class StreamState:
    index: int
    batch_ids: tuple[str, ...]
    node: str = ""
    queued: list[str] = field(default_factory=list)  # submitted, no result yet, in stream order
    current: str | None = None  # the batch its agent is (as far as we know) working on
    since: float | None = None  # when ``current`` started
    submitted: float = 0.0  # when the last segment was submitted
    attempt: int = 1
    done: int = 0
    failed: int = 0
    cost: float | None = None

    @property
    def name(self) -> str:
        return f"s{self.index + 1}"

    @property
    def finished(self) -> bool:
        return self.done >= len(self.batch_ids)


class RunProgress:
    """Progress of one run, from its events. Pure bookkeeping: no I/O, the clock is injectable."""

    def __init__(self, plan: Plan, schedule: Schedule, node: str = "", clock: Clock = time.time) -> None:
        self.plan, self.schedule, self.clock = plan, schedule, clock
        self.estimates = {b.id: b.estimate * 60.0 for b in plan.batches}  # plan estimates are minutes
        self.streams = [StreamState(s.index, s.batch_ids, node) for s in schedule.streams]
        self.stream_of = {b: s.index for s in schedule.streams for b in s.batch_ids}
        self.ended: dict[str, tuple[str, float]] = {}  # batch -> (status, duration)
        self.cost: float | None = None
        self.run_id = ""
        self.target = ""
        self.phase = "starting"  # running, merging, interrupted, ended
        self.state = ""  # the run's final state, once ended
        self.t0 = clock()
        self.t_end: float | None = None
        # Topological by construction: a batch's estimated start is after its dependencies' finish and after
        # the batch before it in its stream (plan estimates are positive).
        self._order = sorted(self.stream_of, key=lambda b: (schedule.start.get(b, 0.0), schedule.finish.get(b, 0.0)))

    # --- events ----------------------------------------------------------------------------------------

    def update(self, kind: str, data: dict[str, Any]) -> None:
        now = self.clock()
        if kind == "run_started":
            self.run_id, self.target = data.get("run_id", ""), data.get("target", "")
            self.phase, self.t0 = "running", now
        elif kind == "run_resumed":
            for b in data.get("done_batches") or ():
                self._end(b, "ok", 0.0, None, now, count_cost=False)
        elif kind == "segment_submitted":
            st = self.streams[data["stream"]]
            st.submitted, st.attempt = now, data.get("attempt", 1)
            for b in data.get("batches", ()):
                self._queue(st, b, now)
        elif kind == "batch_started":
            st = self.streams[data["stream"]]
            if data.get("node"):
                st.node = data["node"]
            self._queue(st, data["batch"], now)
        elif kind == "segment_retry":
            st = self.streams[data["stream"]]
            st.attempt, st.since = data.get("attempt", st.attempt + 1), now
        elif kind == "batch_ended":
            if data.get("node"):
                self.streams[data["stream"]].node = data["node"]
            self._end(data["batch"], data["status"], data.get("duration") or 0.0, data.get("cost_usd"), now)
        elif kind == "merge_started":
            self.phase = "merging"
        elif kind == "interrupted":
            self.phase = "interrupted"
        elif kind == "run_ended":
            self.phase, self.state, self.t_end = "ended", data.get("state", ""), now

    def _queue(self, st: StreamState, batch: str, now: float) -> None:
        if batch in self.ended:
            return
        if batch not in st.queued:
            st.queued.append(batch)
        if st.current not in st.queued:
            st.current, st.since = st.queued[0], now

    def _end(self, batch: str, status: str, duration: float, cost: float | None, now: float,
             count_cost: bool = True) -> None:
        if batch in self.ended or batch not in self.stream_of:
            return
        st = self.streams[self.stream_of[batch]]
        self.ended[batch] = (status, duration)
        st.done += 1
        if status != "ok":
            st.failed += 1
        if cost is not None and count_cost:
            st.cost = (st.cost or 0.0) + cost
            self.cost = (self.cost or 0.0) + cost
        if batch in st.queued:
            st.queued.remove(batch)
        if st.current == batch or st.current not in st.queued:
            st.current = st.queued[0] if st.queued else None
            st.since = now if st.current else None

    def advance(self, stream: int, batch: str, at: float) -> None:
        """A batch further down a submitted segment has started (seen from outside, e.g. its log appeared):
        the ones before it in the segment are finished, their results not reported yet."""
        st = self.streams[stream]
        if batch in st.queued and st.current in st.queued and st.queued.index(batch) > st.queued.index(st.current):
            st.current, st.since = batch, at

    def probe_logs(self, log_dir: Path) -> None:
        """Local runs: a batch's log is created when its agent starts, so it tells which batch of a multi-batch
        segment is running before the segment's results come back."""
        from distpar.worker import safe_name

        for st in self.streams:
            if len(st.queued) < 2 or st.current not in st.queued:
                continue
            for b in reversed(st.queued[st.queued.index(st.current) + 1:]):
                try:
                    mtime = (log_dir / f"{safe_name(b)}.log").stat().st_mtime
                except OSError:
                    continue
                if mtime >= st.submitted - 1.0:
                    self.advance(st.index, b, mtime)
                    break

    # --- derived ---------------------------------------------------------------------------------------

    @property
    def total(self) -> int:
        return len(self.stream_of)

    @property
    def done(self) -> int:
        return len(self.ended)

    @property
    def failed(self) -> int:
        return sum(1 for s, _ in self.ended.values() if s != "ok")

    def elapsed(self) -> float:
        return (self.t_end or self.clock()) - self.t0

    def scale(self) -> float:
        """Real seconds per estimated second, from the batches that finished (1.0 until one has)."""
        pairs = [(d, self.estimates[b]) for b, (s, d) in self.ended.items() if s == "ok" and d > 0]
        est = sum(e for _, e in pairs)
        return sum(d for d, _ in pairs) / est if est > 0 else 1.0

    def eta(self) -> float:
        """Seconds until every batch has finished: the schedule simulated forward from now with rescaled
        estimates, honouring the order in each stream and the waits across streams."""
        if self.done >= self.total:
            return 0.0
        now, scale = self.clock(), self.scale()
        finish: dict[str, float] = {}
        free = {st.index: 0.0 for st in self.streams}
        for b in self._order:
            st = self.streams[self.stream_of[b]]
            if b in self.ended:
                finish[b] = 0.0
                continue
            cur = st.queued.index(st.current) if st.current in st.queued else -1
            pos = st.queued.index(b) if b in st.queued else None
            if pos is not None and pos < cur:  # finished, result not back yet
                f = 0.0
            elif b == st.current:
                f = max(0.0, self.estimates[b] * scale - (now - (st.since or now)))
            else:
                begin = max([free[st.index], *(finish.get(d, 0.0) for d in self.schedule.waits.get(b, ()))])
                f = begin + self.estimates[b] * scale
            finish[b] = f
            free[st.index] = max(free[st.index], f)
        return max(finish.values(), default=0.0)

    def stream_activity(self, st: StreamState) -> str:
        """What a stream is doing, in a few words."""
        if st.current:
            desc = self.plan.batch(st.current).description if st.current in self.estimates else ""
            text = f"{st.current}" + (f" · {desc}" if desc else "")
            return text + (f" (attempt {st.attempt})" if st.attempt > 1 else "")
        if st.finished:
            if not st.failed:
                return "finished"
            if self.stream_state(st) == "interrupted":
                return "interrupted"
            return f"stopped ({st.failed} not ok)"
        nxt = next((b for b in st.batch_ids if b not in self.ended), None)
        waits = [d for d in self.schedule.waits.get(nxt or "", ()) if d not in self.ended]
        if waits:
            return "waiting for " + ", ".join(f"{d} (s{self.stream_of[d] + 1})" for d in waits)
        if self.phase in ("interrupted", "ended"):
            return "interrupted"
        return f"next: {nxt}" if nxt else "-"

    def stream_state(self, st: StreamState) -> str:
        if st.current:
            return "running"
        if st.finished:
            statuses = {self.ended[b][0] for b in st.batch_ids if b in self.ended}
            if "interrupted" in statuses:
                return "interrupted"
            return "failed" if st.failed else "done"
        return "interrupted" if self.phase == "ended" else "waiting"


def duration(seconds: float | None) -> str:
    """0:07, 12:30, 1:02:03."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def money(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:.4f}"


# --- observers ---------------------------------------------------------------------------------------------


class Observer:
    """Callable as the Runner's observer; a context manager around ``Runner.run()``. This one is silent."""

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        return None

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        return None


def event_line(kind: str, data: dict[str, Any], progress: RunProgress | None = None) -> tuple[str, str] | None:
    """One line for a notable event, with a style name; None for the events not worth a line."""
    counts = f" [{progress.done}/{progress.total}]" if progress else ""
    if kind == "run_started":
        eta = ""
        if progress and progress.schedule.makespan:
            eta = f", estimated {duration(progress.eta())}"
        return (f"distpar: run {data['run_id']}: {data['streams']} stream(s)"
                + (f", {progress.total} batch(es)" if progress else "")
                + f", merging into {data['target']}{eta}", "")
    if kind == "run_resumed":
        rec = data.get("recovered") or []
        return (f"distpar: resuming run {data['run_id']}: {data['done']} batch(es) already done"
                + (f" (recovered from their branches: {', '.join(rec)})" if rec else ""), "")
    if kind == "segment_submitted":
        return (f"[s{data['stream'] + 1}] started batch(es) {', '.join(data['batches'])}"
                + (f" (attempt {data['attempt']})" if data.get("attempt", 1) > 1 else ""), "")
    if kind == "batch_ended":
        cost = f", ${data['cost_usd']:.4f}" if data.get("cost_usd") is not None else ""
        note = "" if data["status"] == "ok" else f": {data.get('error') or data['status']}"
        change = "" if data.get("changed") or data["status"] != "ok" else ", no changes"
        ran = data.get("duration") or data["status"] not in ("skipped", "blocked")
        details = f" ({data.get('duration') or 0:.1f}s{cost}{change})" if ran else ""
        return (f"[s{data['stream'] + 1}] batch {data['batch']} {data['status']}{details}{note}{counts}",
                STATUS_STYLE.get(data["status"], ""))
    if kind == "segment_retry":
        return f"[s{data['stream'] + 1}] retrying (attempt {data['attempt']}): {data['error']}", "yellow"
    if kind == "merge_started":
        return f"distpar: merging {len(data['streams'])} stream(s) in order", ""
    if kind == "interrupted":
        return "distpar: interrupted: stopping agents and saving their work ...", "yellow"
    return None


class PlainLines(Observer):
    """One line per notable event: for logs, CI and any stream that is not a terminal."""

    def __init__(self, console: Console, progress: RunProgress | None = None) -> None:
        self.console, self.progress = console, progress

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(kind, data)
        line = event_line(kind, data, self.progress)
        if line:
            self.console.print(Text(line[0], style=line[1]), soft_wrap=True, highlight=False)


class JsonLines(Observer):
    """Every event as one JSON object per line: ``{"event": KIND, "time": EPOCH, ...data}``."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.write(json.dumps({"event": kind, "time": round(time.time(), 3), **data}, default=str))


class LiveView(Observer):
    """A table that redraws in place on a terminal: one row per stream, then an overall bar with an ETA.
    Failures, retries and interrupts are also printed above it, so they stay in the scrollback."""

    def __init__(self, console: Console, progress: RunProgress, log_dir: Path | None = None,
                 refresh_per_second: float = 4.0) -> None:
        self.console, self.progress, self.log_dir = console, progress, log_dir
        self._lock = threading.Lock()
        self._live = Live(console=console, refresh_per_second=refresh_per_second, transient=False,
                          get_renderable=self._render, redirect_stdout=False)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._live.stop()

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.progress.update(kind, data)
        line = event_line(kind, data)
        if kind in ("segment_retry", "interrupted", "run_resumed") or (
                kind == "batch_ended" and data["status"] not in ("ok", "skipped")):
            assert line is not None
            self._live.console.print(Text(line[0], style=line[1]), soft_wrap=True, highlight=False)
        self._live.refresh()

    def _render(self) -> RenderableType:
        with self._lock:
            if self.log_dir is not None and self.progress.phase == "running":
                self.progress.probe_logs(self.log_dir)
            return render(self.progress, self.console.width)


def render(p: RunProgress, width: int = 120) -> RenderableType:
    """The live view of ``p`` as a rich renderable, for a terminal ``width`` columns wide."""
    phase = {"starting": "starting", "running": "running", "merging": "merging streams",
             "interrupted": "interrupting: saving work", "ended": p.state or "ended"}[p.phase]
    head = Text.assemble(
        ("distpar ", "bold"), (p.run_id or "", "bold cyan"), (f" → {p.target}  " if p.target else "  "),
        (phase, STATUS_STYLE.get(p.state, "yellow" if p.phase == "interrupted" else "cyan")),
        f"   elapsed {duration(p.elapsed())}",
    )
    table = Table(box=None, pad_edge=False, expand=False, header_style="bold dim")
    table.add_column("stream")
    table.add_column("node", max_width=24, no_wrap=True, overflow="ellipsis")
    table.add_column("batch", max_width=48, no_wrap=True, overflow="ellipsis")
    table.add_column("state")
    table.add_column("elapsed", justify="right")
    table.add_column("done", justify="right")
    table.add_column("cost", justify="right")
    now = p.clock()
    for st in p.streams:
        state = p.stream_state(st)
        table.add_row(
            st.name, st.node or "-", p.stream_activity(st), Text(state, style=STATUS_STYLE.get(state, "")),
            duration(now - st.since) if st.current and st.since else "",
            f"{st.done}/{len(st.batch_ids)}", money(st.cost),
        )
    eta = "" if p.phase == "ended" else f"  ETA ~{duration(p.eta())}"
    bad = f", {p.failed} not ok" if p.failed else ""
    label = Text(f"{p.done}/{p.total} batches{bad}{eta}  cost {money(p.cost)}", no_wrap=True)
    bar_width = max(10, min(40, width - len(label) - 1))
    bar = Table.grid(padding=(0, 1))
    bar.add_column(width=bar_width)
    bar.add_column(no_wrap=True)
    bar.add_row(
        ProgressBar(total=max(p.total, 1), completed=p.done, width=bar_width,
                    complete_style="red" if p.failed else "green", finished_style="red" if p.failed else "green"),
        label,
    )
    return Group(head, table, bar)
