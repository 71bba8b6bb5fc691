"""5. Backends: the same plan on the local backend, on Ray and over SSH, where they are available.

A backend is *available* when its module imports and a run on it succeeds; otherwise the result says "not
available" and why (module missing, no hosts given, the run failed), and nothing else is affected. Options:
``--ray-address`` (default: a local Ray instance, or ``$RAY_ADDRESS``) and ``--ssh-hosts`` (loopback sshd
hosts, e.g. ``127.0.0.1:2222,127.0.0.1:2223``), passed to the backends as the CLI passes them.
The full profile runs Ray on a local multi-node cluster it starts (``ray_cluster``) and also the issue's Ray
target there: 64 independent 5-second batches on 32 workers (efficiency taken conservatively, with the plan's
pure work as the serial time); without ``--ssh-hosts`` it starts loopback sshd servers (``bench.loopback``) for
SSH. The quick profile makes one run on the local Ray instance the backend starts by itself (so that run's wall
time includes Ray's start-up), and one over loopback SSH.

The full profile also measures issue 11's backend targets: 16 x 2 s on Ray with 8 workers, Ray started by the
backend for the run (before any cluster of this section exists, so start-up is included), against the same
plan on local ``--workers 1``; and 12 x 3 s over SSH on 2 hosts x 3 slots (6 workers spread evenly), its
speedup taken conservatively against the plan's pure work (a serial run takes at least that). These target runs
use ``--stagger 0`` (see ``TARGET_STAGGER``), and each waits first for the CPUs to be idle again
(``Session.settle``): on 2 cores the tail of the run before (a Ray cluster's teardown) costs a target run 10-20 %.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.config import Config
from bench.harness import Session
from bench.loopback import loopback_hosts
from bench.plans import make_shape
from bench.speedup import ideal_speedup
from bench.stats import summary

# The issue-11 backend targets run with --stagger 0. The default (0.1 s between agent starts in one worker process)
# spares a provider bursts of new sessions; the fake agent has no provider, and the targets measure how fast
# distpar dispatches. With one process per Ray node (or SSH slot host) the default would add 0.1 s per start of
# a burst there: 0.7 s per wave of 8 agents on a node.
TARGET_STAGGER = 0.0


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    ray_address: str | None = None
    ssh_hosts: tuple[str, ...] = ()
    ssh_identity: str | None = None
    accept_unknown_hosts: bool = False


def _importable(name: str) -> str | None:
    """None when ``distpar.backends.<name>`` imports, else the reason it does not."""
    try:
        importlib.import_module(f"distpar.backends.{name}")
    except Exception as exc:  # ImportError, or a broken module being written by someone else
        return f"{type(exc).__name__}: {exc}"
    return None


def _options(name: str, remote: RemoteOptions) -> dict[str, Any] | str:
    """The backend's options as the CLI builds them, or the reason it cannot be tried."""
    if name == "local":
        return {}
    if name == "ray":
        return {"address": remote.ray_address}
    if not remote.ssh_hosts:
        return "no SSH hosts given (pass --ssh-hosts HOST[:PORT],...)"
    return {"hosts": list(remote.ssh_hosts), "hosts_file": None,
            "identity": Path(remote.ssh_identity) if remote.ssh_identity else None,
            "accept_unknown_hosts": remote.accept_unknown_hosts}


@contextmanager
def ray_cluster(session: Session, cfg: Config, remote: RemoteOptions) -> Iterator[str]:
    """What the Ray runs connect to: ``--ray-address`` when given; else, in profiles that ask for one, a local
    multi-node cluster (``ray.cluster_utils.Cluster``: nodes of one CPU each, with ``distpar_slot`` resources)
    that this process joins as the driver, so that the backend reuses the connection; else a description of
    the local Ray instance the backend starts by itself on every run (its start-up is then part of the wall)."""
    if remote.ray_address or not cfg.ray_cluster:
        yield remote.ray_address or "a local Ray instance started by the backend for each run"
        return
    import ray
    from ray.cluster_utils import Cluster

    from distpar.backends.ray import SLOT

    nodes, slots = cfg.ray_cluster
    args: dict[str, Any] = {"num_cpus": 1, "resources": {SLOT: slots}, "object_store_memory": 80 * 2**20}
    session.log(f"  backends: starting a local Ray cluster of {nodes} nodes x {slots} slots")
    cluster = Cluster(initialize_head=True, head_node_args=args)
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        yield f"a local Ray cluster of {nodes} nodes x {slots} distpar slots ({cluster.address})"
    finally:
        ray.shutdown()
        cluster.shutdown()


