"""Observers of a running plan: a live view for a terminal, plain lines for logs and CI, JSON lines for machines.

The Runner calls ``observer(kind, data)`` for every event it emits (see ``runtime.Runner.emit``). ``RunProgress``
is the state the observers share, built from those events alone: per-worker progress, counted in units, and an
ETA that is the one prediction (``distpar.core.predict``: the run state on the plan's estimates) of what is left,
rescaled by how long the finished units really took. Nothing here writes to the terminal by itself: the CLI hands
in the console (or the write function) to use.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from distpar.core.model import UnitStatus
from distpar.core.plan import Plan
from distpar.core.predict import Prediction, predict, run_workers
from distpar.core.schedule import Schedule
from distpar.core.stateunits import state_units
from distpar.core.units import UnitGraph, unit_graph

Clock = Callable[[], float]
REPREDICT = 1.0  # seconds: the live view redraws 4 times a second, the ETA is predicted again at most once a second
OUTPUT_CHARS = 200  # of a worker's last output line kept for the live view (which cuts it to the width)
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

STATUS_STYLE = {
    "ok": "green", "failed": "red", "timeout": "red", "blocked": "magenta", "skipped": "dim",
    "interrupted": "yellow", "running": "cyan", "waiting": "dim", "done": "green", "stopped": "red",
}


@dataclass
class WorkerRow:
    """One worker of the run, as its events tell it."""

    index: int
    node: str = ""
    current: str | None = None  # the unit its agent is working on
    since: float | None = None  # when ``current`` started
    attempt: int = 1
    done: int = 0
    failed: int = 0
    cost: float | None = None
    output: str = ""  # the last line its running unit's agent printed

    @property
    def name(self) -> str:
        return f"w{self.index + 1}"


class RunProgress:
    """Progress of one run, from its events alone (workers report when a unit really starts and ends).
    Pure bookkeeping: no I/O, the clock is injectable."""

    def __init__(self, plan: Plan, schedule: Schedule, node: str = "", clock: Clock = time.time, *,
                 graph: UnitGraph | None = None) -> None:
        """``graph``: the run's unit graph (``Runner.graph``); without it, the plan's under the schedule's strategy."""
        self.plan, self.schedule, self.clock = plan, schedule, clock
        self.graph = graph if graph is not None else unit_graph(plan, strategy=schedule.strategy)
        self.estimates = {u.uid: u.estimate * 60.0 for u in self.graph.units}  # plan estimates are minutes
        self.node = node
        self.rows = [WorkerRow(i, node) for i in range(run_workers(self.graph, schedule.workers))]
        self.ended: dict[str, tuple[str, float]] = {}  # unit -> (status, duration)
        self.cost: float | None = None
        self.run_id = ""
        self.target = ""
        self.phase = "starting"  # running, merging, interrupted, ended
        self.state = ""  # the run's final state, once ended
        self.throttle: str = ""  # "3 at once" or "paused until 12:00" while rate limits hold the run back
        self.predicted: list[str] = []  # conflicts found early
        self.t0 = clock()
        self.t_end: float | None = None
        self._eta: tuple[Any, float, float] | None = None  # (what it was predicted from, when, the ETA then)

    # --- events ----------------------------------------------------------------------------------------

    def _row(self, data: dict[str, Any]) -> WorkerRow | None:
        k = data.get("worker")
        if not isinstance(k, int) or k < 0:
            return None
        while k >= len(self.rows):
            self.rows.append(WorkerRow(len(self.rows), self.node))
        return self.rows[k]

    def update(self, kind: str, data: dict[str, Any]) -> None:
        now = self.clock()
        if kind == "run_started":
            self.run_id, self.target = data.get("run_id", ""), data.get("target", "")
            self.phase, self.t0 = "running", now
            workers = data.get("workers") or len(self.rows)
            self.rows = [WorkerRow(i, self.node) for i in range(workers)]
        elif kind == "run_resumed":
            for b in data.get("done_units") or ():
                self.ended.setdefault(b, ("ok", 0.0))
        elif kind in ("unit_dispatched", "unit_started"):
            row = self._row(data)
            if row is not None and data.get("unit") not in self.ended:
                if row.current != data["unit"]:
                    row.output = ""
                row.current, row.since = data["unit"], now if data.get("at") is None else data["at"]
                row.attempt = data.get("attempt", 1)
                if data.get("node"):
                    row.node = data["node"]
        elif kind == "agent_output":
            row = self._row(data)
            if row is not None and row.current == data.get("unit") and data.get("line"):
                text = ANSI.sub("", str(data["line"])[:OUTPUT_CHARS * 2])  # colours: the view is not a terminal
                row.output = "".join(c if c.isprintable() else " " for c in text)[:OUTPUT_CHARS]
        elif kind == "unit_retry":
            for row in self.rows:
                if row.current == data.get("unit"):
                    row.current, row.since = None, None
        elif kind == "unit_ended":
            self._end(data, now)
        elif kind == "throttled":
            until = data.get("until")
            self.throttle = (f"paused until {time.strftime('%H:%M:%S', time.localtime(until))}" if until
                             else f"{data.get('limit')} agent(s) at once")
        elif kind == "conflict_predicted":
            self.predicted.append(f"{data.get('unit')}: {', '.join(data.get('files') or ())}")
        elif kind == "merge_started":
            self.phase = "merging"
        elif kind == "interrupted":
            self.phase = "interrupted"
        elif kind == "run_ended":
            self.phase, self.state, self.t_end = "ended", data.get("state", ""), now

    def _end(self, data: dict[str, Any], now: float) -> None:
        batch, status = data["unit"], data["status"]
        if batch in self.ended:
            return
        self.ended[batch] = (status, data.get("duration") or 0.0)
        cost = data.get("cost_usd")
        if cost is not None:
            self.cost = (self.cost or 0.0) + cost
        row = self._row(data)
        if row is None:
            return
        if data.get("node"):
            row.node = data["node"]
        if row.current == batch:
            row.current, row.since, row.output = None, None, ""
        if status in ("skipped", "blocked"):
            return  # never ran on a worker
        row.done += 1
        if status != "ok":
            row.failed += 1
        if cost is not None:
            row.cost = (row.cost or 0.0) + cost

    # --- derived ---------------------------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Units in the run (a batch without agents has none)."""
        return len(self.estimates)

    @property
    def done(self) -> int:
        return sum(1 for u in self.ended if u in self.estimates)

    @property
    def failed(self) -> int:
        return sum(1 for u, (s, _) in self.ended.items() if s != "ok" and u in self.estimates)

    def elapsed(self) -> float:
        return (self.t_end or self.clock()) - self.t0

    def scale(self) -> float:
        """Real seconds per estimated second, from the units that finished (1.0 until one has)."""
        pairs = [(d, self.estimates[b]) for b, (s, d) in self.ended.items() if s == "ok" and d > 0
                 and b in self.estimates]
        est = sum(e for _, e in pairs)
        return sum(d for d, _ in pairs) / est if est > 0 else 1.0

    def prediction(self) -> Prediction:
        """What is left, by the one model (``distpar.core.predict``): the units that ended stay ended, a running one
        needs what its rescaled estimate leaves (at least a second: it has not ended), the rest their rescaled
        estimates. Times in seconds from now."""
        now, scale = self.clock(), self.scale()
        workers = max(1, len(self.rows))
        done = {u: _status(s) for u, (s, _) in self.ended.items() if u in self.estimates}
        running = {row.current: (row.index, max(1.0, self.estimates[row.current] * scale
                                               - (now - (now if row.since is None else row.since))))
                   for row in self.rows if row.current in self.estimates and row.current not in done}
        units = state_units(self.graph, self.schedule.strategy, workers)
        return predict(units, workers, {u: e * scale for u, e in self.estimates.items()}, done=done, running=running)

    def eta(self) -> float:
        """Seconds until every unit has finished (0 once they all have). Between events it counts down from the
        last prediction for up to ``REPREDICT`` seconds (a plan of thousands of units takes a while to predict)."""
        if self.done >= self.total:
            return 0.0
        now = self.clock()
        key = (len(self.ended), tuple((row.current, row.since) for row in self.rows))
        if self._eta is not None and self._eta[0] == key and 0.0 <= now - self._eta[1] < REPREDICT:
            return max(1.0, self._eta[2] - (now - self._eta[1]))
        eta = self.prediction().makespan
        self._eta = (key, now, eta)
        return eta

    def worker_activity(self, st: WorkerRow) -> str:
        """What a worker is doing, in a few words."""
        if st.current:
            desc = self.graph.unit(st.current).description if st.current in self.estimates else ""
            text = f"{st.current}" + (f" · {desc}" if desc else "")
            return text + (f" (attempt {st.attempt})" if st.attempt > 1 else "")
        if self.phase in ("interrupted", "ended") and self.done < self.total:
            return "interrupted" if self.phase == "interrupted" or self.state == "interrupted" else "stopped"
        if self.done >= self.total:
            return "finished" if not st.failed else f"stopped ({st.failed} not ok)"
        return "idle: waiting for a ready unit"

    def worker_state(self, st: WorkerRow) -> str:
        if st.current:
            return "running"
        if self.done >= self.total:
            return "failed" if st.failed else "done"
        return "interrupted" if self.phase in ("interrupted", "ended") else "waiting"


