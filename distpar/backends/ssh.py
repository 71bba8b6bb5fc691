"""The SSH backend: units run on remote hosts that have only python3, git and the agent CLI.

distpar ships itself: ``start()`` zips the ``distpar`` package once per run, uploads it into a per-run
directory on every host and unpacks it there. Each worker slot then gets ONE long-lived channel for the whole
run (opened as soon as the hosts are ready): ``distpar.worker.supervisor serve`` (the remote half: own session,
pid file, stops
everything when the channel closes) running ``distpar.worker --serve``, fed unit specs one by one as JSON lines
on its stdin (they hold the forwarded secrets: never on a command line or a disk) and answering with JSON lines
as things happen (``unit_started`` and the other events reach ``ctx.events`` at once, then the unit's
result, which carries the unit's logs and result bundle). The worker's workspace (``wt/w<k>``) stays on the
host between its units; once it has the run's start bundle, it is sent only the increments.

Everything goes through fabric's ``Connection``: ``run(..., asynchronous=True, in_stream=..., out_stream=...)``
for the channel, ``run(...)`` and its ``Result`` for short commands, ``put`` (SFTP) for bundles going out. A host
without an SFTP subsystem works too: files then go out over an exec channel (base64 lines on ``run``'s
``in_stream``); nothing comes back over SFTP in any case.

One SSH connection per host carries up to four slots' workers (the first four share the connection the host was
prepared on; more slots open one more connection per four), each worker on a channel of its own, started as
soon as the hosts are ready: a handshake per four slots, not per slot. Workers are spread
over the hosts' slots; a host that fails is marked down, the unit it ran fails with a BackendError (the
executor runs it again), and that worker's next units go to a slot of a live host (its workspace is made anew
there). When fewer slots are left than workers, workers share slots (their units wait for one).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import importlib.util
import json
import logging
import os
import queue
import shlex
import socket
import sys
import threading
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

from distpar import agents
from distpar.backends.base import Backend, RunContext
from distpar.backends.hosts import DEFAULT_WORKDIR, HostSpec, default_slots, resolve_hosts
from distpar.core import serial
from distpar.core.errors import BackendError, UsageError
from distpar.core.masking import mask
from distpar.core.model import (
    SPEC_VERSION,
    AgentConfig,
    Source,
    UnitReply,
    UnitResult,
    UnitSpec,
    UnitStatus,
    WorkerSettings,
)
from distpar.worker.common import safe_name
from distpar.worker.supervisor import RUN_VAR

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15  # seconds to reach a host and authenticate
COMMAND_TIMEOUT = 120.0  # short remote commands (probe, mkdir, cleanup)
CANCEL_GRACE = 20.0  # after "cancel": time the worker gets to save its agents' work before "kill"
CLOSE_WAIT = 30.0  # close(): how long running units get to stop
CHANNEL_WAIT = 10.0  # close(): how long idle workers get to exit once their input ends
LINK_WAIT = 2.0  # paramiko closes the channels just before it marks a dead link inactive
MIN_PYTHON = (3, 10)
POLL = 0.05
# Slots whose workers share one SSH connection: OpenSSH allows 10 sessions per connection (MaxSessions); a slot's
# worker holds one for the run, and transfers and probes open one for a moment.
SLOTS_PER_CONNECTION = 4
CHUNK = 3 * 256 * 1024  # bytes per base64 line when a file goes over an exec channel
_CONFIG_LOCK = threading.Lock()
_UNPACK = "import os, zipfile; zipfile.ZipFile('distpar.zip').extractall('lib'); os.remove('distpar.zip')"
# Without SFTP: a file arrives as base64 lines on stdin.
_RECEIVE = ("import base64, os, sys; p = sys.argv[1]; f = open(p + '.part', 'wb')\n"
            "for line in sys.stdin.buffer: f.write(base64.b64decode(line))\n"
            "f.close(); os.replace(p + '.part', p)")


class _HostDown(Exception):
    """The connection to a host failed (refused, lost, authentication, host key): the host is unusable."""


class _UnknownHostKey(Exception):
    pass


class _Host:
    def __init__(self, spec: HostSpec, slots: int) -> None:
        self.spec, self.label = spec, spec.label
        self.slots = [_Slot(self, i) for i in range(slots)]
        self.control: Any = None  # connection for probes, uploads at start, cleanup, and the first slots' workers
        self.conns: dict[int, Any] = {}  # the other groups of slots: group -> their shared connection
        self.error = ""  # why the host is unusable ("" = healthy)
        self.run_dir = ""  # absolute path of the per-run directory on the host
        self.sftp = True  # False: the host has no SFTP subsystem, files go over exec channels
        self.exes: dict[str, bool] = {}  # agent executable -> found on PATH
        self.uploads: dict[tuple[str, int, int], str] = {}
        self.upload_locks: dict[tuple[str, int, int], threading.Lock] = {}
        self.lock = threading.Lock()
        self.unreturned: set[str] = set()  # units whose work may still be on the host
        self.pinned: list[tuple[str, str, Any]] = []  # unknown host keys accepted in this run

    @property
    def healthy(self) -> bool:
        return not self.error


class _Slot:
    """One place to run a unit on a host: its long-lived worker channel, on a connection it shares with the
    host's other slots of its group (``SLOTS_PER_CONNECTION``)."""

    def __init__(self, host: _Host, index: int) -> None:
        self.host, self.index = host, index
        self.conn: Any = None
        self.channel: _Channel | None = None
        self.busy = False
        self.opened = 0  # channels opened so far: each gets its own tag (pid file, process mark)
        self.setup = threading.Lock()  # connecting and starting the worker: once at a time


