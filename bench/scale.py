"""4. Coordinator scale: planning time and memory for plans of 100 to 10,000 batches, the journal's size per
batch, and the coordinator's memory while it runs 64 workers.

Planning is the parser on the plan file's text and the default scheduler; its memory is the peak of Python
allocations (tracemalloc) during parse + schedule, measured in a separate pass (tracing slows the code).
*Registration* is what the executor's ``Runner`` does with the plan before the first dispatch: the units with
their priorities (``state_units`` of the unit graph: critical path by estimate), the plan and schedule as JSON,
and the journal's run and batch rows — done here the same way, on a scratch journal.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.config import Config
from bench.harness import Session
from bench.plans import make_shape, plan_document
from bench.stats import summary
from distpar.coordinator.journal import Journal
from distpar.core.model import AgentOutcome, UnitResult, UnitStatus
from distpar.core.plan import parse_plan
from distpar.core.schedule import make_schedule
from distpar.core.state import RunState, Start, UnitEnded, WorkerUp
from distpar.core.stateunits import state_units
from distpar.core.units import unit_graph

BENCH_ROOT = Path(__file__).parent.parent  # not resolved: the probe must import this very bench and distpar


def planning(session: Session, cfg: Config) -> list[dict[str, Any]]:
    rows = []
    for n in cfg.scale_sizes:
        nodes = make_shape("mixed-dag", n)
        text = plan_document(nodes)
        parse_t, sched_t, reg_t = [], [], []
        session.log(f"  scale: planning {len(nodes)} batches")
        for rep in range(cfg.planning_reps):
            t0 = time.perf_counter()
            plan = parse_plan(text)
            t1 = time.perf_counter()
            sched = make_schedule(plan, cfg.scale_workers)
            t2 = time.perf_counter()
            parse_t.append(t1 - t0)
            sched_t.append(t2 - t1)
            if cfg.executor_max_units is None or len(nodes) <= cfg.executor_max_units:
                journal = Journal(session.root / f"scale-{n}-{rep}.db")
                t3 = time.perf_counter()
                _register(journal, plan, sched, f"scale-{n}-{rep}")
                reg_t.append(time.perf_counter() - t3)
                journal.close()
        peak = None
        if cfg.trace_max_batches is None or len(nodes) <= cfg.trace_max_batches:
            tracemalloc.start()
            plan = parse_plan(text)
            sched = make_schedule(plan, cfg.scale_workers)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        rows.append({
            "batches": len(nodes),
            "workers": cfg.scale_workers,
            "plan_bytes": len(text),
            "parse": summary(parse_t),
            "schedule": summary(sched_t),
            "planning": summary([a + b for a, b in zip(parse_t, sched_t, strict=True)]),
            "registration": summary(reg_t),
            "planning_peak_mib": round(peak / 2**20, 3) if peak is not None else None,
        })
    return rows


def run_state_cost(session: Session, cfg: Config, events: int = 64) -> list[dict[str, Any]]:
    """Time the run state's decisions on big plans: the units of a mixed-DAG plan, ``scale_workers`` workers
    up, then ``events`` units ending one at a time (each ``handle`` decides what starts next). Per event, in
    milliseconds; the run state's work per event grows with the plan, so this is what a big plan costs the
    coordinator between two units."""
    rows = []
    for n in cfg.scale_sizes:
        nodes = make_shape("mixed-dag", n)
        if cfg.executor_max_units is not None and len(nodes) > cfg.executor_max_units:
            continue
        plan = parse_plan(plan_document(nodes))
        sched = make_schedule(plan, cfg.scale_workers)
        session.log(f"  scale: run state decisions at {len(nodes)} units")
        t0 = time.perf_counter()
        units = state_units(unit_graph(plan, independent=True), sched.strategy, cfg.scale_workers)
        st = RunState.create(units)
        t1 = time.perf_counter()
        started: list[Start] = []
        for w in range(cfg.scale_workers):
            started += [i for i in st.handle(WorkerUp(w)) if isinstance(i, Start)]
        t2 = time.perf_counter()
        times = []
        for _ in range(min(events, len(units))):
            if not started:
                break
            ins = started.pop(0)
            t = time.perf_counter()
            out = st.handle(UnitEnded(ins.uid, ins.worker, UnitStatus.OK))
            times.append(time.perf_counter() - t)
            started += [i for i in out if isinstance(i, Start)]
        rows.append({"units": len(units), "workers": cfg.scale_workers, "units_and_state_s": round(t1 - t0, 4),
                     "first_dispatch_s": round(t2 - t1, 4),
                     "per_event_ms": summary([x * 1000 for x in times])})
    return rows


def _register(journal: Journal, plan: Any, sched: Any, run_id: str) -> None:
    """What ``Runner`` does before dispatching (the unit graph, ``run_row`` and ``start_run``)."""
    units = state_units(unit_graph(plan, independent=True), sched.strategy, sched.workers)
    row = {
        "id": run_id, "plan_path": "bench", "plan_id": plan.plan_id, "repo": "bench", "target": "main",
        "base": "0" * 40, "backend": "local", "workers": sched.workers, "strategy": sched.strategy,
        "state": "running", "started": time.time(), "pid": os.getpid(), "plan": json.dumps(plan.to_dict()),
        "schedule": json.dumps(sched.to_dict()), "options": "{}",
    }
    journal.start_run(row, [(u.uid, u.pin or 0) for u in units])


def journal_size(session: Session, cfg: Config) -> dict[str, Any]:
    """Bytes per batch of a journal that records N batches the way a run does: the run and batch rows, one
    unit_submitted (a unit to a worker), a unit_dispatched (at submit), a unit_started (when the agent starts)
    and a unit_ended per batch, a run_ended (checkpointed, so the WAL is in)."""
    n = cfg.journal_batches
    nodes = make_shape("independent-equal", n, 1.0)
    plan = parse_plan(plan_document(nodes))
    sched = make_schedule(plan, min(n, 16))
    path = session.root / "journal-size.db"
    Journal(path).close()  # the schema alone
    empty = _db_bytes(path)
    journal = Journal(path)
    _register(journal, plan, sched, "size")
    outcome = AgentOutcome("success", True, "done", 0.01, 1000, 200, 0, 0, 1, 500, "session", "fake-model-1")
    now = time.time()
    for i, b in enumerate(plan.batches):
        k = i % sched.workers  # the worker that ran it
        journal.event("size", "unit_submitted", k, b.id, attempt=1, base="0" * 40)
        journal.unit_dispatched("size", b.id, k, 1, "")
        journal.unit_started("size", b.id, k, 1, "node", now)
        journal.unit_ended("size", UnitResult(b.id, k, UnitStatus.OK, 0, now, now + 1, "1" * 40, True, outcome,
                                              f"/state/runs/size/logs/{b.id}.log", "", "", "node", 1))
    journal.end_run("size", "ok", 0, {"state": "ok"})
    journal.close()
    full = _db_bytes(path)
    return {"batches": n, "empty_bytes": empty, "bytes": full, "bytes_per_batch": round((full - empty) / n, 1),
            "includes": "run row (plan and schedule JSON), batch rows, 3 events per batch, indexes"}


def _db_bytes(path: Path) -> int:
    db = sqlite3.connect(str(path))
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return path.stat().st_size + (wal.stat().st_size if (wal := path.with_name(path.name + "-wal")).exists() else 0)


def memory_probe(session: Session, cfg: Config) -> dict[str, Any]:
    session.log(f"  scale: coordinator memory at {cfg.memory_workers} workers (separate process)")
    root = session.root / "probe"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.probe", str(root), str(cfg.memory_workers), str(cfg.memory_seconds)],
        cwd=BENCH_ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-800:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(session: Session, cfg: Config) -> dict[str, Any]:
    return {
        "planning": planning(session, cfg),
        "run_state": run_state_cost(session, cfg),
        "journal": journal_size(session, cfg),
        "memory": memory_probe(session, cfg),
    }
