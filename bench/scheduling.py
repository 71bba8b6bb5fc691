"""2. Scheduling quality: makespan / lower bound for each plan shape and strategy.

*Predicted*: the scheduler's own estimate (pure and instant, so many shapes, sizes and worker counts).
*Measured*: a few real runs with short sleeps; there the makespan is the agents' span (first agent start to
last agent end) and, separately, the whole wall time, both over the lower bound in seconds. The lower bound
is always that of N workers, also for the midpoint split (which only ever uses two streams): the question is
what the seed's split gives away against what N workers can do.
"""

from __future__ import annotations

from typing import Any

from bench.config import Config
from bench.harness import Session
from bench.plans import SHAPES, make_shape, to_plan
from bench.stats import summary
from distpar.plan import Plan
from distpar.schedule import STRATEGIES, Schedule, make_schedule


def segment_makespan(schedule: Schedule, plan: Plan) -> float:
    """The makespan when, as the runtime does, a stream runs its batches in *segments* (cut before each batch
    that waits for another stream and after each batch another stream waits for) and hands results back only
    when a whole segment ends: a batch that waits for another stream's batch waits for the end of that
    batch's segment (with the cut after awaited batches, that is the batch itself).

    Streams are consistent with one topological order (that makes schedules deadlock-free), so repeatedly
    starting any stream's next segment whose waits are over ends; ``ValueError`` if it cannot."""
    est = {b.id: b.estimate for b in plan.batches}
    streams: list[list[list[str]]] = []  # stream -> its segments -> batch ids
    seg_of: dict[str, tuple[int, int]] = {}
    for k, st in enumerate(schedule.streams):
        segs: list[list[str]] = []
        awaited = {d for deps in schedule.waits.values() for d in deps}
        for b in st.batch_ids:
            if not segs or schedule.waits.get(b) or segs[-1][-1] in awaited:
                segs.append([])
            segs[-1].append(b)
            seg_of[b] = (k, len(segs) - 1)
        streams.append(segs)
    end: dict[tuple[int, int], float] = {}
    last = [0.0] * len(streams)
    pos = [0] * len(streams)
    remaining = sum(len(segs) for segs in streams)
    while remaining:
        progressed = False
        for k, segs in enumerate(streams):
            while pos[k] < len(segs):
                waits = [seg_of[d] for d in schedule.waits.get(segs[pos[k]][0], ())]
                if not all(w in end for w in waits):
                    break
                start = max([last[k], *(end[w] for w in waits)])
                end[(k, pos[k])] = last[k] = start + sum(est[b] for b in segs[pos[k]])
                pos[k] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise ValueError("segments wait for each other: the schedule is not consistent with one order")
    return max(end.values(), default=0.0)


def predicted(cfg: Config) -> list[dict[str, Any]]:
    rows = []
    for shape in SHAPES:
        for n in cfg.sched_sizes:
            nodes = make_shape(shape, n)
            plan = to_plan(nodes)
            for w in cfg.sched_workers:
                row: dict[str, Any] = {"shape": shape, "batches": len(nodes), "workers": w}
                for strategy in STRATEGIES:
                    s = make_schedule(plan, w, strategy)
                    row[strategy] = {
                        "makespan": round(s.makespan, 5),
                        "lower_bound": round(s.lower_bound, 5),
                        "ratio": round(s.makespan / s.lower_bound, 4),
                        "streams": len(s.streams),
                        "cross_stream_waits": sum(len(v) for v in s.waits.values()),
                        "segment_ratio": round(segment_makespan(s, plan) / s.lower_bound, 4),
                    }
                row["midpoint_over_balanced"] = round(row["midpoint"]["makespan"] / row["balanced"]["makespan"], 4)
                rows.append(row)
    return rows


def measured(session: Session, cfg: Config) -> list[dict[str, Any]]:
    rows = []
    for shape in cfg.measured_shapes:
        nodes = make_shape(shape, cfg.measured_batches, cfg.measured_unit)
        w = cfg.measured_workers
        runs: dict[str, list[Any]] = {s: [] for s in STRATEGIES}
        for rep in range(cfg.light_reps):
            for strategy in STRATEGIES:
                session.log(f"  scheduling: {shape} ({len(nodes)} batches) {strategy} at {w} workers, rep {rep + 1}")
                runs[strategy].append(session.run(f"sched-{shape}-{strategy}", nodes, w, strategy=strategy))
        for strategy in STRATEGIES:
            recs = runs[strategy]
            lb = recs[0].predicted["lower_bound"]
            rows.append({
                "shape": shape,
                "batches": len(nodes),
                "workers": w,
                "strategy": strategy,
                "streams": recs[0].streams,
                "lower_bound_s": round(lb, 4),
                "batch_seconds": [min(x.seconds for x in nodes), max(x.seconds for x in nodes)],
                "predicted_ratio": round(recs[0].predicted["makespan"] / lb, 4),
                "span_ratio": summary([r.agent_span / lb for r in recs]),
                "wall_ratio": summary([r.wall / lb for r in recs]),
                "runs": [r.to_dict() for r in recs],
            })
    return rows


def run(session: Session, cfg: Config) -> dict[str, Any]:
    session.log("  scheduling: predicted (pure)")
    return {"predicted": predicted(cfg), "measured": measured(session, cfg)}
