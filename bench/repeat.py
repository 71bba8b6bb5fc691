"""9. Repeat runs (issue 23): what ``--reuse-workspaces`` saves when plans follow each other on one repository.

For each repository size (``Config.repeat_sizes``: 1,000 and 20,000 files, with a ``package.json``, and a
``.gitignore`` naming ``node_modules/``) and each backend (``Config.repeat_backends``: local; SSH over loopback
sshd servers the section starts; Ray on a local cluster of ``Config.repeat_ray_cluster`` nodes x slots it
starts), two plan runs one after the other on the same repository, each with

    --reuse-workspaces --setup 'sleep S; mkdir -p node_modules; touch node_modules/.done' --setup-key package.json

on ``Config.repeat_workers`` workers, ``Config.repeat_units`` zero-second fake-agent units each (every unit writes
a file of its own, so run 2 starts from a target that run 1 moved). Each backend keeps its pool in its own place
(local: the worktrees base; Ray: the nodes' directory; SSH: each host's work directory), all under the session's
scratch, so run 1 starts from an empty pool: its workers must report ``how="new"``.

Measured per run: the wall time (``prepare_run`` + ``Runner.run``, as ``Session.run`` times it), the load, and per
worker the ``workspace_ready`` event its first unit journaled (``seconds`` from the unit's arrival at the worker to
its workspace being ready, setup included; ``how``; ``setup`` ran/kept/none; ``setup_seconds``). What the run left
running (workspaces handed back to the pool, removal) is waited for before the next run and reported as ``after``.
The target: run 2's wall at most 0.6 x run 1's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.backends import RemoteOptions, _importable, ray_cluster
from bench.config import Config
from bench.harness import Session, ended_ok
from bench.loopback import loopback_hosts
from bench.plans import make_shape, to_batches
from distpar.coordinator.options import RunOptions
from distpar.coordinator.prepare import prepare_run
from distpar.core.model import AgentConfig
from distpar.testing.builders import make_repo, write_plan

TARGET = 0.6  # run 2's wall over run 1's
SETUP = "sleep {seconds:g}; mkdir -p node_modules; touch node_modules/.done"
SETUP_KEY = "package.json"
READY = ("worker", "node", "how", "reason", "seconds", "setup", "setup_seconds")
AFTER_LIMIT = 120.0  # seconds to wait, over all of them, for what a run left running
# Threads a run leaves that live on by design (the Ray client's loop, log pumps, SSH channels): not waited for.
LASTING = ("distpar-capture", "distpar-ssh-")


def repository(root: Path, files: int) -> Path:
    """A repository of ``files`` files: small modules, a README, ``package.json`` (the setup key) and a
    ``.gitignore`` that keeps ``node_modules/`` (what the setup makes) out of the units' commits."""
    content = {f"pkg{i // 200:03d}/mod{i:05d}.py": f"VALUE = {i}\n" for i in range(max(0, files - 3))}
    content.update({"README.md": "# bench: repeat runs\n", "package.json": '{"name": "bench", "version": "1.0.0"}\n',
                    ".gitignore": "node_modules/\n"})
    return make_repo(root / f"repeat-{files}", content)


def options(setup: float, backend: str, backend_options: dict[str, Any]) -> RunOptions:
    """The run's options: ``--reuse-workspaces --setup ... --setup-key package.json``, ``--stagger 0``."""
    return RunOptions(agent=AgentConfig(preset="fake"), backend=backend, backend_options=backend_options,
                      setup=SETUP.format(seconds=setup), stagger=0.0, reuse_workspaces=True, setup_key=(SETUP_KEY,))


def readiness(events: list[Any]) -> list[dict[str, Any]]:
    """The ``workspace_ready`` events of a run, one per worker, by worker."""
    out = []
    for e in events:
        if e.kind != "workspace_ready":
            continue
        row = {k: e.data.get(k) for k in READY}
        if row["worker"] is None:
            row["worker"] = e.worker
        for k in ("seconds", "setup_seconds"):
            row[k] = round(float(row[k]), 3) if isinstance(row[k], (int, float)) else None
        out.append(row)
    return sorted(out, key=lambda r: (r["worker"] if isinstance(r["worker"], int) else 10**6, str(r["node"])))