class _Feed:
    """The channel's ``in_stream``: invoke's stdin thread polls ``read`` (None: nothing yet, "": the end)."""

    def __init__(self) -> None:
        self._parts: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    def put(self, text: str) -> None:
        with self._lock:
            if not self._closed:
                self._parts.append(text)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def read(self, _size: int = -1) -> str | None:
        with self._lock:
            if self._parts:
                text = "".join(self._parts)
                self._parts.clear()
                return text
            return "" if self._closed else None


class _Lines:
    """An ``out_stream``: calls ``on_line`` for every complete line, as invoke's stdout thread writes them."""

    def __init__(self, on_line: Any) -> None:
        self._buf, self._on_line = "", on_line

    def write(self, text: str) -> None:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._on_line(line)

    def flush(self) -> None:
        pass


class _Tail:
    """An ``err_stream`` keeping the last few thousand characters."""

    def __init__(self, limit: int = 8000) -> None:
        self.text, self._limit = "", limit

    def write(self, text: str) -> None:
        self.text = (self.text + text)[-self._limit:]

    def flush(self) -> None:
        pass


class _Channel:
    """``distpar.worker.supervisor serve TAG`` on a host, fed and read as JSON lines for the whole run."""

    def __init__(self, conn: Any, host: _Host, tag: str, on_event: Any, on_end: Any) -> None:
        self.tag, self.host = tag, host
        self.feed, self.err = _Feed(), _Tail()
        self.replies: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()  # None: the channel ended
        self.exited: int | None = None
        self.settings: WorkerSettings | None = None  # the worker settings this channel's worker has
        self.ended = threading.Event()
        self._on_event, self._on_end = on_event, on_end
        rd = shlex.quote(host.run_dir)
        mark = shlex.quote(f"{host.run_dir}:{tag}")
        cmd = (f"cd {rd} && PYTHONPATH={rd}/lib DISTPAR_NODE={shlex.quote(host.label)} {RUN_VAR}={mark} "
               f"exec python3 -m distpar.worker.supervisor serve {shlex.quote(tag)}")
        self.promise = conn.run("/bin/sh -c " + shlex.quote(cmd), asynchronous=True, in_stream=self.feed,
                                out_stream=_Lines(self._line), err_stream=self.err, warn=True, pty=False,
                                encoding="utf-8")
        self._kept: list[str] = self.promise.runner.stdout  # invoke keeps a command's whole output: see _line
        threading.Thread(target=self._wait, daemon=True, name=f"distpar-ssh-{host.label}-{tag}").start()

    def send(self, line: str) -> None:
        self.feed.put(line + "\n")

    def close(self) -> None:
        """End the worker's input: an idle worker exits, a busy one stops its unit and saves the work."""
        self.feed.close()

    def _line(self, line: str) -> None:
        # Called from invoke's reader thread, which appends what it read to its buffer right after: for a
        # channel that lives as long as the run (and carries bundles), that buffer is dropped as it is read.
        with contextlib.suppress(AttributeError):
            self._kept.clear()
        try:
            msg = json.loads(line)
        except ValueError:
            log.debug("host %s: %s: not a message: %.200s", self.host.label, self.tag, line)
            return
        if isinstance(msg, dict) and "event" in msg:
            self._on_event(str(msg["event"]), msg.get("data") or {})
        elif isinstance(msg, dict):
            self.replies.put(msg)

    def _wait(self) -> None:
        try:
            self.exited = self.promise.join().exited
        except Exception as exc:  # a thread of invoke's failed (e.g. a write to a channel that just closed)
            log.debug("host %s: %s: %s", self.host.label, self.tag, exc)
        self.ended.set()
        self.replies.put(None)
        self._on_end(self)


