"""The Ray backend: each segment (consecutive batches of one stream) is one Ray task running
``distpar.worker.run_segment`` on some node of a Ray cluster. A task per segment rather than per batch: the
batches of a segment share one clone, and the runtime already ends a segment where a batch waits for another
stream, so tasks per batch would only add clones and worker start-ups.

How the pieces travel
    Code out: the coordinator's bundles (the base, plus an increment when a base holds work of other streams)
    are read once, ``ray.put`` once, and handed to tasks as object references; a task writes each bundle into
    the node's run directory once and the worker clones from it. With ``--repo-url`` the worker clones from and
    pushes to the remote itself. Work back: the task returns the result together with the bytes of the bundle of
    new commits and the (masked, last 1 MB) text of each batch log; the coordinator writes them under
    ``<run dir>/bundles`` and ``<run dir>/logs`` and the runtime fetches the bundle into the user's repository.

Where it runs on a node
    ``$DISTPAR_RAY_DIR`` (default ``<tempdir>/distpar-ray``) ``/<run id>/<node id>/`` holds the bundles, the
    stream workspaces (``wt/s<k>``) and the logs. At close, one small task per node that ran segments removes it,
    except a workspace whose last task never handed its work back (a ``wt/s<k>.busy`` marker): that one is kept,
    and logged, for manual recovery.

Resources
    Agents mostly wait on an API, so a task asks for ``0.01`` CPU. An operator who wants to cap the agents per
    host starts each node with a custom resource, e.g. ``ray start ... --resources='{"distpar_slot": 4}'``; when
    the cluster defines ``distpar_slot`` every task asks for one slot (and no CPU), so a node without slots runs
    no agents. Tasks are spread over the nodes (``SPREAD``); Ray never retries them (``max_retries=0``): a task
    that fails because its node or worker died raises ``BackendError`` and distpar's ``--retries`` decides.

Cancel
    ``ray.cancel(ref)`` raises KeyboardInterrupt in the task's main thread, which does nothing but wait for the
    segment's thread: it sets the worker's cancel event, so the agent's process group is killed, unfinished work
    is saved on a ref and handed back with the result. Tasks still running after a grace period are cancelled
    with ``ray.cancel(force=True)``: their workspace, with whatever the agent left in it, stays on the node. Ray
    kills a dying worker's direct children (the agent); to also reap what an agent started in its own session,
    start the nodes with ``RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper=true``.

Secrets
    Forwarded variables travel inside the segment spec (a task argument), not in a ``runtime_env``: Ray lists
    runtime environments in its state API and dashboard, task arguments it does not show.

Nodes need the same version of distpar as the coordinator, git, and the agent CLI.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from distpar.backends.base import Backend, RunContext
from distpar.errors import BackendError
from distpar.model import SegmentResult, SegmentSpec
from distpar.worker import mask, run_segment, safe_name

log = logging.getLogger(__name__)

SLOT = "distpar_slot"
CPU_PER_TASK = 0.01
NODE_DIR_VAR = "DISTPAR_RAY_DIR"
LOG_LIMIT = 1 << 20  # bytes of each batch log handed back
LOCAL_OBJECT_STORE = 256 << 20  # object store of a Ray instance this backend starts itself
CANCEL_GRACE = 15.0  # seconds tasks get to save their work after cancel() before they are force-cancelled
CLOSE_WAIT = 10.0  # seconds close() waits for force-cancelled tasks and for the cleanup tasks
POLL = 0.5
CONNECT_TIMEOUT = 5.0
MISSING = "the ray backend needs ray: pip install 'distpar[ray]'"


# --- on the node -----------------------------------------------------------------------------------------


def node_dir(run_id: str, node_id: str) -> Path:
    base = os.environ.get(NODE_DIR_VAR) or os.path.join(tempfile.gettempdir(), "distpar-ray")
    return Path(base) / run_id / node_id[:12]


def _segment_task(spec_dict: dict[str, Any], blobs: dict[str, Any]) -> dict[str, Any]:
    """Runs on a node. The segment runs in a thread; this (main) thread only waits, so that the
    KeyboardInterrupt of a non-forced ``ray.cancel`` lands here and becomes the worker's cancel event: the agent
    is stopped, its work saved, and the result still returned."""
    # Ray's subreaper mode (RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper) sets SIGCHLD to
    # SIG_IGN behind Python's back, and then every subprocess seems to exit 0: put the default back.
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    cancel, finished = threading.Event(), threading.Event()
    box: dict[str, dict[str, Any]] = {}

    def body() -> None:
        try:
            box["value"] = _on_node(spec_dict, blobs, cancel)
        except BaseException as exc:
            box["value"] = {"error": f"{type(exc).__name__}: {exc}", "node": _node_id()}
        finally:
            finished.set()

    threading.Thread(target=body, name="distpar-segment", daemon=True).start()
    # Not Thread.join: a KeyboardInterrupt inside join() can leave the thread looking finished.
    while not finished.is_set():
        try:
            finished.wait(POLL)
        except KeyboardInterrupt:
            cancel.set()
    return box["value"]


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _on_node(spec_dict: dict[str, Any], blobs: dict[str, Any], cancel: threading.Event) -> dict[str, Any]:
    """Stage the bundles, run the segment, and read back its bundle and logs."""
    node = _node_id()
    os.environ["DISTPAR_NODE"] = node  # worker.node_name(): the journal records where each batch ran
    spec = SegmentSpec.from_dict(spec_dict)
    try:
        root = node_dir(spec.run_id, node)
        ws = root / spec.workspace
        busy = ws.with_name(ws.name + ".busy")
        ws.parent.mkdir(parents=True, exist_ok=True)
        busy.touch()  # removed once the work is on its way back: cleanup never deletes work that did not return
        if spec.source.kind == "bundle":
            local = {path: str(_stage(root / "bundles", path, ref)) for path, ref in blobs.items()}
            spec = replace(spec, source=replace(spec.source, location=local[spec.source.location],
                                                increments=tuple(local[p] for p in spec.source.increments)))
        spec = replace(spec, workspace=str(ws), log_dir=str(root / spec.log_dir))
        result = run_segment(spec, cancel)
        bundle = None
        if result.bundle:
            path = Path(result.bundle)
            bundle = path.read_bytes()
            path.unlink()
        logs = {r.batch_id: mask(_tail(Path(r.log_path)), spec.env)
                for r in result.results if r.log_path and Path(r.log_path).exists()}
    except Exception as exc:  # a broken node (git, disk): the coordinator raises BackendError and may retry
        return {"error": mask(f"{type(exc).__name__}: {exc}", spec.env), "node": node}
    busy.unlink(missing_ok=True)
    return {"result": result.to_dict(), "bundle": bundle, "logs": logs}


def _stage(directory: Path, path: str, ref: Any) -> Path:
    """Write one shipped bundle into the node's run directory, once per node (tasks share it)."""
    import ray

    dest = directory / f"{hashlib.sha1(path.encode()).hexdigest()[:10]}-{Path(path).name}"
    if not dest.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(ray.get(ref))
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


