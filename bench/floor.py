"""The bare-Ray floor (issue 23): the least any tool does to run a plan's units on a Ray cluster.

One actor per node (placed as distpar places its workers: the same nodes, the same slot resources), a thread
per worker slot; each slot clones the repository once from a bundle sent once per node, and for every unit
checks out the start commit, runs the same fake agent distpar runs (the same preset's argv, the prompt on
stdin) and makes one commit. Units are dealt to the slots in turn before the run (equal units: no dynamic
scheduling can do better), nothing comes back but each commit's id, nothing is merged. Its wall time, from
the first actor's creation to the last slot's answer, is what distpar's Ray backend is held against.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.plans import Node, to_batches
from bench.stats import idle_between, min_median_max
from distpar.infra import gitops
from distpar.testing.builders import IDENTITY

AGENT_ARGS = ("-p", "--output-format", "json", "--permission-mode", "bypassPermissions")


class FloorNode:
    """One node's slots, each a thread with its own clone."""

    def __init__(self) -> None:
        if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # as distpar's NodeActor (Ray's subreaper mode)
        self.root = Path(tempfile.mkdtemp(prefix="distpar-floor-"))
        self.lock = threading.Lock()
        self.bundle: Path | None = None

    def ready(self) -> str:
        return str(self.root)

    def run_slot(self, slot: int, bundle: bytes, start: str, units: list[tuple[str, str]]) -> list[list[Any]]:
        """Clone, then per unit: check out ``start``, run the agent on the unit's prompt, commit. Returns
        [unit, commit, agent start, agent end, slot] per unit."""
        with self.lock:  # the bundle lands once per node
            if self.bundle is None:
                self.bundle = self.root / "start.bundle"
                self.bundle.write_bytes(bundle)
        ws = self.root / f"w{slot}"
        env = {**os.environ, **IDENTITY, **({"IS_SANDBOX": "1"} if os.geteuid() == 0 else {})}
        subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(self.bundle), str(ws)], check=True, env=env)
        out = []
        for uid, prompt in units:
            subprocess.run(["git", "checkout", "--quiet", "--force", "-B", "unit", start], cwd=ws, check=True,
                           env=env)
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "distpar.testing.fake_agent", *AGENT_ARGS,
                            f"--session-id={uuid.uuid4()}"], cwd=ws, input=prompt, text=True, check=True,
                           capture_output=True, env=env)
            t1 = time.time()
            subprocess.run(["git", "add", "--all"], cwd=ws, check=True, env=env)
            subprocess.run(["git", "commit", "--quiet", "--no-verify", "-m", f"unit {uid}"], cwd=ws, check=True,
                           env=env)
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, check=True, env=env, text=True,
                                    capture_output=True).stdout.strip()
            out.append([uid, commit, t0, t1, slot])
        return out

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


def _spread(results: list[list[Any]], t0: float) -> dict[str, list[float]]:
    """[min, median, max] of the seconds between one agent's end and the next one's start in a slot, of when each
    slot's first agent started, and of how long the agents ran."""
    firsts: dict[int, float] = {}
    for r in results:
        firsts[r[4]] = min(firsts.get(r[4], r[2]), r[2])
    return {"gaps": min_median_max(idle_between((r[4], r[2], r[3]) for r in results)),
            "first_starts": min_median_max(v - t0 for v in firsts.values()),
            "durations": min_median_max(r[3] - r[2] for r in results)}


def run_floor(repo: Path, nodes: list[Node], workers: int, nonce: str) -> dict[str, Any]:
    """The floor for ``nodes`` (one unit each, the same prompts distpar gets) on ``workers`` slots of the Ray
    cluster this process is connected to."""
    import ray
    import ray.cloudpickle
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from distpar.backends.ray import SLOT, placement

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the nodes need not import bench
    prompts = [(b["id"], b["agents"][0]["prompt"]) for b in to_batches(nodes, nonce)]
    start = gitops.rev(repo, "HEAD")
    t0, t_wall0 = time.perf_counter(), time.time()
    with tempfile.TemporaryDirectory(prefix="floor-bundle-") as tmp:
        gitops.bundle_create(repo, Path(tmp) / "b", ["HEAD"])
        bundle = ray.put((Path(tmp) / "b").read_bytes())
    per_slot = bool(ray.cluster_resources().get(SLOT, 0))
    places = placement(ray.nodes(), workers, per_slot)
    actor: Any = ray.remote(FloorNode)
    actors: list[Any] = []
    calls = []
    slots = [w for ws in places.values() for w in ws]
    dealt = {w: [p for i, p in enumerate(prompts) if i % len(slots) == k] for k, w in enumerate(slots)}
    for node, ws in places.items():
        need: dict[str, Any] = {"num_cpus": 0, "resources": {SLOT: len(ws)}} if per_slot else {"num_cpus": 0.01}
        a = actor.options(max_concurrency=len(ws) + 1, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False), **need).remote()
        actors.append(a)
        calls += [a.run_slot.remote(w, bundle, start, dealt[w]) for w in ws]
    try:
        results = [row for rows in ray.get(calls, timeout=3600) for row in rows]
        wall = time.perf_counter() - t0
    finally:
        ray.get([a.close.remote() for a in actors], timeout=120)
        for a in actors:
            ray.kill(a)
    assert len(results) == len(prompts) and all(len(r[1]) >= 40 for r in results)
    return {"wall": round(wall, 4), "units": len(results), "workers": len(slots), "actors": len(actors),
            "agent_busy": round(sum(r[3] - r[2] for r in results), 3),
            "first_agent": round(min(r[2] for r in results) - t_wall0, 3),
            "last_agent_end": round(max(r[3] for r in results) - t_wall0, 3),
            **_spread(results, t_wall0)}