def _status(value: str) -> UnitStatus:
    try:
        return UnitStatus(value)
    except ValueError:
        return UnitStatus.FAILED


def eta_text(p: RunProgress) -> str:
    """``~1:05``, rounded up: never ``~0:00`` while a unit is left."""
    return f"~{duration(math.ceil(p.eta()))}"


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
        eta = f", estimated {duration(math.ceil(progress.eta()))}" if progress and progress.total else ""
        return (f"distpar: run {data['run_id']}: {data.get('workers')} worker(s)"
                + (f", {progress.total} unit(s)" if progress else "")
                + f", merging into {data['target']}{eta}", "")
    if kind == "run_resumed":
        rec = data.get("recovered") or []
        return (f"distpar: resuming run {data['run_id']}: {data['done']} batch(es) already done"
                + (f" (recovered from their branches: {', '.join(rec)})" if rec else ""), "")
    if kind == "unit_submitted":
        return (f"[w{data['worker'] + 1}] started {data['unit']}"
                + (f" (attempt {data['attempt']})" if data.get("attempt", 1) > 1 else ""), "")
    if kind == "unit_ended":
        cost = f", ${data['cost_usd']:.4f}" if data.get("cost_usd") is not None else ""
        note = "" if data["status"] == "ok" else f": {data.get('error') or data['status']}"
        change = "" if data.get("changed") or data["status"] != "ok" else ", no changes"
        ran = data.get("duration") or data["status"] not in ("skipped", "blocked")
        details = f" ({data.get('duration') or 0:.1f}s{cost}{change})" if ran else ""
        where = f"w{data['worker'] + 1}" if data.get("worker", -1) >= 0 else "-"
        return (f"[{where}] batch {data['unit']} {data['status']}{details}{note}{counts}",
                STATUS_STYLE.get(data["status"], ""))
    if kind == "unit_retry":
        return f"[{data['unit']}] retrying on a worker (attempt {data['attempt']}): {data['error']}", "yellow"
    if kind == "conflict_predicted":
        others = f" with {', '.join(data['others'])}" if data.get("others") else ""
        return (f"distpar: conflict ahead: {data['unit']}'s work conflicts{others} in "
                f"{', '.join(data['files'])} (the final merge will stop there; nothing is resolved)", "magenta")
    if kind == "throttled":
        until = data.get("until")
        when = f", no new agent before {time.strftime('%H:%M:%S', time.localtime(until))}" if until else ""
        return f"distpar: rate limited: {data['limit']} agent(s) at once{when}", "yellow"
    if kind == "merge_started":
        return f"distpar: merging {len(data['branches'])} unit branch(es) in plan order", ""
    if kind == "interrupted":
        return "distpar: interrupted: stopping agents and saving their work ...", "yellow"
    return None