@contextmanager
def ssh_hosts(session: Session, cfg: Config, remote: RemoteOptions) -> Iterator[tuple[RemoteOptions, str | None]]:
    """``--ssh-hosts`` when given; else loopback sshd servers when the profile asks for them."""
    if remote.ssh_hosts or not cfg.ssh_loopback or _importable("ssh") is not None:
        yield remote, (f"{len(remote.ssh_hosts)} given host(s)" if remote.ssh_hosts else None)
        return
    session.log(f"  backends: starting {cfg.ssh_loopback} loopback sshd servers")
    with loopback_hosts(session.root / "sshd", cfg.ssh_loopback) as (hosts, key):
        yield (replace(remote, ssh_hosts=tuple(hosts), ssh_identity=str(key), accept_unknown_hosts=True),
               f"{len(hosts)} loopback sshd servers started by the benchmark")


def run(session: Session, cfg: Config, remote: RemoteOptions) -> dict[str, Any]:
    with ExitStack() as stack:
        try:
            remote_ssh, where = stack.enter_context(ssh_hosts(session, cfg, remote))
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:  # no sshd here: go on without
            session.log(f"  backends: no loopback SSH hosts: {exc}")
            remote_ssh, where = remote, f"could not start loopback sshd servers: {exc}"[:400]
        speedup = _ray_speedup(session, cfg, remote) if cfg.ray_speedup else None
        out = _run_ray(session, cfg, remote_ssh)
        if cfg.ray_floor and not cfg.ray_cluster and _importable("ray") is None:
            out["ray_floor"] = _floor_on_own_cluster(session, cfg, remote)
        if speedup is not None:
            out["ray_speedup"] = speedup
        out["ssh_hosts"] = where
        if cfg.ssh_target:
            out["ssh_target"] = _ssh_target(session, cfg, remote_ssh)
        return out


def _ray_speedup(session: Session, cfg: Config, remote: RemoteOptions) -> dict[str, Any]:
    """n x secs on Ray with w workers (start-up included unless --ray-address names a running cluster) against
    local --workers 1, one run each."""
    assert cfg.ray_speedup
    n, secs, w = cfg.ray_speedup
    why = _importable("ray")
    if why:
        return {"error": f"Ray backend not available: {why}"[:600]}
    nodes = make_shape("independent-equal", n, secs)
    try:
        session.log(f"  backends: Ray speedup, {n} x {secs:g}s, local --workers 1")
        session.settle()
        serial = session.run("ray-speedup-local-w1", nodes, 1)
        session.log(f"  backends: Ray speedup, {n} x {secs:g}s, Ray --workers {w} (start-up included)")
        session.settle()
        ray = session.run(f"ray-speedup-w{w}", nodes, w, backend="ray",
                          backend_options={"address": remote.ray_address}, stagger=TARGET_STAGGER)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:600]}
    return {"batches": n, "seconds": secs, "workers": w, "serial_wall": round(serial.wall, 4),
            "wall": round(ray.wall, 4), "speedup": round(serial.wall / ray.wall, 4),
            "startup_included": remote.ray_address is None, "runs": [serial.to_dict(), ray.to_dict()]}


def _ssh_target(session: Session, cfg: Config, remote: RemoteOptions) -> dict[str, Any]:
    assert cfg.ssh_target
    n, secs, w = cfg.ssh_target
    opts = _options("ssh", remote) if _importable("ssh") is None else _importable("ssh")
    if isinstance(opts, str):
        return {"error": f"SSH backend not available: {opts}"[:600]}
    nodes = make_shape("independent-equal", n, secs)
    session.log(f"  backends: SSH target, {n} x {secs:g}s at {w} workers over {len(remote.ssh_hosts)} host(s)")
    session.settle()
    try:
        rec = session.run(f"ssh-target-w{w}", nodes, w, backend="ssh", backend_options=opts, stagger=TARGET_STAGGER)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:600]}
    return {"batches": n, "seconds": secs, "workers": w, "hosts": len(remote.ssh_hosts), "wall": round(rec.wall, 4),
            "conservative_speedup": round(n * secs / rec.wall, 4), "runs": [rec.to_dict()]}


def _run_ray(session: Session, cfg: Config, remote: RemoteOptions) -> dict[str, Any]:
    if _importable("ray") is None:
        try:
            with ray_cluster(session, cfg, remote) as where:
                return _run(session, cfg, remote, where)
        except Exception as exc:  # no cluster: go on without Ray, and say why
            session.log(f"  backends: no Ray cluster: {exc}")
            return _run(session, cfg, remote, None, f"could not start a Ray cluster: {exc}"[:600])
    return _run(session, cfg, remote, None)