class SSHBackend(Backend):
    name = "ssh"
    remote = True

    def __init__(self, hosts: list[str] | tuple[str, ...] = (), hosts_file: Path | None = None,
                 identity: Path | None = None, accept_unknown_hosts: bool = False) -> None:
        try:
            import fabric  # noqa: F401
        except ImportError:
            raise UsageError("the ssh backend needs fabric", hint="pip install 'distpar[ssh]'") from None
        self.specs = resolve_hosts(hosts, hosts_file)
        self.identity = Path(identity).expanduser() if identity else None
        self.accept_unknown_hosts = accept_unknown_hosts
        self.hosts: list[_Host] = []
        self._ctx: RunContext | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[UnitReply]] = []
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._closing = threading.Event()
        self._home: dict[int, _Slot] = {}  # worker -> the slot that runs its units (its workspace is there)
        self._fetched: dict[tuple[str, int], set[str]] = {}  # (host, worker) -> bundles its workspace has
        self._zip: Path | None = None
        self._config: Any = None
        self._warming: list[threading.Thread] = []

    # --- paths the executor puts in specs: relative to the host's run directory, resolved once a host is chosen

    def workspace(self, ctx: RunContext, worker: int) -> str:
        return f"wt/w{worker + 1}"

    def log_dir(self, ctx: RunContext) -> str:
        return "logs"

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self, ctx: RunContext) -> None:
        from fabric import Config

        t0 = time.time()
        self._ctx = ctx
        self._config = Config(overrides={"timeouts": {"connect": CONNECT_TIMEOUT}})
        self.hosts = [_Host(s, n) for s, n in zip(self.specs, default_slots(self.specs, ctx.workers), strict=True)]
        self._zip = build_zip(ctx.run_dir / "distpar-worker.zip")
        exes = executables(getattr(ctx, "agents", ()))  # checked up front when the executor names the agents
        with ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:
            problems = list(pool.map(lambda h: self._prepare_host(h, exes), self.hosts))
        bad = [f"host {h.label}: {p}" for h, p in zip(self.hosts, problems, strict=True) if p]
        if bad:  # a host without python3, git or the agent: fix it before anything runs
            raise BackendError("SSH hosts are not ready:\n  " + "\n  ".join(bad),
                               hint="each host needs python3 (3.10+), git 2.x and the agent CLI on its PATH")
        down = [h for h in self.hosts if not h.healthy]
        if len(down) == len(self.hosts):
            lines = "\n  ".join(f"host {h.label}: {h.error}" for h in down)
            raise BackendError(f"no SSH host is reachable:\n  {lines}")
        for h in down:
            log.warning("host %s: %s; its share of the work goes to the other hosts", h.label, h.error)
        # Workers take the hosts' slots in turn (w1 on the first host, w2 on the second, ...), so that a run
        # with fewer units than slots still spreads over the hosts.
        ready = [h for h in self.hosts if h.healthy]
        order = [h.slots[i] for i in range(max(len(h.slots) for h in ready)) for h in ready if i < len(h.slots)]
        self._home = {w: order[w % len(order)] for w in range(max(1, ctx.workers))}
        # The workers' connections and processes start now, while the executor prepares the first units.
        for slot in dict.fromkeys(self._home.values()):
            t = threading.Thread(target=self._warm, args=(slot,), daemon=True, name="distpar-ssh-warm")
            t.start()
            self._warming.append(t)
        log.debug("ssh: %d host(s) ready in %.2fs", len(ready), time.time() - t0)
        self._pool = ThreadPoolExecutor(max_workers=max(1, ctx.workers), thread_name_prefix="distpar-ssh")

    def submit(self, settings: WorkerSettings, spec: UnitSpec) -> Future[UnitReply]:
        assert self._pool is not None, "start() first"
        fut = self._pool.submit(self._run, settings, spec)
        self._futures.append(fut)
        return fut

    def cancel(self) -> None:
        # Called from a signal handler: only set a flag; each unit's thread tells its worker.
        self._cancel.set()

    def close(self) -> None:
        t0 = time.time()
        self._cancel.set()
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        running = [f for f in self._futures if not f.done()]
        if running:
            wait(running, timeout=CLOSE_WAIT)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for t in self._warming:
            t.join(CONNECT_TIMEOUT)
        if self.hosts:
            with ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:
                list(pool.map(self._cleanup_host, self.hosts))
        if self._zip is not None:
            self._zip.unlink(missing_ok=True)
        log.debug("ssh: hosts cleaned up in %.2fs", time.time() - t0)

    # --- hosts -----------------------------------------------------------------------------------------

    def _connect(self, host: _Host) -> Any:
        from fabric import Connection

        s = host.spec
        key = s.key or self.identity
        # Always a fresh, non-empty dict: fabric otherwise adopts (and mutates) the shared config's dict.
        kwargs: dict[str, Any] = {"key_filename": [str(key)]} if key else {"look_for_keys": True}
        with _CONFIG_LOCK:  # fabric's configs are not thread-safe: each connection gets its own copy
            conn = Connection(s.host, user=s.user, port=s.port, config=self._config.clone(), connect_kwargs=kwargs)
        conn.client.set_missing_host_key_policy(_host_key_policy(self.accept_unknown_hosts, host))
        for path in _known_hosts_files(conn.ssh_config):
            with contextlib.suppress(OSError, ValueError):
                conn.client.load_system_host_keys(path)
        for name, key_type, host_key in host.pinned:  # an accepted unknown key holds for the whole run
            conn.client.get_host_keys().add(name, key_type, host_key)
        try:
            conn.open()
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise _HostDown(_connect_error(exc, conn, key)) from None
        conn.transport.set_keepalive(30)
        return conn

    def _prepare_host(self, host: _Host, exes: set[str]) -> str:
        """Connect, check the tools, create the run directory, upload distpar. Returns a problem ("" = ready);
        an unreachable host is only marked (the others may carry the run)."""
        assert self._ctx is not None and self._zip is not None
        try:
            host.control = self._connect(host)
            info = _probe(host.control, exes)
            missing = _missing_tools(info, exes)
            host.exes.update({e: bool(info.get("exe:" + e)) for e in exes})
            if missing:
                return "missing " + ", ".join(missing)
            workdir = host.spec.workdir or DEFAULT_WORKDIR
            home = info.get("home", "")
            if workdir == "~" or workdir.startswith("~/"):
                workdir = home + workdir[1:]
            elif not workdir.startswith("/"):
                workdir = f"{home}/{workdir}"
            # Named after the host too: hosts that share a home directory (NFS) must not share a run directory.
            host.run_dir = f"{workdir.rstrip('/')}/{self._ctx.run_id}-{safe_name(host.label)}"
            rd = shlex.quote(host.run_dir)
            mkdir = f"umask 077 && mkdir -p {rd} && cd {rd} && mkdir -p bundles logs proc wt"
            code, _, err = _exec(host.control, mkdir)
            if code != 0:
                return f"cannot create {host.run_dir}: {err.strip()[-300:]}"
            try:
                host.control.sftp()
            except Exception as exc:  # paramiko: "Channel closed." when sshd has no sftp subsystem
                host.sftp = False
                log.info("host %s: no SFTP (%s): files go over exec channels", host.label, exc or type(exc).__name__)
            _put(host, host.control, str(self._zip), f"{host.run_dir}/distpar.zip")
            # Unpacked, not imported from the zip: the first import caches the bytecode of what a host really
            # uses (compiling all of distpar up front took half of a host's preparation).
            code, _, err = _exec(host.control, f"cd {rd} && python3 -c {shlex.quote(_UNPACK)}")
            if code != 0:
                return f"cannot unpack distpar in {host.run_dir}: {err.strip()[-300:]}"
        except _HostDown as exc:
            host.error = str(exc)
        except (OSError, EOFError) as exc:
            host.error = f"connection failed: {exc}"
        except Exception as exc:  # paramiko raises many kinds; one host's trouble must not stop the others
            host.error = f"SSH error: {exc}"
        return ""

    def _cleanup_host(self, host: _Host) -> None:
        """End the host's workers, stop whatever still runs under its run directory; remove the directory
        unless it holds work that did not come back."""
        channels = [s.channel for s in host.slots if s.channel is not None]
        for chan in channels:
            chan.close()
        deadline = time.time() + CHANNEL_WAIT
        for chan in channels:
            chan.ended.wait(max(0.0, deadline - time.time()))
        conn = host.control
        for other in {id(c): c for c in (*host.conns.values(), *(s.conn for s in host.slots))}.values():
            if other is not None and other is not conn:  # a slot group's, or one replaced since
                with contextlib.suppress(Exception):
                    other.close()
        if conn is None:
            return
        if not host.run_dir:  # the host was never ready: nothing of this run is there
            with contextlib.suppress(Exception):
                conn.close()
            return
        rd = shlex.quote(host.run_dir)
        # A fallback, for a supervisor that was itself killed: stop whatever this run left on the host. Then
        # remove the run directory, unless result bundles are still there (work that did not come back).
        keep = f"ls {rd}/wt/*.bundle" if host.unreturned else \
            f"if ls {rd}/wt/*.bundle >/dev/null 2>&1; then ls {rd}/wt/*.bundle; else rm -rf {rd}; fi"
        try:
            if not _active(conn):
                raise _HostDown(host.error or "connection lost")
            _, out, _ = _exec(conn, f"{_reap_command(host.run_dir)}; {keep} 2>/dev/null")
            leftover = [line for line in out.splitlines() if line.endswith(".bundle")]
            if host.unreturned or leftover:
                log.warning("host %s: kept %s: it holds work that did not come back (%s)", host.label,
                            host.run_dir, ", ".join(sorted(host.unreturned)) or f"{len(leftover)} bundle(s)")
        except Exception as exc:  # paramiko raises many kinds; cleanup must go on with the other hosts
            log.warning("host %s: could not clean up %s: %s", host.label, host.run_dir, exc)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _mark_down(self, host: _Host, why: str) -> None:
        with self._cond:
            if host.healthy:
                host.error = why
                log.warning("host %s: %s; no more work goes there", host.label, why)
            self._cond.notify_all()

    # --- slots -----------------------------------------------------------------------------------------

    def _acquire(self, worker: int, need: set[str]) -> _Slot | None:
        """The slot for ``worker``'s next unit: its home slot; once that host is down, an idle slot of a live
        host, which becomes its new home. None when the run is cancelled."""
        with self._cond:
            while not self._cancel.is_set():
                able = [h for h in self.hosts if h.healthy and not any(h.exes.get(e) is False for e in need)]
                if not able:
                    why = "\n  ".join(f"host {h.label}: {h.error or _not_found(h, need)}" for h in self.hosts)
                    raise BackendError(f"no SSH host left that can run worker w{worker + 1}:\n  {why}")
                home = self._home.get(worker)
                if home is not None and home.host in able:
                    if not home.busy:
                        home.busy = True
                        return home
                else:
                    idle = [s for h in able for s in h.slots if not s.busy]
                    if idle:
                        homed = collections.Counter(id(s) for s in self._home.values())
                        last = home.host if home is not None else None
                        slot = min(idle, key=lambda s: (s.host is not last, homed[id(s)]))
                        if home is None or not home.host.healthy:
                            self._home[worker] = slot
                            log.info("worker w%d: its units now run on host %s", worker + 1, slot.host.label)
                        slot.busy = True
                        return slot
                self._cond.wait(0.5)
        return None

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            slot.busy = False
            self._cond.notify_all()

    def _run(self, settings: WorkerSettings, spec: UnitSpec) -> UnitReply:
        from paramiko.ssh_exception import SSHException

        slot = self._acquire(spec.worker, executables([spec.agent]))
        if slot is None:
            return _not_started(settings, spec)
        host = slot.host
        tag = f"w{spec.worker + 1}-{spec.dispatch}-{spec.attempt}"
        try:
            self._ready(slot)
            return self._run_on(slot, settings, spec, tag)
        except _HostDown as exc:
            self._mark_down(host, str(exc))
            raise BackendError(f"host {host.label}: {exc}") from None
        except (OSError, EOFError, SSHException) as exc:
            if _active(slot.conn):  # a transfer failed, the host is there
                raise BackendError(f"host {host.label}: {type(exc).__name__}: {exc}") from None
            self._mark_down(host, f"connection failed: {exc}")
            raise BackendError(f"host {host.label}: connection failed: {exc}") from None
        finally:
            self._release(slot)

    def _run_on(self, slot: _Slot, settings: WorkerSettings, spec: UnitSpec, tag: str) -> UnitReply:
        host, conn = slot.host, slot.conn
        need = executables([spec.agent])
        unknown = {e for e in need if e not in host.exes}
        if unknown:  # agents the executor did not name up front: check them before the first unit
            info = _probe(conn, unknown)
            host.exes.update({e: bool(info.get("exe:" + e)) for e in unknown})
        if any(not host.exes.get(e) for e in need):
            with self._cond:
                self._cond.notify_all()
            raise BackendError(f"host {host.label}: {_not_found(host, need)}")
        rd = host.run_dir
        t0 = time.time()
        source, shipped = self._ship(slot, spec)
        # The worker's settings on this host: its workspace and its logs (sent back with each unit's reply).
        rsettings = replace(settings, workspace=f"{rd}/{settings.workspace}",
                            log_dir=f"{rd}/logs/w{spec.worker + 1}")
        if self._cancel.is_set():
            return _not_started(settings, spec)
        host.unreturned.add(tag)
        t1 = time.time()
        reply = self._call(slot, rsettings, replace(spec, source=source))
        t2 = time.time()
        if "error" in reply:  # the worker is still up; this unit broke (git, disk): the executor may retry it
            detail = mask(str(reply["error"]).strip(), agents.secret_values(os.environ, settings.env))[-1500:]
            raise BackendError(f"host {host.label}: the worker failed: {detail}")
        try:
            if reply.get("version") != SPEC_VERSION:
                raise ValueError(f"reply version {reply.get('version')} is not {SPEC_VERSION}")
            result = serial.load(UnitReply, reply["result"])
            files = dict(reply.get("files") or {})
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"host {host.label}: the worker sent a result distpar cannot read: {exc}") from None
        result = self._bring_back(slot, settings, result, files)
        host.unreturned.discard(tag)
        self._fetched.setdefault((host.label, spec.worker), set()).update(shipped)
        agents_time = result.result.duration
        log.debug("host %s: %s: upload %.2fs, unit %.2fs (agents %.2fs), bring back %.2fs", host.label, tag,
                  t1 - t0, t2 - t1, agents_time, time.time() - t2)
        return result

    def _ship(self, slot: _Slot, spec: UnitSpec) -> tuple[Source, list[str]]:
        """Upload the unit's bundles (once per host); the full start bundle is left out of the source when the
        worker's workspace on this host already has it. Returns the source and every bundle it stands for."""
        source = spec.source
        if source.kind != "bundle":
            return source, []
        remote = [self._upload(slot, p) for p in (source.location, *source.increments)]
        have = self._fetched.get((slot.host.label, spec.worker), set())
        needed = [r for r in remote if r not in have] or remote[-1:]
        return Source("bundle", needed[0], tuple(needed[1:])), remote

    def _upload(self, slot: _Slot, path: str) -> str:
        """Upload a bundle once per host (several slots may need the same one at the same time)."""
        host = slot.host
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
        with host.lock:
            lock = host.upload_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in host.uploads:
                remote = f"{host.run_dir}/bundles/{Path(path).name}"
                _put(host, slot.conn, path, remote)
                host.uploads[key] = remote
            return host.uploads[key]

    def _ready(self, slot: _Slot) -> _Channel:
        """The slot's connection and worker, made on first use (or after the last ones died)."""
        with slot.setup:
            if not _active(slot.conn):
                slot.channel = None
                slot.conn = self._shared(slot)
            if slot.channel is None or slot.channel.ended.is_set():
                from paramiko.ssh_exception import ChannelException

                slot.opened += 1
                tag = f"s{slot.index + 1}-{slot.opened}"
                try:
                    slot.channel = _Channel(slot.conn, slot.host, tag, self._event, self._channel_ended)
                except ChannelException as exc:  # the host allows fewer sessions per connection (MaxSessions)
                    log.info("host %s: slot %d: a shared connection refused a session (%s): it gets its own",
                             slot.host.label, slot.index + 1, exc)
                    slot.conn = self._connect(slot.host)
                    slot.channel = _Channel(slot.conn, slot.host, tag, self._event, self._channel_ended)
            return slot.channel

    def _shared(self, slot: _Slot) -> Any:
        """The connection of the slot's group, (re)opened once for all of them: a handshake per group, not per
        slot. The first group shares the host's control connection."""
        host, group = slot.host, slot.index // SLOTS_PER_CONNECTION
        with host.lock:
            conn = host.control if group == 0 else host.conns.get(group)
            if not _active(conn):
                conn = self._connect(host)
                if group == 0:
                    host.control = conn
                else:
                    host.conns[group] = conn
            return conn

    def _warm(self, slot: _Slot) -> None:
        try:
            if not self._closing.is_set():
                self._ready(slot)
        except Exception as exc:  # the slot's first unit tries again and reports what is wrong
            log.debug("host %s: slot %d could not start early: %s", slot.host.label, slot.index + 1, exc)

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        events = self._ctx.events if self._ctx else None
        if events is not None:
            try:
                events(kind, data)
            except Exception:  # the coordinator's trouble must not break the channel's reader
                log.exception("ssh: the event callback failed on %s", kind)

    def _channel_ended(self, chan: _Channel) -> None:
        """A worker channel ended: if the link to its host is gone, no more work goes there (not even the next
        unit of an idle slot)."""
        if self._closing.is_set():
            return
        conn = next((s.conn for s in chan.host.slots if s.channel is chan), None)
        if conn is not None and not _link_alive(conn):
            self._mark_down(chan.host, "connection lost")

    def _call(self, slot: _Slot, settings: WorkerSettings, spec: UnitSpec) -> dict[str, Any]:
        """Hand one unit to the slot's worker (its worker's settings first, when the channel's worker does not
        have them yet); its events go to ctx.events as they come; returns its reply."""
        chan = self._ready(slot)
        if chan.settings != settings:  # secrets travel only in the channel
            chan.send(json.dumps({"version": SPEC_VERSION, "settings": serial.dump(settings)}))
            chan.settings = settings
        chan.send(json.dumps({"op": "unit", "unit": serial.dump(spec)}))
        cancelled_at: float | None = None
        killed = False
        while True:
            try:
                reply = chan.replies.get(timeout=POLL * 4)
            except queue.Empty:
                reply = {}
            if reply is None:
                raise self._ended(slot, chan)
            if reply:
                return reply
            if self._cancel.is_set() and cancelled_at is None:
                cancelled_at = time.time()
                chan.send(json.dumps({"op": "cancel"}))
            if not killed and (self._closing.is_set() or (
                    cancelled_at is not None and time.time() - cancelled_at > CANCEL_GRACE)):
                killed = True
                chan.send("kill")

    def _ended(self, slot: _Slot, chan: _Channel) -> Exception:
        """The worker's channel closed before the unit's reply: the host went away, or the worker died."""
        slot.channel = None
        if not _link_alive(slot.conn):
            return _HostDown("connection lost while a worker ran")
        with contextlib.suppress(Exception):  # a worker whose supervisor died must not go on beside a retry
            _exec(slot.conn, _reap_command(slot.host.run_dir, chan.tag))
        code = chan.exited
        how = f"exit code {code}" if code is not None and code >= 0 else "killed by a signal"
        detail = chan.err.text.strip()[-1500:] or "no output"
        return BackendError(f"host {slot.host.label}: the worker failed ({how}): {detail}")

    def _bring_back(self, slot: _Slot, settings: WorkerSettings, result: UnitReply,
                    files: dict[str, str]) -> UnitReply:
        """Write the result bundle and the unit's logs (secrets masked) that came with the result; point the
        result at the copies; tell the worker it may drop its bundle."""
        assert self._ctx is not None
        host = slot.host
        bundles, logs = self._ctx.run_dir / "bundles", self._ctx.run_dir / "logs"
        bundles.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        bundle = None
        if result.bundle:
            if result.bundle not in files:
                raise BackendError(f"host {host.label}: the result bundle {result.bundle} did not come back")
            local = bundles / f"{safe_name(host.label)}-{Path(result.bundle).name}"
            part = Path(str(local) + ".part")
            part.write_bytes(base64.b64decode(files.pop(result.bundle)))
            os.replace(part, local)
            bundle = str(local)
            if slot.channel is not None:
                slot.channel.send(json.dumps({"op": "drop", "paths": [result.bundle]}))
        secrets = agents.secret_values(os.environ, settings.env)
        for path, data in sorted(files.items()):
            name = Path(path).name
            text = mask(base64.b64decode(data).decode("utf-8", "replace"), secrets)
            mode = "w" if name.endswith(".prompt.md") else "a"  # logs of earlier attempts stay
            with (logs / name).open(mode) as f:
                f.write(text)
        r = result.result
        r = replace(r, log_path=str(logs / Path(r.log_path).name)) if r.log_path else r
        return replace(result, bundle=bundle, result=r)


