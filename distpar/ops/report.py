"""A run as one self-contained HTML page: a Gantt timeline of units per worker and node, the dependency graph of
the units, durations, cost, failures and conflicts, serial time against wall time and the plan's prediction.

Everything comes from the journal: the plan and options it recorded give the unit graph and the one prediction
(``distpar.core.predict``, the same numbers ``distpar plan`` showed). The page has no script and loads nothing:
inline CSS and SVG only, so it opens offline, from a CI artifact or an e-mail attachment.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from distpar.coordinator.journal import Event, Journal
from distpar.core.errors import DistparError, UsageError
from distpar.core.model import bounded_tail, worker_label
from distpar.core.plan import Plan
from distpar.core.predict import Prediction, predict_graph
from distpar.core.units import UnitGraph, unit_graph

COLORS = {
    "ok": "#2f9e5b", "failed": "#d64545", "timeout": "#e0701e", "blocked": "#8e5bd6", "skipped": "#a3a8b0",
    "interrupted": "#d6a21e", "running": "#3b7dd8", "pending": "#c9ced6",
}
STATE_COLORS = {"ok": "#2f9e5b", "failed": "#d64545", "conflict": "#d6a21e", "interrupted": "#d6a21e",
                "error": "#d64545", "running": "#3b7dd8"}
BAD = ("failed", "timeout", "blocked", "interrupted")


@dataclass
class RunData:
    run: dict[str, Any]
    units: list[dict[str, Any]]
    events: list[Event]
    plan: dict[str, Any]
    schedule: dict[str, Any]
    summary: dict[str, Any]
    graph: UnitGraph | None = None  # the run's units and what each waited for (None: a journal it cannot read)
    prediction: Prediction | None = None  # minutes, by the plan's estimates, before the run started

    @property
    def t0(self) -> float:
        return float(self.run["started"])

    @property
    def t_end(self) -> float:
        """When the run ended, or the last thing the journal saw of it."""
        times = [self.run["ended"] or 0.0, *(e.ts for e in self.events[-1:]),
                 *(b["ended"] or b["started"] or 0.0 for b in self.units)]
        return max(t for t in times if t) if any(times) else self.t0

    @property
    def wall(self) -> float:
        return float(self.summary.get("wall") or (self.t_end - self.t0))

    @property
    def agent_time(self) -> float:
        return sum(duration_of(b) or 0.0 for b in self.units if b["ended"])

    @property
    def cost(self) -> float | None:
        costs = [b["cost_usd"] for b in self.units if b["cost_usd"] is not None]
        return sum(costs) if costs else None

    def description(self, batch_id: str) -> str:
        for b in self.plan.get("batches", ()):
            if str(b["id"]) == batch_id:
                return str(b.get("description", ""))
        return ""

    def depends_on(self) -> dict[str, list[str]]:
        """uid -> the units it waited for: the unit graph's edges (stages, multi-agent batches, declared
        ``depends_on``); the plan's declared batch dependencies when the graph cannot be rebuilt."""
        if self.graph is not None:
            return {u.uid: list(dict.fromkeys(u.depends_on)) for u in self.graph.units}
        return {str(b["id"]): [str(d) for d in b.get("depends_on", ())] for b in self.plan.get("batches", ())}

    def workers_used(self) -> list[int]:
        """The workers that really ran a unit, from the journal."""
        return sorted({int(b["worker"]) for b in self.units if b["started"] and (b["worker"] or 0) >= 0})


def duration_of(b: dict[str, Any]) -> float | None:
    return b["ended"] - b["started"] if b["ended"] and b["started"] else None


def load(journal: Journal, run_id: str) -> RunData:
    run = journal.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} in {journal.path}")
    plan = json.loads(run["plan"] or "{}")
    graph, prediction = _unit_graph(run, plan)
    return RunData(
        run=run,
        units=journal.units(run["id"]),
        events=journal.events(run["id"]),
        plan=plan,
        schedule=json.loads(run["schedule"] or "{}"),
        summary=json.loads(run["summary"]) if run["summary"] else {},
        graph=graph,
        prediction=prediction,
    )