def _run(session: Session, cfg: Config, remote: RemoteOptions, ray_where: str | None,
         ray_missing: str | None = None) -> dict[str, Any]:
    n, secs, w = cfg.backend_plan
    nodes = make_shape("independent-equal", n, secs)
    out: dict[str, Any] = {"plan": {"shape": "independent-equal", "batches": n, "seconds": secs, "workers": w},
                           "backends": {}, "ray_cluster": ray_where}
    local_wall = None
    for name in ("local", "ray", "ssh"):
        why = _importable(name) if name != "local" else None
        if name == "ray" and why is None and ray_missing:
            why = ray_missing
        opts = _options(name, remote) if why is None else why
        if isinstance(opts, str):
            out["backends"][name] = {"available": False, "reason": opts}
            session.log(f"  backends: {name} not available: {opts}")
            continue
        recs = []
        try:
            for rep in range(cfg.light_reps):
                session.log(f"  backends: {name}, {n} x {secs:g}s at {w} workers, rep {rep + 1}")
                recs.append(session.run(f"backend-{name}", nodes, w, backend=name, backend_options=opts))
        except Exception as exc:  # a backend under construction may fail in any way: record it, go on
            out["backends"][name] = {"available": False, "reason": f"run failed: {type(exc).__name__}: {exc}"[:600]}
            session.log(f"  backends: {name} not available: {exc}")
            continue
        wall = summary([r.wall for r in recs])
        local_wall = local_wall or wall["median"]
        out["backends"][name] = {
            "available": True,
            "wall": wall,
            "over_local": round(wall["median"] / local_wall, 4),
            "efficiency_vs_lower_bound": summary([r.predicted["lower_bound"] / r.wall for r in recs]),
            "runs": [r.to_dict() for r in recs],
        }
    if cfg.ray_target and out["backends"].get("ray", {}).get("available"):
        out["ray_target"] = _ray_target(session, cfg, remote)
    if cfg.ray_floor and cfg.ray_cluster and ray_where:
        out["ray_floor"] = _ray_floor(session, cfg, remote, ray_where)
    return out


def _floor_on_own_cluster(session: Session, cfg: Config, remote: RemoteOptions) -> dict[str, Any]:
    try:
        with ray_cluster(session, replace(cfg, ray_cluster=cfg.ray_floor_cluster), remote) as where:
            return _ray_floor(session, cfg, remote, where)
    except Exception as exc:
        return {"error": f"could not start a Ray cluster: {type(exc).__name__}: {exc}"[:600]}


def _ray_floor(session: Session, cfg: Config, remote: RemoteOptions, where: str) -> dict[str, Any]:
    """distpar on Ray and the bare-Ray floor (bench/floor.py), one after the other (reps times), on the same
    cluster in the same session: the ratio of their median walls is distpar's own share."""
    import ray

    from bench.floor import run_floor

    assert cfg.ray_floor
    n, secs, w = cfg.ray_floor
    nodes = make_shape("independent-equal", n, secs)
    if not ray.is_initialized():  # --ray-address: the floor joins it as the backend will
        ray.init(address=remote.ray_address, logging_level=logging.WARNING, log_to_driver=False)
    pairs = []
    try:
        for rep in range(max(1, cfg.light_reps)):
            session.settle()
            load = os.getloadavg()
            session.log(f"  backends: Ray floor, {n} x {secs:g}s at {w} workers, distpar, rep {rep + 1}")
            rec = session.run(f"ray-floor-distpar-w{w}", nodes, w, backend="ray",
                              backend_options={"address": remote.ray_address}, stagger=TARGET_STAGGER)
            session.settle()
            load_floor = os.getloadavg()
            session.log(f"  backends: Ray floor, {n} x {secs:g}s at {w} workers, bare Ray, rep {rep + 1}")
            floor = run_floor(session.repo(2), nodes, w, f"floor{rep}")
            pairs.append({"distpar": round(rec.wall, 4), "floor": floor["wall"],
                          "ratio": round(rec.wall / floor["wall"], 4),
                          "loadavg": [round(load[0], 2), round(load_floor[0], 2)], "floor_run": floor,
                          "distpar_run": rec.to_dict()})
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:600], "pairs": pairs}
    d, f = summary([p["distpar"] for p in pairs]), summary([p["floor"] for p in pairs])
    return {"batches": n, "seconds": secs, "workers": w, "cluster": where, "distpar": d, "floor": f,
            "ratio": round(d["median"] / f["median"], 4), "target": 1.05, "pairs": pairs}


def _ray_target(session: Session, cfg: Config, remote: RemoteOptions) -> dict[str, Any]:
    assert cfg.ray_target
    n, secs, w = cfg.ray_target
    nodes = make_shape("independent-equal", n, secs)
    session.log(f"  backends: Ray target, {n} x {secs:g}s at {w} workers")
    session.settle()
    try:
        rec = session.run(f"ray-target-w{w}", nodes, w, backend="ray", backend_options={"address": remote.ray_address},
                          stagger=TARGET_STAGGER)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:600]}
    ideal = ideal_speedup(nodes, w)
    speedup = n * secs / rec.wall
    return {"batches": n, "seconds": secs, "workers": w, "wall": rec.wall, "ideal": round(ideal, 4),
            "conservative_efficiency": round(speedup / ideal, 4), "runs": [rec.to_dict()]}