# --- helpers (coordinator side) --------------------------------------------------------------------------


def executables(configs: Any) -> set[str]:
    """The programs the hosts need on PATH for these agents (the fake agent runs with the worker's python)."""
    exes: set[str] = set()
    for cfg in configs:
        if not isinstance(cfg, AgentConfig):
            continue
        if cfg.preset == "template" and cfg.template:
            argv = shlex.split(cfg.template)
        elif cfg.preset in agents.PRESETS:
            preset = agents.PRESETS[cfg.preset]
            argv = shlex.split(cfg.executable) if cfg.executable else list(preset.command or (preset.executable,))
        else:
            continue
        if argv and argv[0] != sys.executable:
            exes.add(argv[0])
    return exes


def _package_dir(name: str) -> Path:
    """Where package ``name`` lives, found without importing it (distpar's root imports its Python API)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def build_zip(dest: Path) -> Path:
    """The ``distpar`` package as a zip (importable from PYTHONPATH): all a host needs of distpar, and
    cloudpickle (pure Python), which a preset defined in the user's own code needs to load there."""
    import cloudpickle

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for pkg in (_package_dir("distpar"), Path(cloudpickle.__file__ or "").parent):
            for f in sorted(pkg.rglob("*.py")):
                z.write(f, f"{pkg.name}/{f.relative_to(pkg).as_posix()}")
    os.replace(tmp, dest)
    return dest