def _wait_for_leftovers(before: set[threading.Thread]) -> list[str]:
    """Wait (bounded) for the threads a run left running (distpar's own, and any that would keep the process
    alive); the names of those still running after it."""
    deadline = time.monotonic() + AFTER_LIMIT
    left = []
    for th in set(threading.enumerate()) - before:
        ours = th.name.startswith("distpar-") and th.name != "distpar-ray" and not th.name.startswith(LASTING)
        if not (ours or not th.daemon):
            continue
        th.join(timeout=max(0.0, deadline - time.monotonic()))
        if th.is_alive():
            left.append(th.name)
    return left


def run_once(session: Session, repo: Path, label: str, cfg: Config, backend: str,
             backend_options: dict[str, Any]) -> dict[str, Any]:
    """One plan run with ``--reuse-workspaces``; its wall time and its workers' readiness."""
    nonce = f"{label}-{time.monotonic_ns() % 10**6}"
    nodes = make_shape("independent-equal", cfg.repeat_units, 0.0)
    plan_path = write_plan(session.root / f"plan-{nonce}.md", to_batches(nodes, nonce), plan_id=f"bench-{nonce}")
    opts = options(cfg.repeat_setup, backend, backend_options)
    load = os.getloadavg()
    before = set(threading.enumerate())
    t0, w0 = time.perf_counter(), time.time()
    prepared = prepare_run(plan_path, opts, repo=repo, workers=cfg.repeat_workers)
    runner, journal = prepared.runner, prepared.journal
    try:
        w_run = time.time()
        report = runner.run()
        wall = time.perf_counter() - t0
        w_end = time.time()
        t1 = time.perf_counter()
        still = _wait_for_leftovers(before)
        after = time.perf_counter() - t1
        events = journal.events(runner.run_id)
        rows = journal.units(runner.run_id)
    finally:
        journal.close()
    ended_ok(report, f"repeat run {label}")
    session.batches_run += len(rows)
    return {"label": label, "run_id": runner.run_id, "wall": round(wall, 3), "after": round(after, 3),
            "still_running": still, "loadavg": [round(x, 2) for x in load], "units": len(rows),
            "split": split(events, w0, w_run, w_end), "ready": readiness(events)}


SPLIT = ("preflight", "startup", "units", "to_merge", "merge", "end")
SPLIT_HELP = {
    "preflight": "prepare_run: the plan, the repository's checks, the backend built",
    "startup": "Runner.run until the first unit is submitted",
    "units": "the first unit submitted -> the last unit collected (workspaces made ready, setup, agents, commits)",
    "to_merge": "the last unit collected -> the plan-order merge begins (backend closed, early checks)",
    "merge": "the plan-order merge (merge_started -> merged)",
    "end": "merged -> Runner.run returns (landing, workspaces handed back, report, journal)",
}


def split(events: list[Any], w0: float, w_run: float, w_end: float) -> dict[str, float]:
    """Where a run's wall went, from its journal's event times (``SPLIT``; they add up to the wall)."""
    first = min((e.ts for e in events if e.kind == "unit_submitted"), default=w_run)
    last = max((e.ts for e in events if e.kind == "unit_ended"), default=first)
    begun = min((e.ts for e in events if e.kind == "merge_started"), default=last)
    merged = max((e.ts for e in events if e.kind == "merged"), default=begun)
    marks = [w0, w_run, first, last, begun, merged, w_end]
    return {k: round(max(0.0, b - a), 3) for k, a, b in zip(SPLIT, marks[:-1], marks[1:], strict=True)}