def _cleanup_task(run_id: str) -> list[str]:
    """Remove this node's run directory except workspaces whose work did not come back; returns those."""
    import ray

    root = node_dir(run_id, ray.get_runtime_context().get_node_id())
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


class RayBackend(Backend):
    name = "ray"
    remote = True

    def __init__(self, address: str | None = None, *, cancel_grace: float = CANCEL_GRACE) -> None:
        self.address = address
        self.cancel_grace = cancel_grace
        self._ray: Any = None
        self._owns = False  # this backend called ray.init, so close() calls ray.shutdown
        self._ctx: RunContext | None = None
        self._task: Any = None
        self._blobs: dict[str, Any] = {}  # coordinator bundle path -> ObjectRef of its bytes
        self._running: dict[Any, SegmentSpec] = {}  # ObjectRef -> spec, tasks not yet collected
        self._nodes: set[str] = set()  # nodes that ran segments (their run directories need cleaning)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._cancelled = threading.Event()
        self._closing = threading.Event()

    def workspace(self, ctx: RunContext, stream: int) -> str:
        return f"wt/w{stream + 1}"  # relative: each task anchors it in its node's run directory

    def log_dir(self, ctx: RunContext) -> str:
        return "logs"

    def start(self, ctx: RunContext) -> None:
        try:
            import ray
        except ImportError as exc:
            raise BackendError(MISSING) from exc
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
        self._ray = ray
        try:
            slots = ray.cluster_resources().get(SLOT, 0)
            need = {"num_cpus": 0, "resources": {SLOT: 1}} if slots else {"num_cpus": CPU_PER_TASK}
            self._task = ray.remote(_segment_task).options(max_retries=0, scheduling_strategy="SPREAD", **need)
        except Exception as exc:
            raise BackendError(f"the Ray cluster refused the run: {_first_line(exc)}") from exc
        self._pool = ThreadPoolExecutor(max_workers=max(1, ctx.workers), thread_name_prefix="distpar-ray")
        log.debug("ray backend: tasks ask for %s", need)

    def submit(self, spec: SegmentSpec) -> Future[SegmentResult]:
        assert self._pool is not None and self._task is not None, "start() first"
        ray = self._ray
        blobs = {}
        try:
            if spec.source.kind == "bundle":
                for path in (spec.source.location, *spec.source.increments):
                    if path not in self._blobs:
                        self._blobs[path] = ray.put(Path(path).read_bytes())
                    blobs[path] = self._blobs[path]
            # Nested in a dict, the bundle references reach the task unresolved: a node fetches each one once.
            ref = self._task.remote(spec.to_dict(), blobs)
        except Exception as exc:
            raise BackendError(f"could not submit the segment to Ray: {_first_line(exc)}") from exc
        fut: Future[SegmentResult] = Future()
        fut.set_running_or_notify_cancel()
        with self._lock:
            self._running[ref] = spec
        if self._cancelled.is_set():  # submitted after an interrupt (it arrived while connecting)
            self._cancel([ref], force=False)
        self._pool.submit(self._await, ref, spec, fut)
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
        self._cancel(self._refs(), force=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        try:
            if self._task is not None:
                self._clean_nodes()
        except Exception as exc:  # the cluster may be gone; nothing here may hide the run's outcome
            log.warning("ray backend: cleanup failed: %s", _first_line(exc))
        self._blobs.clear()
        self._task = None
        if self._owns:
            ray.shutdown()
        self._ray = None

    # --- internals -------------------------------------------------------------------------------------

    def _await(self, ref: Any, spec: SegmentSpec, fut: Future[SegmentResult]) -> None:
        try:
            fut.set_result(self._land(spec, self._wait(ref, spec)))
        except BackendError as exc:
            fut.set_exception(exc)
        except Exception as exc:
            fut.set_exception(BackendError(f"could not collect the segment from Ray: {_first_line(exc)}"))
        finally:
            with self._lock:
                self._running.pop(ref, None)

    def _wait(self, ref: Any, spec: SegmentSpec) -> dict[str, Any]:
        ray = self._ray
        closing_since: float | None = None
        while not ray.wait([ref], timeout=POLL)[0]:
            if self._closing.is_set():
                closing_since = closing_since or time.time()
                if time.time() - closing_since > CLOSE_WAIT:
                    raise BackendError("the Ray task did not stop when the run closed")
        try:
            value: dict[str, Any] = ray.get(ref)
        except ray.exceptions.TaskCancelledError as exc:
            raise BackendError("the Ray task was cancelled before it handed its work back") from exc
        except ray.exceptions.NodeDiedError as exc:
            raise BackendError(f"the Ray node running it died ({_first_line(exc)})") from exc
        except ray.exceptions.WorkerCrashedError as exc:
            raise BackendError(f"the Ray worker running it crashed ({_first_line(exc)})") from exc
        except ray.exceptions.RayError as exc:
            raise BackendError(f"the Ray task failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        if "error" in value:
            self._nodes.add(value["node"])
            raise BackendError(f"the segment failed on Ray node {value['node'][:12]}: {value['error']}")
        return value

    def _land(self, spec: SegmentSpec, value: dict[str, Any]) -> SegmentResult:
        """Write the returned bundle and logs on the coordinator; point the result at them."""
        assert self._ctx is not None
        result = SegmentResult.from_dict(value["result"])
        self._nodes.add(result.node)
        bundle = None
        if value["bundle"] is not None:
            path = self._ctx.run_dir / "bundles" / f"{safe_name(spec.branch)}-{spec.segment}-{spec.attempt}.bundle"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(value["bundle"])
            bundle = str(path)
        logs = self._ctx.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        results = []
        for r in result.results:
            text = value["logs"].get(r.batch_id)
            if text is not None:
                p = logs / f"{safe_name(r.batch_id)}.log"
                p.write_text(text)
                r = replace(r, log_path=str(p))
            results.append(r)
        return replace(result, bundle=bundle, results=tuple(results))

    def _stop_all(self) -> None:
        """Interrupt every task (KeyboardInterrupt in it: the agent stops, its work comes back); force-cancel
        what is still running after the grace period."""
        self._cancel(self._refs(), force=False)
        deadline = time.time() + self.cancel_grace
        while time.time() < deadline and not self._closing.is_set() and self._refs():
            time.sleep(0.2)
        self._cancel(self._refs(), force=True)

    def _refs(self) -> list[Any]:
        with self._lock:
            return list(self._running)

    def _cancel(self, refs: list[Any], force: bool) -> None:
        for ref in refs:
            try:
                self._ray.cancel(ref, force=force)
            except Exception as exc:  # already finished, or the cluster is gone
                log.debug("ray backend: cancel failed: %s", exc)

    def _clean_nodes(self) -> None:
        assert self._ctx is not None
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        cleanup = ray.remote(_cleanup_task)
        refs = {cleanup.options(num_cpus=0, max_retries=0,
                                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                .remote(self._ctx.run_id): node for node in self._nodes & alive}
        if not refs:
            return
        ready, left = ray.wait(list(refs), num_returns=len(refs), timeout=CLOSE_WAIT)
        for ref in ready:
            try:
                for ws in ray.get(ref):
                    log.warning("ray backend: kept %s on node %s: its work did not come back", ws, refs[ref][:12])
            except Exception as exc:
                log.warning("ray backend: cleanup on node %s failed: %s", refs[ref][:12], _first_line(exc))
        for ref in left:
            ray.cancel(ref, force=True)


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