def _exec(conn: Any, script: str, timeout: float = COMMAND_TIMEOUT, in_stream: Any = False) -> tuple[int, str, str]:
    """Run a short shell script on the host (through ``sh``, whatever the login shell is)."""
    from invoke.exceptions import CommandTimedOut

    try:
        res = conn.run("/bin/sh -c " + shlex.quote(script), hide=True, warn=True, pty=False, timeout=timeout,
                       in_stream=in_stream, encoding="utf-8")
    except CommandTimedOut:
        raise _HostDown(f"not responding (a command took over {timeout:g}s)") from None
    except Exception as exc:
        if not _link_alive(conn):
            raise _HostDown(f"cannot run a command: {exc}") from None
        raise
    return res.exited, res.stdout, res.stderr


def _active(conn: Any) -> bool:
    return conn is not None and conn.is_connected and conn.transport is not None and conn.transport.is_active()


def _link_alive(conn: Any) -> bool:
    """Whether the SSH connection still stands (waiting a moment: paramiko closes the channels of a dead link
    just before it marks the link inactive)."""
    transport = conn.transport if conn is not None else None
    deadline = time.time() + LINK_WAIT
    while transport is not None and transport.is_active() and time.time() < deadline:
        time.sleep(POLL)
    return transport is not None and transport.is_active()