class PlainLines(Observer):
    """One line per notable event: for logs, CI and any output that is not a terminal."""

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
    """A table that redraws in place on a terminal: one row per worker, then an overall bar with an ETA.
    Failures, retries and interrupts are also printed above it, so they stay in the scrollback."""

    def __init__(self, console: Console, progress: RunProgress, refresh_per_second: float = 4.0) -> None:
        self.console, self.progress = console, progress
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
        if kind == "agent_output":  # many a second: shown at the next refresh (4 a second)
            return
        line = event_line(kind, data)
        if kind in ("unit_retry", "interrupted", "run_resumed", "conflict_predicted", "throttled") or (
                kind == "unit_ended" and data["status"] not in ("ok", "skipped")):
            assert line is not None
            self._live.console.print(Text(line[0], style=line[1]), soft_wrap=True, highlight=False)
        self._live.refresh()

    def _render(self) -> RenderableType:
        with self._lock:
            return render(self.progress, self.console.width)


def render(p: RunProgress, width: int = 120) -> RenderableType:
    """The live view of ``p`` as a rich renderable, for a terminal ``width`` columns wide."""
    phase = {"starting": "starting", "running": "running", "merging": "merging units",
             "interrupted": "interrupting: saving work", "ended": p.state or "ended"}[p.phase]
    head = Text.assemble(
        ("distpar ", "bold"), (p.run_id or "", "bold cyan"), (f" → {p.target}  " if p.target else "  "),
        (phase, STATUS_STYLE.get(p.state, "yellow" if p.phase == "interrupted" else "cyan")),
        f"   elapsed {duration(p.elapsed())}",
    )
    table = Table(box=None, pad_edge=False, expand=False, header_style="bold dim")
    columns = (("worker", None), ("node", 24), ("batch", 48), ("state", None), ("elapsed", None), ("done", None),
               ("cost", None))
    for i, (name, cap) in enumerate(columns):
        table.add_column(name, max_width=cap, no_wrap=cap is not None, overflow="ellipsis",
                         justify="right" if i >= 4 else "left")  # the numbers
    now = p.clock()
    rows = [[st.name, st.node or "-", p.worker_activity(st), p.worker_state(st),
             duration(now - st.since) if st.current and st.since else "", str(st.done), money(st.cost)]
            for st in p.rows]
    if any(st.current and st.output for st in p.rows):  # what each running agent printed last, in the room left
        used = sum(min(cap or width, max(len(name), *(len(r[i]) for r in rows)))
                   for i, (name, cap) in enumerate(columns)) + 2 * len(columns)  # 2: between columns
        table.add_column("output", style="dim", no_wrap=True, overflow="ellipsis", max_width=max(8, width - used - 1))
        for row, st in zip(rows, p.rows, strict=True):
            row.append(st.output if st.current else "")
    for row in rows:
        table.add_row(*row[:3], Text(row[3], style=STATUS_STYLE.get(row[3], "")), *(Text(c) for c in row[4:]))
    eta = "" if p.phase == "ended" else f"  ETA {eta_text(p)}"
    bad = f", {p.failed} not ok" if p.failed else ""
    held = f"  {p.throttle}" if p.throttle else ""
    label = Text(f"{p.done}/{p.total} units{bad}{eta}  cost {money(p.cost)}{held}", no_wrap=True)
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
