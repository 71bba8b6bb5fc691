"""The SSH backend: units run on remote hosts that have only python3, git and the agent CLI.

distpar ships itself: ``start()`` zips the ``distpar`` package once per run, uploads it into a per-run
directory on every host and unpacks it there. Each worker slot then gets ONE long-lived channel for the whole
run (opened as soon as the hosts are ready): ``distpar.worker.supervisor serve`` (the remote half: own session,
pid file, stops everything when the channel closes) running ``distpar.worker --serve``, fed the worker's
settings once and then unit specs one by one as JSON lines on its stdin (they hold the forwarded secrets: never
on a command line or a disk) and answering with JSON lines as things happen (``unit_started`` and the other
events reach ``ctx.events`` at once, then the unit's result, which carries the unit's logs and result bundle).
The worker's workspace (``wt/w<k>``) stays on the host between its units; once it has the run's start bundle,
it is sent only the increments.

Everything goes through fabric's ``Connection``: ``run(..., asynchronous=True, in_stream=..., out_stream=...)``
for the channel, ``run(...)`` and its ``Result`` for short commands, the connection's SFTP client for bundles
going out (one per connection, used by one upload at a time: paramiko's client is not thread-safe). A host
without an SFTP subsystem works too: files then go out over an exec channel (base64 lines on ``run``'s
``in_stream``); nothing comes back over SFTP in any case.

No wait is without a bound (``connection``): a worker sends a heartbeat line every few seconds, and a channel
that carries nothing for ``$DISTPAR_SSH_STALL_SECONDS`` (60) while its unit runs is stalled: the event
``transport_stalled``, the host marked down, the unit retried elsewhere. SFTP reads time out after the same
limit; session requests paramiko would wait on for ever are cut by a watchdog.

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
import json
import logging
import os
import posixpath
import queue
import shlex
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

from distpar import agents
from distpar.backends.base import Backend, RunContext
from distpar.backends.ssh.channel import Channel
from distpar.backends.ssh.connection import (
    CHANNEL_OPEN_TIMEOUT,
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    POLL,
    HostDown,
    Stalled,
    connect,
    connected,
    link_alive,
    reap_command,
    run_script,
    stall_after,
    watchdog,
)
from distpar.backends.ssh.hosts import DEFAULT_WORKDIR, default_slots, resolve_hosts
from distpar.backends.ssh.shipping import (
    UNPACK,
    build_zip,
    executables,
    missing_tools,
    probe_tools,
    sftp_client,
    upload_file,
)
from distpar.backends.ssh.slots import SLOTS_PER_CONNECTION, Host, Slot, not_found
from distpar.core import serial
from distpar.core.errors import BackendError, UsageError
from distpar.core.masking import mask
from distpar.core.model import SPEC_VERSION, Source, UnitReply, UnitResult, UnitSpec, UnitStatus, WorkerSettings
from distpar.worker.common import safe_name

log = logging.getLogger(__name__)

CANCEL_GRACE = 20.0  # after "cancel": time the worker gets to save its agents' work before "kill"
CLOSE_WAIT = 30.0  # close(): how long running units get to stop
CHANNEL_WAIT = 10.0  # close(): how long idle workers get to exit once their input ends


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
        self.hosts: list[Host] = []
        self._ctx: RunContext | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[UnitReply]] = []
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._closing = threading.Event()
        self._home: dict[int, Slot] = {}  # worker -> the slot that runs its units (its workspace is there)
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
        stall_after()  # a bad $DISTPAR_SSH_STALL_SECONDS stops the run before anything starts
        self._ctx = ctx
        self._config = Config(overrides={"timeouts": {"connect": CONNECT_TIMEOUT}})
        self.hosts = [Host(s, n) for s, n in zip(self.specs, default_slots(self.specs, ctx.workers), strict=True)]
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

    def _connect(self, host: Host) -> Any:
        return connect(host, self._config, self.identity, self.accept_unknown_hosts)

    def _prepare_host(self, host: Host, exes: set[str]) -> str:
        """Connect, check the tools, create the run directory, upload distpar. Returns a problem ("" = ready);
        an unreachable host is only marked (the others may carry the run)."""
        assert self._ctx is not None and self._zip is not None
        try:
            host.control = self._connect(host)
            info = probe_tools(host.control, exes)
            missing = missing_tools(info, exes)
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
            code, _, err = run_script(host.control, mkdir)
            if code != 0:
                return f"cannot create {host.run_dir}: {err.strip()[-300:]}"
            try:
                sftp_client(host, host.control)
            except Exception as exc:  # paramiko: "Channel closed." when sshd has no sftp subsystem
                host.sftp = False
                log.info("host %s: no SFTP (%s): files go over exec channels", host.label, exc or type(exc).__name__)
            upload_file(host, host.control, str(self._zip), f"{host.run_dir}/distpar.zip")
            # Unpacked, not imported from the zip: the first import caches the bytecode of what a host really
            # uses (compiling all of distpar up front took half of a host's preparation).
            code, _, err = run_script(host.control, f"cd {rd} && python3 -c {shlex.quote(UNPACK)}")
            if code != 0:
                return f"cannot unpack distpar in {host.run_dir}: {err.strip()[-300:]}"
        except HostDown as exc:
            host.error = str(exc)
        except (OSError, EOFError) as exc:
            host.error = f"connection failed: {exc}"
        except Exception as exc:  # paramiko raises many kinds; one host's trouble must not stop the others
            host.error = f"SSH error: {exc}"
        return ""

    def _cleanup_host(self, host: Host) -> None:
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
            if not connected(conn):
                raise HostDown(host.error or "connection lost")
            # A host that stalled gets a short while: it may never answer.
            _, out, _ = run_script(conn, f"{reap_command(host.run_dir)}; {keep} 2>/dev/null",
                              timeout=COMMAND_TIMEOUT if host.healthy else CONNECT_TIMEOUT)
            leftover = [line for line in out.splitlines() if line.endswith(".bundle")]
            if host.unreturned or leftover:
                log.warning("host %s: kept %s: it holds work that did not come back (%s)", host.label,
                            host.run_dir, ", ".join(sorted(host.unreturned)) or f"{len(leftover)} bundle(s)")
        except Exception as exc:  # paramiko raises many kinds; cleanup must go on with the other hosts
            log.warning("host %s: could not clean up %s: %s", host.label, host.run_dir, exc)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _mark_down(self, host: Host, why: str) -> None:
        with self._cond:
            if host.healthy:
                host.error = why
                log.warning("host %s: %s; no more work goes there", host.label, why)
            self._cond.notify_all()

    # --- slots -----------------------------------------------------------------------------------------

    def _acquire(self, worker: int, need: set[str]) -> Slot | None:
        """The slot for ``worker``'s next unit: its home slot; once that host is down, an idle slot of a live
        host, which becomes its new home. None when the run is cancelled."""
        with self._cond:
            while not self._cancel.is_set():
                able = [h for h in self.hosts if h.healthy and not any(h.exes.get(e) is False for e in need)]
                if not able:
                    why = "\n  ".join(f"host {h.label}: {h.error or not_found(h, need)}" for h in self.hosts)
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

    def _release(self, slot: Slot) -> None:
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
        except HostDown as exc:
            if isinstance(exc, Stalled):
                self._event("transport_stalled", {"host": host.label, "worker": spec.worker, "unit": spec.uid,
                                                  "attempt": spec.attempt, "error": f"host {host.label}: {exc}"})
            self._mark_down(host, str(exc))
            raise BackendError(f"host {host.label}: {exc}") from None
        except TimeoutError as exc:  # a transfer's SFTP channel stalled (no reply within stall_after())
            self._mark_down(host, f"stalled: a transfer got no reply for {stall_after():g}s")
            raise BackendError(f"host {host.label}: stalled: a transfer got no reply for {stall_after():g}s "
                               f"({exc or type(exc).__name__})") from None
        except (OSError, EOFError, SSHException) as exc:
            if connected(slot.conn):  # a transfer failed, the host is there
                raise BackendError(f"host {host.label}: {type(exc).__name__}: {exc}") from None
            self._mark_down(host, f"connection failed: {exc}")
            raise BackendError(f"host {host.label}: connection failed: {exc}") from None
        finally:
            self._release(slot)

    def _run_on(self, slot: Slot, settings: WorkerSettings, spec: UnitSpec, tag: str) -> UnitReply:
        host, conn = slot.host, slot.conn
        need = executables([spec.agent])
        unknown = {e for e in need if e not in host.exes}
        if unknown:  # agents the executor did not name up front: check them before the first unit
            info = probe_tools(conn, unknown)
            host.exes.update({e: bool(info.get("exe:" + e)) for e in unknown})
        if any(not host.exes.get(e) for e in need):
            with self._cond:
                self._cond.notify_all()
            raise BackendError(f"host {host.label}: {not_found(host, need)}")
        rd = host.run_dir
        t0 = time.time()
        source, shipped = self._ship(slot, spec)
        # The worker's settings on this host: its workspace and its logs (sent back with each unit's reply).
        rsettings = replace(settings, workspace=f"{rd}/{settings.workspace}",
                            log_dir=f"{rd}/logs/w{spec.worker + 1}",
                            pool=f"{posixpath.dirname(rd)}/pool/{settings.pool}" if settings.pool else "")
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

    def _ship(self, slot: Slot, spec: UnitSpec) -> tuple[Source, list[str]]:
        """Upload the unit's bundles (once per host); the full start bundle is left out of the source when the
        worker's workspace on this host already has it. Returns the source and every bundle it stands for."""
        source = spec.source
        if source.kind != "bundle":
            return source, []
        remote = [self._upload(slot, p) for p in (source.location, *source.increments)]
        have = self._fetched.get((slot.host.label, spec.worker), set())
        needed = [r for r in remote if r not in have] or remote[-1:]
        return Source("bundle", needed[0], tuple(needed[1:])), remote

    def _upload(self, slot: Slot, path: str) -> str:
        """Upload a bundle once per host (several slots may need the same one at the same time)."""
        host = slot.host
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
        with host.lock:
            lock = host.upload_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in host.uploads:
                remote = f"{host.run_dir}/bundles/{Path(path).name}"
                upload_file(host, slot.conn, path, remote)
                host.uploads[key] = remote
            return host.uploads[key]

    def _ready(self, slot: Slot) -> Channel:
        """The slot's connection and worker, made on first use (or after the last ones died)."""
        with slot.setup:
            if not connected(slot.conn):
                slot.channel = None
                slot.conn = self._shared(slot)
            chan = slot.channel
            if not isinstance(chan, Channel) or chan.ended.is_set():
                from paramiko.ssh_exception import ChannelException

                slot.opened += 1
                tag = f"s{slot.index + 1}-{slot.opened}"
                try:
                    with watchdog(slot.conn, CHANNEL_OPEN_TIMEOUT, "starting a worker"):
                        chan = Channel(slot.conn, slot.host, tag, self._event, self._channel_ended)
                except ChannelException as exc:  # the host allows fewer sessions per connection (MaxSessions)
                    log.info("host %s: slot %d: a shared connection refused a session (%s): it gets its own",
                             slot.host.label, slot.index + 1, exc)
                    slot.conn = self._connect(slot.host)
                    with watchdog(slot.conn, CHANNEL_OPEN_TIMEOUT, "starting a worker"):
                        chan = Channel(slot.conn, slot.host, tag, self._event, self._channel_ended)
                slot.channel = chan
            return chan

    def _shared(self, slot: Slot) -> Any:
        """The connection of the slot's group, (re)opened once for all of them: a handshake per group, not per
        slot. The first group shares the host's control connection."""
        host, group = slot.host, slot.index // SLOTS_PER_CONNECTION
        with host.lock:
            conn = host.control if group == 0 else host.conns.get(group)
            if not connected(conn):
                conn = self._connect(host)
                if group == 0:
                    host.control = conn
                else:
                    host.conns[group] = conn
            return conn

    def _warm(self, slot: Slot) -> None:
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

    def _channel_ended(self, chan: Channel) -> None:
        """A worker channel ended: if the link to its host is gone, no more work goes there (not even the next
        unit of an idle slot)."""
        if self._closing.is_set():
            return
        conn = next((s.conn for s in chan.host.slots if s.channel is chan), None)
        if conn is not None and not link_alive(conn):
            self._mark_down(chan.host, "connection lost")

    def _call(self, slot: Slot, settings: WorkerSettings, spec: UnitSpec) -> dict[str, Any]:
        """Hand one unit to the slot's worker (its worker's settings first, when the channel's worker does not
        have them yet); its events go to ctx.events as they come; returns its reply."""
        chan = self._ready(slot)
        if chan.settings != settings:  # secrets travel only in the channel
            chan.send(json.dumps({"version": SPEC_VERSION, "settings": serial.dump(settings)}))
            chan.settings = settings
        chan.send(json.dumps({"op": "unit", "unit": serial.dump(spec)}))
        cancelled_at: float | None = None
        killed_at: float | None = None
        limit = stall_after()
        while True:
            try:
                reply = chan.replies.get(timeout=POLL * 4)
            except queue.Empty:
                reply = {}
            if reply is None:
                raise self._ended(slot, chan)
            if reply:
                return reply
            # The watch: a live worker sends at least a heartbeat every limit / 4 s, whatever its unit does.
            # Silence means the link, the host or the worker's process is stuck: nothing would ever end this wait.
            silent = chan.silent_for()
            if silent > limit or (killed_at is not None and time.time() - killed_at > CANCEL_GRACE):
                slot.channel = None
                chan.abort()
                if silent > limit:
                    raise Stalled(f"stalled: no word from its worker for {silent:.0f}s (the limit is {limit:g}s)")
                raise HostDown(f"its worker did not stop within {CANCEL_GRACE:g}s of being killed")
            if self._cancel.is_set() and cancelled_at is None:
                cancelled_at = time.time()
                chan.send(json.dumps({"op": "cancel"}))
            if killed_at is None and (self._closing.is_set() or (
                    cancelled_at is not None and time.time() - cancelled_at > CANCEL_GRACE)):
                killed_at = time.time()
                chan.send("kill")

    def _ended(self, slot: Slot, chan: Channel) -> Exception:
        """The worker's channel closed before the unit's reply: the host went away, or the worker died."""
        slot.channel = None
        if not link_alive(slot.conn):
            return HostDown("connection lost while a worker ran")
        with contextlib.suppress(Exception):  # a worker whose supervisor died must not go on beside a retry
            run_script(slot.conn, reap_command(slot.host.run_dir, chan.tag))
        code = chan.exited
        how = f"exit code {code}" if code is not None and code >= 0 else "killed by a signal"
        detail = chan.err.text.strip()[-1500:] or "no output"
        return BackendError(f"host {slot.host.label}: the worker failed ({how}): {detail}")

    def _bring_back(self, slot: Slot, settings: WorkerSettings, result: UnitReply,
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


def _not_started(settings: WorkerSettings, spec: UnitSpec) -> UnitReply:
    if spec.source.kind == "url":
        raise BackendError("the run was interrupted before this unit started")
    result = UnitResult(spec.uid, spec.worker, UnitStatus.INTERRUPTED, error="the run was interrupted",
                        attempt=spec.attempt)
    return UnitReply(settings.run_id, spec.worker, spec.dispatch, spec.branch, spec.base, spec.base, result,
                     interrupted=True)

