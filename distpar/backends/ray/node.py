"""The Ray backend's node side: one actor per node hosting that node's workers, each unit run in a thread of it
(``distpar.worker.unit.run_unit``), its events streamed, its work and logs handed back; and the node's cleanup."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from distpar.core.errors import BackendError
from distpar.core.masking import mask
from distpar.core.model import Source, UnitReply, UnitSpec, WorkerSettings
from distpar.infra import pool
from distpar.worker.unit import run_unit, workspace_for

log = logging.getLogger(__name__)

SLOT = "distpar_slot"
CPU_PER_ACTOR = 0.01  # per worker it hosts
CONTROL_CALLS = 4  # an actor's threads beyond its workers' units: ready, interrupt, cleanup
NODE_DIR_VAR = "DISTPAR_RAY_DIR"
LOG_LIMIT = 1 << 20  # bytes of each batch log handed back
LOCAL_OBJECT_STORE = 256 << 20  # object store of a Ray instance this backend starts itself
CANCEL_GRACE = 15.0  # seconds units get to save their work after cancel() before their actors are killed
CLOSE_WAIT = 10.0  # seconds close() waits for killed actors' units and for the cleanup tasks
RESEND = 2  # times a unit is sent again when its actor died before taking it
HAVE = 16  # commits remembered per actor (the newest): what a later unit's increment leaves out
CONNECT_TIMEOUT = 5.0
# The watch: an actor running a unit yields a heartbeat every HEARTBEAT s; a unit whose actor yields nothing for
# $DISTPAR_RAY_STALL_SECONDS (60) is stalled (a frozen actor on a node Ray still thinks healthy): reported, its
# actor killed and replaced, the unit retried. Not over Ray Client, which hands everything back at the end.
HEARTBEAT = 5.0
STALL_AFTER = 60.0
STALL_VAR = "DISTPAR_RAY_STALL_SECONDS"
MISSING = "the ray backend needs ray: pip install 'distpar[ray]'"


# --- on the node -----------------------------------------------------------------------------------------


def _base() -> Path:
    """The directory a node's runs (and its pool of workspaces) live under."""
    return Path(os.environ.get(NODE_DIR_VAR) or os.path.join(tempfile.gettempdir(), "distpar-ray"))


def node_dir(run_id: str, node_id: str) -> Path:
    return _base() / run_id / node_id[:12]


def pool_dir(key: str) -> Path:
    """Where ``--reuse-workspaces`` keeps a repository's workspaces on this node, beside the runs' directories."""
    return _base() / "pool" / key


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


