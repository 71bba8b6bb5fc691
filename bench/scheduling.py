"""2. Scheduling quality: makespan / lower bound for each plan shape and strategy.

*Predicted*: the static scheduler's own estimate (what ``distpar plan``/``--dry-run`` shows), and the executor's
run-time dispatch simulated on the real run state (``bench.simulate``: no overhead, durations = estimates); both
pure and instant, so many shapes, sizes and worker counts.
*Measured*: a few real runs with short sleeps; there the makespan is the agents' span (first agent start to
last agent end) and, separately, the whole wall time, both over the lower bound in seconds. The lower bound
is always that of N workers, also for the midpoint split (which only ever uses two workers): the question is
what the seed's split gives away against what N workers can do. ``balanced`` (the default) is dispatched at run
time; ``midpoint`` and ``round-robin`` stay pinned to their lanes.
"""

from __future__ import annotations

from typing import Any

from bench import simulate
from bench.config import Config
from bench.harness import Session
from bench.plans import SHAPES, make_shape, to_plan
from bench.stats import actual_bound, summary
from distpar.core.schedule import STRATEGIES, make_schedule


def predicted(cfg: Config) -> list[dict[str, Any]]:
    rows = []
    for shape in SHAPES:
        for n in cfg.sched_sizes:
            nodes = make_shape(shape, n)
            plan = to_plan(nodes)
            durations = {x.id: x.seconds / 60.0 for x in nodes}  # the scheduler's unit: minutes
            for w in cfg.sched_workers:
                row: dict[str, Any] = {"shape": shape, "batches": len(nodes), "workers": w}
                for strategy in STRATEGIES:
                    s = make_schedule(plan, w, strategy)
                    row[strategy] = {
                        "makespan": round(s.makespan, 5),
                        "lower_bound": round(s.lower_bound, 5),
                        "ratio": round(s.makespan / s.lower_bound, 4),
                        "lanes": len(s.lanes),
                        "cross_stream_waits": sum(len(v) for v in s.waits.values()),
                        "dispatch_ratio": round(simulate.dispatch(plan, s, durations).makespan / s.lower_bound, 4),
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
        plan = to_plan(nodes)
        for strategy in STRATEGIES:
            recs = runs[strategy]
            lb = recs[0].predicted["lower_bound"]
            sim = simulate.dispatch(plan, make_schedule(plan, w, strategy), {x.id: x.seconds for x in nodes})
            rows.append({
                "shape": shape,
                "batches": len(nodes),
                "workers": w,
                "strategy": strategy,
                "used_workers": recs[0].used_workers,
                "lower_bound_s": round(lb, 4),
                "batch_seconds": [min(x.seconds for x in nodes), max(x.seconds for x in nodes)],
                "predicted_ratio": round(recs[0].predicted["makespan"] / lb, 4),
                "dispatch_ratio": round(sim.makespan / lb, 4),
                "span_ratio": summary([r.agent_span / lb for r in recs]),
                "wall_ratio": summary([r.wall / lb for r in recs]),
                # the same over the bound of the durations the agents really took (their start-up included)
                "actual_bound_s": summary([actual_bound(nodes, r.timeline, w) for r in recs]),
                "actual_span_ratio": summary([r.agent_span / actual_bound(nodes, r.timeline, w) for r in recs]),
                "runs": [r.to_dict() for r in recs],
            })
    return rows


def run(session: Session, cfg: Config) -> dict[str, Any]:
    session.log("  scheduling: predicted (pure)")
    return {"predicted": predicted(cfg), "measured": measured(session, cfg)}