def _unit_graph(run: dict[str, Any], plan: dict[str, Any]) -> tuple[UnitGraph | None, Prediction | None]:
    """The run's unit graph and its prediction, rebuilt as the run built them (plan, strategy, options)."""
    try:
        options = json.loads(run["options"] or "{}")
        graph = unit_graph(Plan.from_dict(plan), independent=bool(options.get("independent")),
                           strategy=run["strategy"] or "balanced", split=options.get("split"))
        return graph, predict_graph(graph, int(run["workers"] or 1), run["strategy"] or "balanced")
    except (DistparError, KeyError, TypeError, ValueError):  # a journal from an older distpar: no unit graph
        return None, None


def html_report(journal: Journal, run_id: str) -> str:
    return render(load(journal, run_id))


# --- page --------------------------------------------------------------------------------------------------

CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f7f8fa; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width:1320px; margin:0 auto; padding:24px 28px 48px; }
h1 { font-size:22px; margin:0 0 4px; } h2 { font-size:16px; margin:28px 0 10px; }
.sub { color:var(--muted); margin-bottom:18px; }
.badge { display:inline-block; padding:2px 10px; border-radius:999px; color:#fff; font-size:13px;
         font-weight:600; vertical-align:middle; margin-left:8px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:10px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:20px; font-weight:600; margin-top:2px; }