class NodeActor:
    """The workers of the run on one node: one process; each worker has its own workspace and runs its units one
    at a time, each unit in a thread of its own."""

    def __init__(self, run_id: str, workers: list[int]) -> None:
        # Ray's subreaper mode (RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper) sets SIGCHLD to
        # SIG_IGN behind Python's back, and then every subprocess seems to exit 0: put the default back.
        if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.node = _node_id()
        os.environ["DISTPAR_NODE"] = self.node  # worker.node_name(): the journal records where each batch ran
        self.run_id = run_id
        self.root = node_dir(run_id, self.node)
        self.stop = threading.Event()  # set once by interrupt(): the run is ending, every unit stops
        self.locks = {w: threading.Lock() for w in workers}  # a worker's units, one at a time
        self.settings: dict[int, WorkerSettings] = {}  # worker -> its settings (sent with its first unit here)

    def ready(self) -> str:
        """The node this actor runs on (answers once the actor is up)."""
        return self.node

    def interrupt(self) -> None:
        self.stop.set()

    def cleanup(self) -> list[str]:
        """At the end of the run (every worker of the node idle): remove the node's run directory, except the
        workspaces whose work did not come back; returns those."""
        kept = _clean(self.root)
        for lease in pool.held(self.run_id):  # its pooled workspaces go back to the node's pool; one whose work
            if pool.busy_marker(lease.path).exists():  # did not come back stays marked (never handed out again)
                kept.append(str(lease.path))
            pool.release(lease)
        return kept

    def run(self, spec: UnitSpec, settings: WorkerSettings | None, full: tuple[str, list[Any]] | None,
            increments: list[bytes]) -> Iterator[dict[str, Any]]:
        """Stage what was shipped, run the unit, stream its events, end with its reply (or an error).
        ``settings``: the worker's, with its first unit on this actor (None after that: the actor keeps them)."""
        worker = spec.worker
        if settings is not None:  # its workspace and logs live in the node's run directory
            self.settings[worker] = replace(settings, workspace=str(self.root / settings.workspace),
                                            log_dir=str(self.root / settings.log_dir),
                                            pool=str(pool_dir(settings.pool)) if settings.pool else "")
        yield {"kind": "accepted", "node": self.node}
        with self.locks.setdefault(worker, threading.Lock()):
            yield from self._run(spec, full, increments)

    def run_all(self, spec: UnitSpec, settings: WorkerSettings | None, full: tuple[str, list[Any]] | None,
                increments: list[bytes]) -> list[dict[str, Any]]:
        """``run`` for Ray Client connections (``ray://``), which cannot stream: everything comes at the end."""
        return list(self.run(spec, settings, full, increments))

    def _run(self, spec: UnitSpec, full: tuple[str, list[Any]] | None,
             increments: list[bytes]) -> Iterator[dict[str, Any]]:
        worker = spec.worker
        settings = self.settings.get(worker)
        if settings is None:
            yield {"kind": "error", "error": f"this actor has no settings for worker w{worker + 1}", "node": self.node}
            return
        busy: Path | None = None
        staged: list[Path] = []
        try:
            ws, _ = workspace_for(settings, spec)  # the run's own, or the one it took from the node's pool
            busy = pool.busy_marker(ws)
            ws.parent.mkdir(parents=True, exist_ok=True)
            busy.touch()  # removed once the work is on its way back: cleanup never deletes work that did not return
            if spec.source.kind == "bundle":
                sources = [str(_stage(self.root / "bundles", *full))] if full else []
                for i, data in enumerate(increments):
                    path = self.root / "bundles" / f"w{worker + 1}-{spec.dispatch}-{i}.bundle"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                    staged.append(path)
                    sources.append(str(path))
                spec = replace(spec, source=Source("bundle", sources[0] if sources else "", tuple(sources[1:])))
        except Exception as exc:  # a broken node (disk): the coordinator raises BackendError and may retry
            yield {"kind": "error", "error": mask(f"{type(exc).__name__}: {exc}", settings.env.values()),
                   "node": self.node}
            return
        inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

        def body() -> None:
            try:
                inbox.put(("done", run_unit(settings, spec, self.stop,
                                            lambda kind, data: inbox.put(("event", (kind, data))))))
            except BaseException as exc:  # whatever happens, the stream must end
                inbox.put(("error", f"{type(exc).__name__}: {exc}"))

        threading.Thread(target=body, name=f"distpar-w{worker + 1}", daemon=True).start()
        while True:
            try:
                kind, payload = inbox.get(timeout=HEARTBEAT)
            except queue.Empty:
                yield {"kind": "heartbeat"}
                continue
            if kind != "event":
                break
            yield {"kind": "event", "name": payload[0], "data": payload[1]}
        for path in staged:
            path.unlink(missing_ok=True)
        try:
            if kind == "error":
                raise RuntimeError(payload)
            reply: UnitReply = payload
            bundle = None
            if reply.bundle:
                path = Path(reply.bundle)
                bundle = path.read_bytes()
                path.unlink()
            r = reply.result
            log = (mask(_tail(Path(r.log_path)), settings.env.values())
                   if r.log_path and Path(r.log_path).exists() else None)
        except Exception as exc:  # a broken node (git, disk): the coordinator raises BackendError and may retry
            yield {"kind": "error", "error": mask(str(exc), settings.env.values()), "node": self.node}
            return
        if busy is not None:
            busy.unlink(missing_ok=True)
        yield {"kind": "result", "result": reply, "bundle": bundle, "log": log}


def stall_after() -> float:
    """Seconds without a word from a unit's actor after which it is stalled (``$DISTPAR_RAY_STALL_SECONDS``)."""
    try:
        value = float(os.environ.get(STALL_VAR, "") or STALL_AFTER)
    except ValueError:
        value = 0
    if value <= HEARTBEAT:
        raise BackendError(f"${STALL_VAR} must be a number of seconds above the heartbeat ({HEARTBEAT:g}s), "
                           f"not {os.environ.get(STALL_VAR)!r}")
    return value


def _stage(directory: Path, key: str, box: list[Any]) -> Path:
    """Write the run's start bundle into the node's run directory, once per node (its actors share it)."""
    import ray

    dest = directory / f"{key}-base.bundle"
    if not dest.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(ray.get(box[0]))
        os.replace(tmp, dest)
    return dest


def _tail(path: Path, limit: int = LOG_LIMIT) -> str:
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        data = f.read()
    text = data.decode("utf-8", "replace")
    return f"--- distpar: the first {size - limit} bytes of this log were left on the node\n{text}" \
        if size > limit else text


def cleanup_task(run_id: str) -> list[str]:
    return _clean(node_dir(run_id, _node_id()))


def _clean(root: Path) -> list[str]:
    """Remove a node's run directory except workspaces whose work did not come back; returns those."""
    kept = [str(m.with_suffix("")) for m in (root / "wt").glob("*.busy")]
    if not kept:
        shutil.rmtree(root, ignore_errors=True)
        try:
            root.parent.rmdir()  # only when empty: other nodes on this host may still use it
        except OSError:
            pass
        return []
    for entry in root.iterdir():
        if entry.name != "wt":
            shutil.rmtree(entry, ignore_errors=True)
    for entry in (root / "wt").iterdir():
        if str(entry) in kept or entry.name.endswith(".busy"):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return kept


# --- on the coordinator ----------------------------------------------------------------------------------