class _Base64Lines:
    """An ``in_stream`` sending a file as base64 lines (invoke's stdin thread reads it; "" is the end)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed at the end of the data

    def read(self, _size: int = -1) -> str:
        data = b"" if self._f.closed else self._f.read(CHUNK)  # invoke reads on after the end
        if not data:
            self._f.close()
            return ""
        return base64.b64encode(data).decode() + "\n"


def _put(host: _Host, conn: Any, local: str, remote: str) -> None:
    """Copy a file to the host atomically: with SFTP (fabric's ``put``) or, without, over an exec channel."""
    if host.sftp:
        conn.put(local, remote + ".part")
        conn.sftp().posix_rename(remote + ".part", remote)
        return
    code, _, err = _exec(conn, f"python3 -c {shlex.quote(_RECEIVE)} {shlex.quote(remote)}",
                         in_stream=_Base64Lines(local))
    if code != 0:
        raise BackendError(f"host {host.label}: cannot upload {Path(local).name} to {remote} "
                           f"(no SFTP, over the exec channel): {err.strip()[-300:] or f'exit code {code}'}")


def _probe(conn: Any, exes: set[str]) -> dict[str, str]:
    lines = [
        "printf 'python=%s\\n' \"$(python3 -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])' 2>/dev/null)\"",
        "printf 'git=%s\\n' \"$(git --version 2>/dev/null)\"",
        "printf 'home=%s\\n' \"$HOME\"",
    ]
    lines += [f"printf 'exe:%s=%s\\n' {shlex.quote(e)} \"$(command -v {shlex.quote(e)} 2>/dev/null)\""
              for e in sorted(exes)]
    _, out, _ = _exec(conn, "\n".join(lines))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _missing_tools(info: dict[str, str], exes: set[str]) -> list[str]:
    missing = []
    py = info.get("python", "")
    if not py:
        missing.append("python3")
    elif tuple(int(x) for x in py.split(".")[:2]) < MIN_PYTHON:
        missing.append(f"python3 3.10 or newer (found {py})")
    git = info.get("git", "")
    parts = git.split()
    major = parts[2].split(".")[0] if len(parts) > 2 else ""
    if not git:
        missing.append("git")
    elif not major.isdigit() or int(major) < 2:
        missing.append(f"git 2.x (found {git!r})")
    missing += [f"agent executable {e!r} (not on PATH)" for e in sorted(exes) if not info.get("exe:" + e)]
    return missing


def _known_hosts_files(ssh_config: dict[str, Any]) -> list[str]:
    user = ssh_config.get("userknownhostsfile")
    files = shlex.split(user) if isinstance(user, str) else ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]
    files += ["/etc/ssh/ssh_known_hosts"]
    return [p for p in (os.path.expanduser(f) for f in files) if os.path.isfile(p)]