def measure(session: Session, repo: Path, files: int, cfg: Config, backend: str,
            backend_options: dict[str, Any], where: str) -> dict[str, Any]:
    """Run 1 and run 2 on ``backend``; the ratio of their walls and the checks the numbers must pass."""
    runs = []
    for i in (1, 2):
        session.log(f"  repeat: {files} files, {backend}, run {i} ({cfg.repeat_units} units, {cfg.repeat_workers} "
                    f"workers, {cfg.repeat_setup:g}-s setup)")
        runs.append(run_once(session, repo, f"repeat-{backend}-{files}-run{i}", cfg, backend, backend_options))
    first, second = runs
    return {"files": files, "backend": backend, "where": where, "workers": cfg.repeat_workers,
            "units": cfg.repeat_units, "setup_seconds": cfg.repeat_setup, "runs": runs,
            "ratio": round(second["wall"] / first["wall"], 3) if first["wall"] else None,
            "checks": checks(first, second, cfg.repeat_workers)}


def checks(first: dict[str, Any], second: dict[str, Any], workers: int) -> dict[str, bool]:
    """What the readiness must say: every worker reported once in each run; run 1 built every workspace and ran
    the setup (a fresh pool); run 2 reused every one and kept the setup."""
    one, two = first["ready"], second["ready"]
    return {
        "every_worker_reported": len(one) == workers and len(two) == workers
        and {r["worker"] for r in one} == {r["worker"] for r in two} == set(range(workers)),
        "run1_new_and_setup_ran": bool(one) and all(r["how"] == "new" and r["setup"] == "ran" for r in one),
        "run2_reused_and_setup_kept": bool(two) and all(r["how"] == "reused" and r["setup"] == "kept" for r in two),
    }


@contextmanager
def _place(session: Session, cfg: Config, backend: str) -> Iterator[tuple[dict[str, Any], str]]:
    """The backend's options and a description of where it runs, with what it needs started (and stopped)."""
    if backend == "local":
        yield {}, "this machine"
    elif backend == "ssh":
        with loopback_hosts(session.root / "sshd-repeat", cfg.repeat_ssh_hosts) as (hosts, key):
            yield ({"hosts": hosts, "hosts_file": None, "identity": key, "accept_unknown_hosts": True},
                   f"{len(hosts)} loopback sshd servers")
    elif backend == "ray":
        with ray_cluster(session, replace(cfg, ray_cluster=cfg.repeat_ray_cluster), RemoteOptions()) as where:
            yield {"address": None}, where
    else:
        raise ValueError(f"unknown backend {backend!r}")


def run(session: Session, cfg: Config) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    repos = {files: repository(session.root, files) for files in cfg.repeat_sizes}
    for backend in cfg.repeat_backends:
        why = _importable(backend) if backend != "local" else None
        if why:
            rows += [{"files": f, "backend": backend, "error": f"not available: {why}"[:600]} for f in repos]
            continue
        try:
            with _place(session, cfg, backend) as (opts, where):
                for files, repo in repos.items():
                    session.settle(limit=30.0)
                    try:
                        rows.append(measure(session, repo, files, cfg, backend, opts, where))
                    except Exception as exc:  # one backend or size failing keeps the others
                        session.log(f"  repeat: {files} files on {backend} failed: {exc}")
                        rows.append({"files": files, "backend": backend, "error": f"{type(exc).__name__}: {exc}"[:600]})
        except Exception as exc:  # could not start the hosts or the cluster
            session.log(f"  repeat: {backend} not available: {exc}")
            rows += [{"files": f, "backend": backend, "error": f"could not start it: {type(exc).__name__}: {exc}"[:600]}
                     for f in repos if not any(r["files"] == f and r["backend"] == backend for r in rows)]
    return {"rows": rows, "target": TARGET, "setup": SETUP.format(seconds=cfg.repeat_setup), "setup_key": SETUP_KEY}


# --- the report ------------------------------------------------------------------------------------------------


