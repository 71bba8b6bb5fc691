"""The Ray backend's coordinator side (see the package's docstring): placement of the workers on the nodes, their
slots, what each unit is shipped and how its result lands."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distpar.backends import raycompat
from distpar.backends.base import Backend, RunContext
from distpar.backends.ray.node import (
    CANCEL_GRACE,
    CLOSE_WAIT,
    CONNECT_TIMEOUT,
    CONTROL_CALLS,
    CPU_PER_ACTOR,
    HAVE,
    LOCAL_OBJECT_STORE,
    MISSING,
    RESEND,
    SLOT,
    NodeActor,
    cleanup_task,
    stall_after,
)
from distpar.core import names
from distpar.core.errors import BackendError
from distpar.core.model import UnitReply, UnitSpec, WorkerSettings
from distpar.infra import transfer
from distpar.worker.common import safe_name

log = logging.getLogger(__name__)


@dataclass
class _Host:
    """The coordinator's view of one actor and the workers it hosts."""

    handle: Any
    node: str = ""  # where it runs, once it is up
    dead: bool = False  # died or was killed: its workers' next units go to new actors
    killed: bool = False  # killed by cancel() after the grace period


@dataclass
class _Slot:
    """The coordinator's view of one worker: the actor hosting it and what its workspace holds."""

    host: _Host
    have: list[str] = field(default_factory=list)  # commits its workspace holds, newest first (bundle mode)
    configured: bool = False  # the actor has the worker's settings (sent with its first unit there)


def placement(nodes: list[dict[str, Any]], workers: int, per_slot: bool) -> dict[str, list[int]]:
    """Workers spread evenly over the live nodes that can take them: node id -> its workers (in order). With
    ``distpar_slot`` resources a node takes at most its slots; without, any node with CPUs takes workers."""
    room: dict[str, float] = {}
    for n in nodes:
        if not n.get("Alive"):
            continue
        res = n.get("Resources") or {}
        cap = int(res.get(SLOT, 0)) if per_slot else (workers if res.get("CPU", 0) > 0 else 0)
        if cap > 0:
            room[str(n["NodeID"])] = cap
    out: dict[str, list[int]] = {}
    for w in range(workers):
        free = [n for n in room if room[n] > len(out.get(n, []))]
        if not free:
            break
        node = min(free, key=lambda n: (len(out.get(n, [])), -room[n]))  # the emptiest, then the roomiest
        out.setdefault(node, []).append(w)
    return out