def _host_key_policy(accept: bool, host: _Host) -> Any:
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            fp = f"{key.get_name()} {getattr(key, 'fingerprint', '')}".strip()
            if not accept:
                raise _UnknownHostKey(fp)
            log.warning("host %s: accepting unknown host key %s (--accept-unknown-hosts)", host.label, fp)
            client.get_host_keys().add(hostname, key.get_name(), key)
            with host.lock:  # later connections to this host must present the same key
                host.pinned.append((hostname, key.get_name(), key))

    return Policy()


def _connect_error(exc: BaseException, conn: Any, key: Path | None) -> str:
    import paramiko

    if isinstance(exc, _UnknownHostKey):
        port = f"-p {conn.port} " if conn.port != 22 else ""
        return (f"host key {exc} is not in known_hosts: check it, then add it "
                f"(ssh-keyscan {port}{conn.host} >> ~/.ssh/known_hosts) or pass --accept-unknown-hosts")
    if isinstance(exc, paramiko.BadHostKeyException):
        return "host key does not match known_hosts (the host was reinstalled, or someone is in between): refused"
    if isinstance(exc, paramiko.AuthenticationException):
        with_key = f"key {key}" if key else "the keys of ~/.ssh, ~/.ssh/config and the agent"
        return f"authentication failed for user {conn.user} with {with_key}"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        errs = list(exc.errors.values())
        if errs and all(isinstance(e, ConnectionRefusedError) for e in errs):
            return "connection refused"
        return f"cannot connect: {'; '.join(str(e.strerror or e) for e in errs) or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host name {conn.host!r}"
    if isinstance(exc, TimeoutError):
        return f"connection timed out after {CONNECT_TIMEOUT}s"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or exc}"
    return f"SSH error: {exc}"


def _reap_command(run_dir: str, tag: str = "") -> str:
    rd = shlex.quote(run_dir)
    return f"PYTHONPATH={rd}/lib python3 -m distpar.worker.supervisor reap {rd} {shlex.quote(tag) if tag else ''}"


def _not_found(host: _Host, need: set[str]) -> str:
    return f"agent executable {', '.join(sorted(e for e in need if not host.exes.get(e)))} not found on PATH"


def _not_started(settings: WorkerSettings, spec: UnitSpec) -> UnitReply:
    if spec.source.kind == "url":
        raise BackendError("the run was interrupted before this unit started")
    result = UnitResult(spec.uid, spec.worker, UnitStatus.INTERRUPTED, error="the run was interrupted",
                        attempt=spec.attempt)
    return UnitReply(settings.run_id, spec.worker, spec.dispatch, spec.branch, spec.base, spec.base, result,
                     interrupted=True)