.card .n { color:var(--muted); font-size:12px; }
.panel { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 14px; overflow-x:auto; }
svg text { font-family:inherit; }
table { border-collapse:collapse; width:100%; background:#fff; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; background:#fafbfc; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
.dot { display:inline-block; width:10px; height:10px; border-radius:3px; margin-right:6px; vertical-align:-1px; }
.legend span { margin-right:14px; color:var(--muted); font-size:12.5px; }
.problem { background:#fff; border:1px solid var(--line); border-left:4px solid #d64545; border-radius:6px;
           padding:10px 14px; margin-bottom:10px; }
.problem.conflict { border-left-color:#d6a21e; }
.problem pre { margin:6px 0 0; white-space:pre-wrap; color:#3d4452; }
.ok-note { color:var(--muted); }
"""


def render(d: RunData) -> str:
    run = d.run
    state = run["state"]
    title = f"distpar run {run['id']}"
    counts: dict[str, int] = {}
    for b in d.units:
        counts[b["state"]] = counts.get(b["state"], 0) + 1
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        f'<h1>{esc(title)}<span class="badge" id="run-state" style="background:{STATE_COLORS.get(state, "#667085")}">'
        f"{esc(state)}</span></h1>",
        f'<div class="sub">plan <span class="mono">{esc(run["plan_path"])}</span>'
        + (f" ({esc(run['plan_id'])})" if run["plan_id"] else "")
        + f" · into <b>{esc(run['target'])}</b> from <span class='mono'>{esc(run['base'][:12])}</span>"
        + f" · backend {esc(run['backend'])}, {run['workers']} worker(s), strategy {esc(run['strategy'])}"
        + f" · started {esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d.t0)))}</div>",
        _cards(d, counts),
        "<h2>Serial time vs wall time</h2>",
        f'<div class="panel">{_serial_vs_wall(d)}</div>',
        "<h2>Timeline</h2>",
        _legend(),
        f'<div class="panel">{gantt(d, "worker")}</div>',
    ]
    if len({b["node"] for b in d.units if b["node"]}) > 1:
        parts += ["<h2>Timeline by node</h2>", f'<div class="panel">{gantt(d, "node")}</div>']
    parts += [
        "<h2>Dependencies</h2>",
        f'<div class="panel">{dependency_graph(d)}</div>',
        "<h2>Failures and conflicts</h2>",
        _problems(d),
        "<h2>Batches</h2>",
        _batch_table(d),
        f'<p class="sub" style="margin-top:24px">Generated by distpar from the run journal on '
        f"{esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>",
        "</main></body></html>",
    ]
    return "\n".join(parts)


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def secs(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 60:
        return f"{x:.1f}s"
    m, s = divmod(round(x), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def money(x: float | None) -> str:
    return "-" if x is None else f"${x:.4f}"


def _cards(d: RunData, counts: dict[str, int]) -> str:
    wall, agent = d.wall, d.agent_time
    speedup = agent / wall if wall > 0 else 0.0
    predicted = d.prediction.speedup if d.prediction else None
    tin = sum(b["input_tokens"] or 0 for b in d.units)
    tout = sum(b["output_tokens"] or 0 for b in d.units)
    units = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    used = d.workers_used()
    cards = [
        ("units", f"{counts.get('ok', 0)}/{len(d.units)} ok", units),
        ("wall time", secs(wall), "run start to end"),
        ("serial agent time", secs(agent), "sum of batch durations"),
        ("speedup", f"{speedup:.2f}x", f"predicted {predicted:.2f}x" if predicted else ""),
        ("cost", money(d.cost), f"{tin:,} in / {tout:,} out tokens" if tin or tout else ""),
        ("workers", f"{len(used)} of {d.run['workers']}",
         "ran units: " + (", ".join(map(worker_label, used)) or "none")),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div><div class="n">{esc(n)}</div>'
        "</div>" for k, v, n in cards) + "</div>"


def _legend() -> str:
    return '<div class="legend" style="margin-bottom:8px">' + "".join(
        f'<span><i class="dot" style="background:{c}"></i>{k}</span>' for k, c in COLORS.items()) + "</div>"


def _serial_vs_wall(d: RunData) -> str:
    wall, agent = d.wall, d.agent_time
    top = max(wall, agent, 1e-9)
    width, label_w, h = 900, 170, 26
    rows = [("serial agent time", agent, "#8a94a6"), ("wall time", wall, "#3b7dd8")]
    est = (d.prediction.serial, d.prediction.makespan) if d.prediction else (None, None)
    out = [f'<svg id="serial-vs-wall" viewBox="0 0 {width + label_w + 90} {len(rows) * (h + 10) + 28}" '
           f'width="100%" style="max-width:{width + label_w + 90}px" role="img">']
    for i, (name, value, color) in enumerate(rows):
        y = i * (h + 10)
        w = max(2.0, value / top * width)
        out.append(f'<text x="0" y="{y + 18}" font-size="13" fill="#1d2330">{esc(name)}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{h}" rx="4" fill="{color}"/>'
                   f'<text x="{label_w + w + 8:.1f}" y="{y + 18}" font-size="13" fill="#1d2330">{secs(value)}</text>')
    note = f"speedup {agent / wall:.2f}x" if wall > 0 else ""
    if est[0] and est[1]:
        note += f" · predicted from the plan's estimates: serial {est[0]:g} min, makespan {est[1]:g} min"
    out.append(f'<text x="{label_w}" y="{len(rows) * (h + 10) + 16}" font-size="12" fill="#667085">'
               f"{esc(note)}</text></svg>")
    return "".join(out)


def _nice_step(span: float, target: int = 8) -> float:
    raw = max(span, 1e-6) / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def gantt(d: RunData, by: str = "worker") -> str:
    """Bars of batches on a time axis, one lane per worker (or per node). Every batch of the run gets one
    ``<g class="bar">`` with data attributes; batches that never ran are drawn as small hatched boxes at the end
    of their lane."""
    t0 = d.t0
    span = max(d.t_end - t0, 0.001)
    label_w, plot_w, lane_h, bar_h, top = 170, 1060, 38, 24, 30
    unit = plot_w / span

    def lane_key(b: dict[str, Any]) -> str:
        return worker_label(b["worker"]) if by == "worker" else (b["node"] or "(not run)")

    lanes: dict[str, list[dict[str, Any]]] = {}
    for b in sorted(d.units, key=lambda b: (b["worker"], b["position"])):
        lanes.setdefault(lane_key(b), []).append(b)
    if by == "node":
        lanes = dict(sorted(lanes.items(), key=lambda kv: (kv[0] == "(not run)", kv[0])))
    height = top + len(lanes) * lane_h + 12
    out = [f'<svg class="gantt" id="gantt-{by}" data-by="{by}" viewBox="0 0 {label_w + plot_w + 20} {height}" '
           f'width="100%" style="min-width:900px" role="img" aria-label="timeline of batches per {by}">',
           '<defs><pattern id="hatch-' + by + '" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eef0f3"/>'
           '<line x1="0" y1="0" x2="0" y2="6" stroke="#b8bec8" stroke-width="2"/></pattern></defs>']
    step = _nice_step(span)
    t = 0.0
    while t <= span + 1e-9:
        x = label_w + t * unit
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 8}" stroke="#edf0f3"/>'
                   f'<text x="{x:.1f}" y="{top - 12}" font-size="11" fill="#667085" text-anchor="middle">'
                   f"{secs(t)}</text>")
        t += step
    for i, (name, rows) in enumerate(lanes.items()):
        y = top + i * lane_h
        nodes = sorted({b["node"] for b in rows if b["node"]})
        sub = ", ".join(nodes) if by == "worker" else ", ".join(sorted({worker_label(b["worker"]) for b in rows}))
        if i % 2:
            out.append(f'<rect x="0" y="{y}" width="{label_w + plot_w + 20}" height="{lane_h}" fill="#fafbfc"/>')
        out.append(f'<text x="8" y="{y + 16}" font-size="13" font-weight="600" fill="#1d2330">{esc(name)}</text>'
                   f'<text x="8" y="{y + 30}" font-size="11" fill="#667085">{esc(_clip(sub, 24))}</text>')
        lane_end = label_w
        ran = [b for b in rows if b["started"] and (b["ended"] or b["state"] == "running")]
        for b in ran:
            start = (b["started"] - t0) * unit
            end = ((b["ended"] or d.t_end) - t0) * unit
            x, w = label_w + start, max(end - start, 2.0)
            lane_end = max(lane_end, x + w)
            out.append(_bar(d, b, x, y + (lane_h - bar_h) / 2, w, bar_h, by, ran=True))
        x = lane_end + 4
        for b in rows:
            if b in ran:
                continue
            out.append(_bar(d, b, x, y + (lane_h - bar_h) / 2, 16, bar_h, by, ran=False))
            x += 20
    for e in d.events:
        mark = {"merge_started": ("merge", "#3b7dd8"), "interrupted": ("interrupted", "#d6a21e"),
                "conflict": ("conflict", "#d64545"), "run_resumed": ("resumed", "#8e5bd6")}.get(e.kind)
        if mark is None:
            continue
        x = label_w + (e.ts - t0) * unit
        out.append(f'<g class="marker" data-kind="{esc(e.kind)}"><line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" '
                   f'y2="{height - 8}" stroke="{mark[1]}" stroke-dasharray="4 3" stroke-width="1.5"/>'
                   f'<text x="{x + 3:.1f}" y="{height - 12}" font-size="11" fill="{mark[1]}">{mark[0]}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _bar(d: RunData, b: dict[str, Any], x: float, y: float, w: float, h: float, by: str, ran: bool) -> str:
    state = b["state"]
    color = COLORS.get(state, "#8a94a6")
    dur = duration_of(b)
    start = f"{b['started'] - d.t0:.3f}" if ran else ""
    tip = (f"batch {b['unit_id']}: {d.description(b['unit_id'])}\n{state}"
           + (f" in {secs(dur)}" if dur is not None else "")
           + (f" on {b['node']}" if b["node"] else "") + f", worker {worker_label(b['worker'])}"
           + (f", {money(b['cost_usd'])}" if b["cost_usd"] is not None else "")
           + (f"\n{bounded_tail(b['error'], lines=5, max_bytes=2048)}" if b["error"] and state != "ok" else ""))
    fill = color if ran else f"url(#hatch-{by})"
    stroke = "" if ran else f' stroke="{color}" stroke-width="1.5"'
    label = ""
    text = str(b["unit_id"])
    if ran and w > 7 * len(text) + 8:
        label = (f'<text x="{x + 6:.1f}" y="{y + h / 2 + 4.5:.1f}" font-size="12" fill="#fff" '
                 f'font-weight="600">{esc(text)}</text>')
    dur_attr = "" if dur is None else f"{dur:.3f}"
    cost_attr = "" if b["cost_usd"] is None else b["cost_usd"]
    return (f'<g class="bar" data-batch="{esc(b["unit_id"])}" data-worker="{worker_label(b["worker"])}" '
            f'data-node="{esc(b["node"] or "")}" data-status="{esc(state)}" data-start="{start}" '
            f'data-duration="{dur_attr}" data-cost="{cost_attr}">'
            f"<title>{esc(tip)}</title>"
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h}" rx="4" fill="{fill}"{stroke}/>{label}</g>')


def dependency_graph(d: RunData) -> str:
    """Units as boxes in columns by dependency depth; an arrow from each dependency to its dependent (every edge of
    the unit graph: stages, the units of a sequential batch, declared ``depends_on``), dashed where the two ran
    on different workers (the dependency's work was merged into the unit's base)."""
    deps = d.depends_on()
    rows = {b["unit_id"]: b for b in d.units}
    ids = [b["unit_id"] for b in sorted(d.units, key=lambda b: b["position"])]
    depth = _depths(ids, {b: [x for x in deps.get(b, []) if x in rows] for b in ids})
    columns: dict[int, list[str]] = {}
    for b in ids:
        columns.setdefault(depth[b], []).append(b)
    box_w, box_h, gap_x, gap_y, pad = 150, 44, 70, 16, 12
    pos: dict[str, tuple[float, float]] = {}
    for c, members in columns.items():
        for r, b in enumerate(members):
            pos[b] = (pad + c * (box_w + gap_x), pad + r * (box_h + gap_y))
    width = pad * 2 + len(columns) * (box_w + gap_x) - gap_x
    height = pad * 2 + max((len(m) for m in columns.values()), default=1) * (box_h + gap_y) - gap_y
    out = [f'<svg id="dependency-graph" viewBox="0 0 {max(width, 200)} {max(height, 60)}" width="{max(width, 200)}" '
           f'role="img" aria-label="dependency graph">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8a94a6"/></marker></defs>']
    for b in ids:
        for dep in deps.get(b, []):
            if dep not in pos:
                continue
            (x1, y1), (x2, y2) = pos[dep], pos[b]
            x1, y1, x2, y2 = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
            mid = (x1 + x2) / 2
            a, z = rows[dep]["worker"], rows[b]["worker"]
            cross = a is not None and z is not None and a >= 0 and z >= 0 and a != z
            dash = ' stroke-dasharray="5 4"' if cross else ""
            out.append(f'<path class="edge" data-from="{esc(dep)}" data-to="{esc(b)}" data-cross="{str(cross).lower()}"'
                       f' d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2 - 2:.1f},{y2:.1f}" '
                       f'fill="none" stroke="#8a94a6" stroke-width="1.5"{dash} marker-end="url(#arrow)"/>')
    for b in ids:
        x, y = pos[b]
        row = rows[b]
        color = COLORS.get(row["state"], "#8a94a6")
        dur = duration_of(row)
        sub = f"{worker_label(row['worker'])} · {row['state']}" + (f" · {secs(dur)}" if dur is not None else "")
        out.append(f'<g class="node" data-batch="{esc(b)}" data-status="{esc(row["state"])}">'
                   f"<title>{esc(f'batch {b}: {d.description(b)}')}</title>"
                   f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="#fff" stroke="{color}" '
                   f'stroke-width="2"/><rect x="{x}" y="{y}" width="6" height="{box_h}" rx="3" fill="{color}"/>'
                   f'<text x="{x + 14}" y="{y + 18}" font-size="13" font-weight="600" fill="#1d2330">'
                   f"{esc(_clip(b, 18))}</text>"
                   f'<text x="{x + 14}" y="{y + 34}" font-size="11" fill="#667085">{esc(sub)}</text></g>')
    out.append("</svg>")
    if not any(deps.values()):
        out.append('<p class="ok-note">No dependencies: every unit was independent.</p>')
    return "".join(out)


def _depths(ids: list[str], deps: dict[str, list[str]]) -> dict[str, int]:
    """Each node's column: one more than its deepest dependency (Kahn's order, so no recursion on long chains;
    a node on a cycle, which a journal should never hold, goes to column 0)."""
    users: dict[str, list[str]] = {b: [] for b in ids}
    for b in ids:
        for x in deps[b]:
            users[x].append(b)
    missing = {b: len(deps[b]) for b in ids}
    order = [b for b in ids if not missing[b]]
    depth: dict[str, int] = {}
    for b in order:  # grows while it is read
        depth[b] = 1 + max((depth[x] for x in deps[b]), default=-1)
        for u in users[b]:
            missing[u] -= 1
            if not missing[u]:
                order.append(u)
    return {b: depth.get(b, 0) for b in ids}


def _problems(d: RunData) -> str:
    items: list[str] = []
    for b in d.units:
        if b["state"] in BAD:
            detail = [f"result {b['result_class']}" if b["result_class"] else "",
                      f"exit code {b['exit_code']}" if b["exit_code"] is not None else "",
                      f"attempt {b['attempt']}" if (b["attempt"] or 1) > 1 else "",
                      f"on {b['node']}" if b["node"] else ""]
            log = f'<div class="mono">log: {esc(b["log_path"])}</div>' if b["log_path"] else ""
            items.append(f'<div class="problem" data-batch="{esc(b["unit_id"])}"><b>batch {esc(b["unit_id"])}</b> '
                         f"({worker_label(b['worker'])}) <b>{esc(b['state'])}</b>: "
                         f"{esc(bounded_tail(b['error'] or ''))}"
                         f'<div class="sub" style="margin:2px 0 0">{esc(", ".join(x for x in detail if x))}</div>'
                         f"{log}</div>")
    for e in d.events:
        if e.kind == "conflict":
            files = ", ".join(e.data.get("files", []))
            where = f" for batch {e.unit_id}" if e.unit_id else ""
            into = e.data.get("ours") or (worker_label(e.worker) if e.worker is not None else "")
            items.append(f'<div class="problem conflict"><b>merge conflict</b> '
                         f"({esc(e.data.get('stage'))}{esc(where)}): {esc(e.data.get('theirs'))} into {esc(into)}"
                         f'<div class="mono">conflicting: {esc(files)}</div></div>')
        elif e.kind in ("conflict_resolved", "resolve_failed"):
            what = "resolved by the agent" if e.kind == "conflict_resolved" else f"NOT resolved: {e.data.get('why')}"
            items.append(f'<div class="problem conflict"><b>conflict of {esc(", ".join(e.data.get("units", [])))}'
                         f"</b> in {esc(', '.join(e.data.get('files', [])))}: {esc(what)}"
                         f'<pre>{esc(e.data.get("diff") or "")}</pre></div>')
        elif e.kind == "unit_rerun":
            items.append(f'<div class="problem"><b>rerun</b> of batch {esc(e.unit_id)} (the merge queue, '
                         f"{esc(e.data.get('count'))}): {esc(e.data.get('reason'))}"
                         f'<div class="mono">earlier try: {esc(e.data.get("saved_ref"))}</div></div>')
        elif e.kind in ("unit_error", "unit_retry"):
            what = "retried" if e.kind == "unit_retry" else "transport error"
            items.append(f'<div class="problem"><b>{what}</b> on {worker_label(e.worker)} (batch {esc(e.unit_id)}, '
                         f"attempt {esc(e.data.get('attempt'))}): "
                         f"{esc(bounded_tail(str(e.data.get('error') or '')))}</div>")
    conflict = d.summary.get("conflict")
    if conflict and conflict.get("commands"):
        items.append('<div class="problem conflict"><b>to continue after resolving</b><pre>'
                     + esc("\n".join(conflict["commands"])) + "</pre></div>")
    for e in d.summary.get("errors") or []:
        items.append(f'<div class="problem"><b>error</b>: {esc(e)}</div>')
    skipped = [b["unit_id"] for b in d.units if b["state"] == "skipped"]
    if skipped:
        items.append(f'<p class="ok-note">Skipped because an earlier batch or a dependency did not succeed: '
                     f"{esc(', '.join(skipped))}.</p>")
    if not items:
        return '<p class="ok-note">None: every unit succeeded and the units merged cleanly.</p>'
    return '<div id="problems">' + "".join(items) + "</div>"


def _batch_table(d: RunData) -> str:
    head = ("unit", "description", "worker", "node", "state", "result", "attempt", "duration", "cost",
            "tokens in/out", "commit")
    rows = []
    for b in d.units:
        color = COLORS.get(b["state"], "#8a94a6")
        tokens = (f"{b['input_tokens'] or 0:,} / {b['output_tokens'] or 0:,}"
                  if b["input_tokens"] is not None or b["output_tokens"] is not None else "-")
        cells = [
            f"<b>{esc(b['unit_id'])}</b>", esc(d.description(b["unit_id"])), worker_label(b['worker']),
            esc(b["node"] or "-"), f'<i class="dot" style="background:{color}"></i>{esc(b["state"])}',
            esc(b["result_class"] or "-"), str(b["attempt"] or "-"),
        ]
        nums = [secs(duration_of(b)), money(b["cost_usd"]), tokens]
        commit = f'<span class="mono">{esc((b["commit_oid"] or "")[:10])}</span>' if b["changed"] else "-"
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells)
                    + "".join(f'<td class="num">{c}</td>' for c in nums) + f"<td>{commit}</td></tr>")
    return ('<table id="batches"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")