class RayBackend(Backend):
    name = "ray"
    remote = True

    def __init__(self, address: str | None = None, *, cancel_grace: float = CANCEL_GRACE) -> None:
        self.address = address
        self.cancel_grace = cancel_grace
        self._ray: Any = None
        self._owns = False  # this backend called ray.init, so close() calls ray.shutdown
        self._client = False  # connected through Ray Client (ray://), which has no streaming generators
        self._ctx: RunContext | None = None
        self._actor: Any = None  # the actor class, with its resources and placement
        self._slots: dict[int, _Slot] = {}
        self._settings: dict[int, WorkerSettings] = {}  # worker -> its settings (for a new actor)
        self._running: dict[int, Future[UnitReply]] = {}  # worker -> its unit's future, until it resolves
        self._full: dict[str, tuple[str, list[Any]]] = {}  # start bundle path -> (its key, [ObjectRef of it])
        self._nodes: set[str] = set()  # nodes that ran units (their run directories need cleaning)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified whenever a unit's future resolves
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._cancelled = threading.Event()
        self._closing = threading.Event()
        self._stopping: threading.Thread | None = None  # ray.shutdown() of an instance this backend started
        self.shipped: list[dict[str, Any]] = []  # per unit sent: worker, unit, start bundle sent?, increment bytes

    def workspace(self, ctx: RunContext, worker: int) -> str:
        return f"wt/w{worker + 1}"  # relative: each actor anchors it in its node's run directory

    def log_dir(self, ctx: RunContext) -> str:
        return "logs"

    def start(self, ctx: RunContext) -> None:
        try:
            import ray
        except ImportError as exc:
            raise BackendError(MISSING) from exc
        stall_after()  # a bad $DISTPAR_RAY_STALL_SECONDS stops the run before anything starts
        self._ctx = ctx
        if not ray.is_initialized():  # otherwise use the connection the caller made
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            try:
                if address:
                    _check_reachable(address)
                    ray.init(address=address, **quiet)
                else:
                    ray.init(address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE,
                             **quiet)
            except BackendError:
                raise
            except Exception as exc:
                ray.shutdown()  # whatever a failed init started
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise BackendError(f"cannot connect to {where}: {_first_line(exc)}") from exc
            self._owns = True
        try:  # one pinned Ray for coordinator and cluster: a mismatch stops here, naming both, nothing started
            raycompat.check_cluster(ray)
        except BackendError:
            if self._owns:
                ray.shutdown()
            raise
        self._ray = ray
        self._client = ray.util.client.ray.is_connected()
        try:
            slots = ray.cluster_resources().get(SLOT, 0)
        except Exception as exc:
            raise BackendError(f"the Ray cluster refused the run: {_first_line(exc)}") from exc
        if slots and slots < ctx.workers:
            raise BackendError(
                f"the Ray cluster has {int(slots)} {SLOT} resources, fewer than the {ctx.workers} workers of the "
                f"run (each worker holds one for the whole run)",
                hint=f"run with --workers {int(slots)} or fewer, or start more nodes with {SLOT} resources")
        self._per_slot = bool(slots)
        self._actor = ray.remote(NodeActor)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="distpar-ray", daemon=True)
        self._thread.start()
        try:
            nodes = ray.nodes()
        except Exception as exc:
            log.debug("ray backend: cannot list nodes (%s): one actor per worker", exc)
            nodes = []
        try:  # they start up in parallel while the first units are prepared
            for node, workers in placement(nodes, ctx.workers, self._per_slot).items():
                self._host(tuple(workers), node)
            for w in range(ctx.workers):  # any the nodes' listing did not place: an actor each, spread by Ray
                if w not in self._slots:
                    self._slot(w)
        except Exception as exc:
            raise BackendError(f"the Ray cluster refused the run's actors: {_first_line(exc)}") from exc
        log.debug("ray backend: %d workers on %d actors", ctx.workers, len({id(s.host) for s in self._slots.values()}))

    def submit(self, settings: WorkerSettings, spec: UnitSpec) -> Future[UnitReply]:
        assert self._loop is not None and self._actor is not None, "start() first"
        self._settings.setdefault(spec.worker, settings)
        try:
            slot, items = self._send(spec)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"could not submit the unit to Ray: {_first_line(exc)}") from exc
        fut = asyncio.run_coroutine_threadsafe(self._follow(spec, slot, items), self._loop)
        with self._lock:
            self._running[spec.worker] = fut
        fut.add_done_callback(lambda _: self._resolved(spec.worker, fut))
        if self._cancelled.is_set():  # submitted after an interrupt (it arrived while connecting)
            self._interrupt(slot)
        return fut

    def cancel(self) -> None:
        # May run in a signal handler: only set a flag and hand the Ray calls to a thread.
        if not self._cancelled.is_set():
            self._cancelled.set()
            threading.Thread(target=self._stop_all, name="distpar-ray-cancel", daemon=True).start()

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        self._closing.set()
        with self._lock:
            running = dict(self._running)
        for w in running:  # still running when the run ends (after an error): nothing more will be collected
            self._kill(w)
        wait_futures(list(running.values()), timeout=CLOSE_WAIT)
        try:
            self._clean_nodes()
        except Exception as exc:  # the cluster may be gone; nothing here may hide the run's outcome
            log.warning("ray backend: cleanup failed: %s", _first_line(exc))
        for w in list(self._slots):
            self._kill(w, cancelled=False)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(CLOSE_WAIT)
            if not self._loop.is_running():
                self._loop.close()
            self._loop = self._thread = None
        self._full.clear()
        self._slots.clear()
        self._actor = None
        if self._owns:  # the Ray instance it started stops while the coordinator merges (about a second)
            self._stopping = threading.Thread(target=raycompat.shutdown, args=(ray,), name="distpar-ray-shutdown",
                                             daemon=True)
            self._stopping.start()
        self._ray = None

    def wait_closed(self) -> None:
        if self._stopping is not None:
            self._stopping.join(CLOSE_WAIT)
            self._stopping = None

    # --- sending a unit --------------------------------------------------------------------------------

    def _host(self, workers: tuple[int, ...], node: str | None) -> _Host:
        """A new actor for ``workers``: on ``node`` (by affinity) when given, else wherever Ray spreads it."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        assert self._ctx is not None
        k = len(workers)
        need: dict[str, Any] = {"num_cpus": 0, "resources": {SLOT: k}} if self._per_slot else \
            {"num_cpus": round(CPU_PER_ACTOR * k, 4)}
        where = NodeAffinitySchedulingStrategy(node, soft=True) if node else "SPREAD"
        handle = self._actor.options(max_concurrency=k + CONTROL_CALLS, max_restarts=0, max_task_retries=0,
                                     scheduling_strategy=where, **need).remote(
            self._ctx.run_id, list(workers))
        host = _Host(handle)
        with self._lock:  # a new actor: the workers' workspaces there start empty
            self._slots.update({w: _Slot(host) for w in workers})
        handle.ready.remote().future().add_done_callback(lambda f: self._placed(host, f))
        return host

    def _slot(self, worker: int) -> _Slot:
        """The worker's slot; on a new actor of its own (on a live node) when its actor died."""
        with self._lock:
            slot = self._slots.get(worker)
        if slot is None or slot.host.dead:
            self._host((worker,), None)
            with self._lock:
                slot = self._slots[worker]
        return slot

    def _placed(self, host: _Host, fut: Future[str]) -> None:
        """An actor is up: remember its node, so that it is replaced as soon as that node is known gone."""
        if not fut.cancelled() and fut.exception() is None:
            host.node = host.node or fut.result()

    def _send(self, spec: UnitSpec) -> tuple[_Slot, Any]:
        slot = self._slot(spec.worker)
        full, increments = self._shipment(slot, spec)
        method = slot.host.handle.run_all if self._client else slot.host.handle.run
        settings = None if slot.configured else self._settings[spec.worker]  # once per worker on an actor
        slot.configured = True
        return slot, method.remote(spec, settings, full, increments)

    def _shipment(self, slot: _Slot, spec: UnitSpec) -> tuple[tuple[str, list[Any]] | None, list[bytes]]:
        """What ``slot``'s actor lacks of ``spec.base``: the start bundle and the unit's increments for a new
        actor, only the missing objects (or nothing) for one that already ran units."""
        assert self._ctx is not None
        full, increments = None, []
        if spec.source.kind == "bundle":
            held = spec.base in slot.have and not spec.restore  # the base itself, so its history: nothing to send
            if slot.have and not held:  # the base, and any saved work a resumed batch restores
                ref = f"refs/distpar/{self._ctx.run_id}/ray/{spec.dispatch}"
                tips = {f"{ref}-base": spec.base, **({f"{ref}-restore0": spec.restore} if spec.restore else {})}
                data = transfer.increment(self._ctx.repo, tips, slot.have)
                increments = [data] if data is not None else []
            elif not slot.have:
                path = spec.source.location
                if path not in self._full:
                    key = hashlib.sha1(path.encode()).hexdigest()[:10]
                    self._full[path] = (key, [self._ray.put(Path(path).read_bytes())])
                full = self._full[path]
                increments = [Path(p).read_bytes() for p in spec.source.increments]
        self.shipped.append({"worker": spec.worker, "unit": spec.uid, "full": full is not None,
                             "bytes": sum(map(len, increments))})
        return full, increments

    # --- following a unit (in the asyncio thread) ------------------------------------------------------

    async def _follow(self, spec: UnitSpec, slot: _Slot, items: Any) -> UnitReply:
        try:
            return await self._collect(spec, slot, items)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"could not collect the unit from Ray: {_first_line(exc)}") from exc

    async def _collect(self, spec: UnitSpec, slot: _Slot, items: Any) -> UnitReply:
        ray = self._ray
        for sent in range(RESEND + 1):
            accepted = False
            try:
                async for item in self._items(items, spec, slot):
                    if item["kind"] == "accepted":
                        accepted, slot.host.node = True, item["node"]
                        self._nodes.add(slot.host.node)
                    elif item["kind"] == "event":
                        if self._ctx is not None and self._ctx.events is not None:
                            self._ctx.events(item["name"], item["data"])
                    elif item["kind"] == "error":
                        slot.have = []  # its workspace may be half-updated: the next unit ships everything again
                        raise BackendError(f"the unit failed on Ray node {item['node'][:12]}: {item['error']}")
                    else:
                        return self._land(spec, slot, item)
                raise BackendError("the Ray actor ended the unit without handing anything back")
            except ray.exceptions.RayActorError as exc:
                if slot.host.killed:
                    raise BackendError(
                        f"the unit was cancelled and its Ray actor killed before it handed its work back (it did "
                        f"not stop within {self.cancel_grace:g}s, or the run closed); its workspace stays on node "
                        f"{slot.host.node[:12] or '?'}") from exc
                self._lost(slot)
                # Over Ray Client nothing arrives before the unit ends, so whether the actor took it cannot be
                # known: it may have run (and done things outside its workspace), so it counts as a retry.
                if accepted or self._client or sent == RESEND or self._cancelled.is_set() or self._closing.is_set():
                    raise BackendError(f"the Ray actor of worker {spec.worker + 1} died: its node went away or its "
                                       f"process was killed ({_first_line(exc)})") from exc
                log.info("ray backend: worker %d's actor died before it took unit %s; sending it again",
                         spec.worker + 1, spec.uid)
                slot, items = self._send(spec)  # it never ran: a new actor gets it, no retry is spent
            except ray.exceptions.RayError as exc:
                raise BackendError(f"the Ray actor failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        raise AssertionError("unreachable")

    async def _items(self, items: Any, spec: UnitSpec, slot: _Slot) -> AsyncIterator[dict[str, Any]]:
        """A unit's items as the actor yields them (over Ray Client, all at once when the unit ends), without
        its heartbeats; silence for longer than the stall limit ends the unit with a BackendError."""
        if self._client:
            for item in await asyncio.wrap_future(items.future()):
                if item.get("kind") != "heartbeat":
                    yield item
            return
        limit = stall_after()
        refs = items.__aiter__()

        async def following() -> dict[str, Any]:
            return await (await refs.__anext__())  # type: ignore[no-any-return]

        while True:
            try:
                item = await asyncio.wait_for(following(), limit)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                node = slot.host.node[:12] or "?"
                error = (f"Ray node {node}: stalled: the actor of worker {spec.worker + 1} sent nothing (not even a "
                         f"heartbeat) for {limit:g}s")
                if self._ctx is not None and self._ctx.events is not None:
                    self._ctx.events("transport_stalled", {"host": slot.host.node, "worker": spec.worker,
                                                           "unit": spec.uid, "attempt": spec.attempt,
                                                           "error": error})
                self._lost(slot)
                raise BackendError(error) from None
            if item.get("kind") != "heartbeat":
                yield item

    def _land(self, spec: UnitSpec, slot: _Slot, item: dict[str, Any]) -> UnitReply:
        """Write the returned bundle and logs on the coordinator; point the result at them."""
        assert self._ctx is not None
        reply: UnitReply = item["result"]
        self._nodes.add(reply.node)
        if spec.source.kind == "bundle":  # the actor now holds the base and its own new commits
            slot.have = list(dict.fromkeys([reply.head, spec.base, *slot.have]))[:HAVE]
        bundle = None
        if item["bundle"] is not None:
            path = self._ctx.run_dir / "bundles" / f"{safe_name(spec.branch)}-{spec.dispatch}-{spec.attempt}.bundle"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(item["bundle"])
            bundle = str(path)
        logs = self._ctx.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        r = reply.result
        if item["log"] is not None:
            p = logs / f"{names.key(r.unit_id)}.log"
            p.write_text(item["log"])
            r = replace(r, log_path=str(p))
        return replace(reply, bundle=bundle, result=r)

    def _lost(self, slot: _Slot) -> None:
        """An actor died: it and every actor on a node that is gone get replaced at their workers' next units."""
        slot.host.dead = True
        try:
            self._ray.kill(slot.host.handle)  # an unavailable actor would otherwise hold its resources
        except Exception as exc:
            log.debug("ray backend: kill after death failed: %s", exc)
        try:
            alive = {n["NodeID"] for n in self._ray.nodes() if n.get("Alive")}
        except Exception as exc:
            log.debug("ray backend: cannot list nodes: %s", exc)
            return
        with self._lock:
            for other in self._slots.values():
                if other.host.node and other.host.node not in alive:
                    other.host.dead = True

    def _resolved(self, worker: int, fut: Future[UnitReply]) -> None:
        with self._settled:
            if self._running.get(worker) is fut:
                del self._running[worker]
            self._settled.notify_all()

    # --- stopping --------------------------------------------------------------------------------------

    def _stop_all(self) -> None:
        """Interrupt every actor (the agent stops, its work comes back); kill those whose unit still runs after
        the grace period."""
        for slot in {id(s.host): s for s in list(self._slots.values())}.values():  # once per actor
            self._interrupt(slot)
        deadline = time.monotonic() + self.cancel_grace
        with self._settled:
            while self._running and not self._closing.is_set() and time.monotonic() < deadline:
                self._settled.wait(deadline - time.monotonic())
            running = list(self._running)
        for w in running:
            self._kill(w)

    def _interrupt(self, slot: _Slot) -> None:
        try:
            slot.host.handle.interrupt.remote()
        except Exception as exc:  # dead already, or the cluster is gone
            log.debug("ray backend: interrupt failed: %s", exc)

    def _kill(self, worker: int, cancelled: bool = True) -> None:
        """Kill the actor hosting ``worker`` (and so every unit running on it)."""
        slot = self._slots.get(worker)
        if slot is None or slot.host.dead:
            return
        slot.host.dead, slot.host.killed = True, cancelled
        try:
            self._ray.kill(slot.host.handle)
        except Exception as exc:
            log.debug("ray backend: kill failed: %s", exc)

    def _clean_nodes(self) -> None:
        """Every node that ran units removes its run directory: one of its (idle) actors does it, or, where none
        is left, a small task pinned to the node."""
        assert self._ctx is not None
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        by_node = {s.host.node: s for s in self._slots.values() if not s.host.dead and s.host.node}
        refs: dict[Any, str] = {}
        for node in self._nodes & alive:
            if node in by_node:
                refs[by_node[node].host.handle.cleanup.remote()] = node
            else:
                task = ray.remote(cleanup_task).options(
                    num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                refs[task.remote(self._ctx.run_id)] = node
        if not refs:
            return
        ready, left = ray.wait(list(refs), num_returns=len(refs), timeout=CLOSE_WAIT)
        for ref in ready:
            try:
                for ws in ray.get(ref):
                    log.warning("ray backend: kept %s on node %s: its work did not come back", ws, refs[ref][:12])
            except Exception as exc:
                log.warning("ray backend: cleanup on node %s failed: %s", refs[ref][:12], _first_line(exc))
        for ref in left:  # the actors are killed next; a task does no harm when it finishes late
            log.warning("ray backend: cleanup on node %s did not finish within %gs", refs[ref][:12], CLOSE_WAIT)


def _check_reachable(address: str) -> None:
    """Fail fast with a clear message: ray.init can wait a long time for a head that is not there."""
    hostport = address.split("://", 1)[-1]
    if "://" in address and not address.startswith("ray://"):
        return
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: let Ray resolve them
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise BackendError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
            hint="check --ray-address (or RAY_ADDRESS) and that the Ray head node is running",
        ) from exc


def _first_line(exc: BaseException) -> str:
    """The first line of an error, and its last when there are more (Ray client errors put the cause last)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}")[:300]