def targets(data: dict[str, Any] | None, make: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """One target per backend: the worst ratio over the repository sizes, and the readiness checks."""
    name = "repeat runs with --reuse-workspaces, {} (issue 23)"
    target = f"run 2 <= {TARGET:g} x run 1; run 2 reused, setup kept"
    if not data:
        return [make(name.format("every backend"), target, "-", None, "-", "repeat section not run")]
    out = []
    for backend in dict.fromkeys(r["backend"] for r in data["rows"]):
        rows = [r for r in data["rows"] if r["backend"] == backend]
        errors = [f"{r['files']} files: {r['error']}" for r in rows if "error" in r]
        if errors:
            out.append(make(name.format(backend), target, "-", None, "-", "; ".join(errors)[:300]))
            continue
        worst = max(rows, key=lambda r: r["ratio"])
        ok = worst["ratio"] <= TARGET and all(all(r["checks"].values()) for r in rows)
        failed = [f"{r['files']}: {k}" for r in rows for k, v in r["checks"].items() if not v]
        measured = ", ".join(f"{r['ratio']:.2f} x ({r['files']:,} files)" for r in rows)
        out.append(make(name.format(backend), target, measured, ok,
                        f"{(TARGET - worst['ratio']) / TARGET * 100:+.0f}% headroom",
                        ("failed checks: " + "; ".join(failed) if failed else "readiness checks pass")
                        + f"; load {worst['runs'][0]['loadavg'][0]}"))
    return out


def _node(node: Any) -> str:
    """A node's name, a Ray node id shortened (its first 8 hex digits)."""
    text = str(node)
    return text[:8] if len(text) > 40 and all(c in "0123456789abcdef" for c in text) else text


def _ready_cell(ready: list[dict[str, Any]]) -> str:
    return "<br>".join(f"w{r['worker']}@{_node(r['node'])}: {r['seconds']} s {r['how']}, setup {r['setup']}"
                       + (f" {r['setup_seconds']} s" if r["setup"] == "ran" else "")
                       + (f" ({r['reason']})" if r.get("reason") else "") for r in ready) or "none journaled"


def markdown(data: dict[str, Any], table: Callable[[list[str], list[list[Any]]], str]) -> list[str]:
    rows, readiness_rows, split_rows = [], [], []
    for r in data["rows"]:
        if "error" in r:
            rows.append([r["backend"], f"{r['files']:,}", "-", "-", "-", "-", r["error"][:200]])
            continue
        one, two = r["runs"]
        rows.append([r["backend"], f"{r['files']:,}", f"{one['loadavg'][0]} / {two['loadavg'][0]}",
                     f"{one['wall']:.2f}", f"{two['wall']:.2f}", f"**{r['ratio']:.3f}**",
                     ", ".join(k for k, v in r["checks"].items() if not v) or "all pass"])
        for run in r["runs"]:
            readiness_rows.append([r["backend"], f"{r['files']:,}", run["label"][-4:], f"{run['after']:.2f}",
                                   _ready_cell(run["ready"])])
            if "split" in run:
                split_rows.append([r["backend"], f"{r['files']:,}", run["label"][-4:], f"{run['wall']:.2f}",
                                   *[f"{run['split'][k]:.2f}" for k in SPLIT]])
    return ["", "## 9. Repeat runs (issue 23)", "",
            f"Two plan runs one after the other on the same repository, each `--reuse-workspaces --setup "
            f"'{data['setup']}' --setup-key {data['setup_key']}`, zero-second fake-agent units (bench/repeat.py); "
            f"the pool is empty before run 1. Target: run 2 <= {data['target']:g} x run 1.", "",
            table(["backend", "files", "load (run 1 / 2)", "run 1 wall", "run 2 wall", "ratio", "checks"], rows),
            "", "Per-worker readiness (`workspace_ready`: seconds from the unit's arrival at the worker to the "
            "workspace being ready, setup included); `after`: seconds the run left work running after it returned "
            "(waited for before the next run).", "",
            table(["backend", "files", "run", "after", "workers"], readiness_rows),
            "", "Where each run's wall went (seconds, from the journal's event times):", "",
            table(["backend", "files", "run", "wall", *SPLIT], split_rows), "",
            *[f"- **{k}**: {SPLIT_HELP[k]}" for k in SPLIT]]
