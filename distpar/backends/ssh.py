"""The SSH backend: segments run on remote hosts that have only python3, git and the agent CLI.

distpar ships itself: ``start()`` zips the ``distpar`` package once per run, uploads it (with fabric/SFTP)
into a per-run directory on every host and unpacks it there. Each segment runs the same worker as every
backend, under ``distpar.supervisor`` (the remote half: own session, pid file, stops everything when the
channel closes). The spec (which holds the forwarded secrets) goes through the channel's stdin, never on a
command line or a disk; the result comes back as JSON on stdout and the new commits as a bundle over SFTP.
One SSH connection per slot; hosts that fail are left out and their segments fail with a BackendError that
the runtime retries elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
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
from distpar.errors import BackendError, UsageError
from distpar.hosts import DEFAULT_WORKDIR, HostSpec, default_slots, resolve_hosts
from distpar.model import AgentConfig, BatchResult, BatchStatus, SegmentResult, SegmentSpec, Source
from distpar.supervisor import RUN_VAR
from distpar.worker import safe_name

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15  # seconds to reach a host and authenticate
COMMAND_TIMEOUT = 120.0  # short remote commands (probe, mkdir, cleanup)
CANCEL_GRACE = 20.0  # after "cancel": time the worker gets to save its agents' work before "kill"
CLOSE_WAIT = 30.0  # close(): how long running segments get to stop
MIN_PYTHON = (3, 10)
POLL = 0.05
_UNPACK = ("import compileall, os, zipfile; zipfile.ZipFile('distpar.zip').extractall('lib'); "
           "os.remove('distpar.zip'); compileall.compile_dir('lib', quiet=1)")


class _HostDown(Exception):
    """The connection to a host failed (refused, lost, authentication, host key): the host is unusable."""


class _UnknownHostKey(Exception):
    pass


class _Host:
    def __init__(self, spec: HostSpec, slots: int) -> None:
        self.spec, self.label, self.slots = spec, spec.label, slots
        self.free = list(range(slots))  # slot indices; one SSH connection per slot, made on first use
        self.conns: dict[int, Any] = {}
        self.control: Any = None  # connection for probes and cleanup
        self.error = ""  # why the host is unusable ("" = healthy)
        self.run_dir = ""  # absolute path of the per-run directory on the host
        self.exes: dict[str, bool] = {}  # agent executable -> found on PATH
        self.uploads: dict[tuple[str, int, int], str] = {}
        self.upload_locks: dict[tuple[str, int, int], threading.Lock] = {}
        self.lock = threading.Lock()
        self.unreturned: set[str] = set()  # segments whose work may still be on the host
        self.pinned: list[tuple[str, str, Any]] = []  # unknown host keys accepted in this run

    @property
    def healthy(self) -> bool:
        return not self.error


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
        self._futures: list[Future[SegmentResult]] = []
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._closing = threading.Event()
        self._affinity: dict[int, _Host] = {}  # stream -> host of its last segment (its workspace is there)
        self._zip: Path | None = None
        self._config: Any = None

    # --- paths the runtime puts in specs: relative to the host's run directory, resolved once a host is chosen

    def workspace(self, ctx: RunContext, stream: int) -> str:
        return f"wt/w{stream + 1}"

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
        exes = executables(getattr(ctx, "agents", ()))  # checked up front when the runtime names the agents
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
        log.debug("ssh: %d host(s) ready in %.2fs", len(self.hosts) - len(down), time.time() - t0)
        self._pool = ThreadPoolExecutor(max_workers=sum(h.slots for h in self.hosts),
                                        thread_name_prefix="distpar-ssh")

    def submit(self, spec: SegmentSpec) -> Future[SegmentResult]:
        assert self._pool is not None, "start() first"
        fut = self._pool.submit(self._run, spec)
        self._futures.append(fut)
        return fut

    def cancel(self) -> None:
        # Called from a signal handler: only set a flag; each segment's thread tells its host.
        self._cancel.set()

    def close(self) -> None:
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
        if self.hosts:
            with ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:
                list(pool.map(self._cleanup_host, self.hosts))
        if self._zip is not None:
            self._zip.unlink(missing_ok=True)

    # --- hosts -----------------------------------------------------------------------------------------

    def _connect(self, host: _Host) -> Any:
        from fabric import Connection

        s = host.spec
        key = s.key or self.identity
        # Always a fresh, non-empty dict: fabric otherwise adopts (and mutates) the shared config's dict.
        kwargs: dict[str, Any] = {"key_filename": [str(key)]} if key else {"look_for_keys": True}
        conn = Connection(s.host, user=s.user, port=s.port, config=self._config, connect_kwargs=kwargs)
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
            sftp = host.control.client.open_sftp()
            try:
                sftp.put(str(self._zip), f"{host.run_dir}/distpar.zip")
            finally:
                sftp.close()
            # Unpacked and compiled once: importing from the zip would compile every module in every process.
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
        """Stop whatever still runs under the host's run directory; remove the directory unless it holds work
        that did not come back."""
        for conn in host.conns.values():
            with contextlib.suppress(Exception):
                conn.close()
        conn = host.control
        if conn is None:
            return
        if not host.run_dir:  # the host was never ready: nothing of this run is there
            with contextlib.suppress(Exception):
                conn.close()
            return
        rd = shlex.quote(host.run_dir)
        # A fallback, for a supervisor that was itself killed: stop whatever this run left on the host.
        script = f"{_reap_command(host.run_dir)}; ls {rd}/wt/*.bundle 2>/dev/null"
        try:
            if not conn.is_connected:
                raise _HostDown(host.error or "connection lost")
            _, out, _ = _exec(conn, script)
            leftover = [line for line in out.splitlines() if line.endswith(".bundle")]
            if host.unreturned or leftover:
                log.warning("host %s: kept %s: it holds work that did not come back (%s)", host.label,
                            host.run_dir, ", ".join(sorted(host.unreturned)) or f"{len(leftover)} bundle(s)")
            else:
                _exec(conn, f"rm -rf {rd}")
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

    def _acquire(self, spec: SegmentSpec) -> tuple[_Host, int] | None:
        """A free slot on a healthy host that has the agents ``spec`` needs; None when the run is cancelled."""
        need = executables(b.agent for b in spec.batches)
        with self._cond:
            while not self._cancel.is_set():
                able = [h for h in self.hosts if h.healthy and not any(h.exes.get(e) is False for e in need)]
                if not able:
                    why = "\n  ".join(f"host {h.label}: {h.error or _not_found(h, need)}" for h in self.hosts)
                    raise BackendError(f"no SSH host left that can run stream s{spec.stream + 1}:\n  {why}")
                free = [h for h in able if h.free]
                if free:
                    last = self._affinity.get(spec.stream)
                    host = last if last in free else max(free, key=lambda h: len(h.free) / h.slots)
                    return host, host.free.pop(0)
                self._cond.wait(0.5)
        return None

    def _release(self, host: _Host, slot: int) -> None:
        with self._cond:
            host.free.append(slot)
            self._cond.notify_all()

    # --- one segment -----------------------------------------------------------------------------------

    def _run(self, spec: SegmentSpec) -> SegmentResult:
        from paramiko import SSHException

        got = self._acquire(spec)
        if got is None:
            return _not_started(spec)
        host, slot = got
        tag = f"s{spec.stream + 1}-{spec.segment}-a{spec.attempt}"
        conn = host.conns.get(slot)
        try:
            if conn is None or not conn.is_connected:
                conn = host.conns[slot] = self._connect(host)
            result = self._run_on(host, conn, spec, tag)
            self._affinity[spec.stream] = host
            return result
        except _HostDown as exc:
            self._mark_down(host, str(exc))
            raise BackendError(f"host {host.label}: {exc}") from None
        except (OSError, EOFError, SSHException) as exc:
            if conn is not None and conn.is_connected:  # a transfer failed, the host is still there
                raise BackendError(f"host {host.label}: {type(exc).__name__}: {exc}") from None
            self._mark_down(host, f"connection failed: {exc}")
            raise BackendError(f"host {host.label}: connection failed: {exc}") from None
        finally:
            self._release(host, slot)

    def _run_on(self, host: _Host, conn: Any, spec: SegmentSpec, tag: str) -> SegmentResult:
        need = executables(b.agent for b in spec.batches)
        unknown = {e for e in need if e not in host.exes}
        if unknown:  # agents the runtime did not name up front: check them before the first batch
            info = _probe(conn, unknown)
            host.exes.update({e: bool(info.get("exe:" + e)) for e in unknown})
        missing = sorted(e for e in need if not host.exes.get(e))
        if missing:
            with self._cond:
                self._cond.notify_all()
            raise BackendError(f"host {host.label}: {_not_found(host, need)}")
        rd = host.run_dir
        t0 = time.time()
        source = spec.source
        if source.kind == "bundle":
            source = Source("bundle", self._upload(host, conn, source.location),
                            tuple(self._upload(host, conn, p) for p in source.increments))
        rspec = replace(spec, source=source, workspace=f"{rd}/{spec.workspace}", log_dir=f"{rd}/logs/{tag}")
        if self._cancel.is_set():
            return _not_started(spec)
        host.unreturned.add(tag)
        t1 = time.time()
        code, out, err = self._exec_worker(host, conn, rspec, tag)
        t2 = time.time()
        line = next((x for x in reversed(out.splitlines()) if x.startswith("{")), None)
        try:
            result = SegmentResult.from_dict(json.loads(line or ""))
        except (ValueError, KeyError, TypeError):
            with contextlib.suppress(Exception):  # a worker whose supervisor died must not go on beside a retry
                _exec(conn, _reap_command(host.run_dir, tag))
            detail = _mask(err.strip(), spec.env)[-1500:] or "no output"
            how = f"exit code {code}" if code >= 0 else "killed by a signal"
            raise BackendError(f"host {host.label}: the worker failed ({how}): {detail}") from None
        result = self._bring_back(host, conn, rspec, result)
        host.unreturned.discard(tag)
        agents = sum(r.duration for r in result.results)
        log.debug("host %s: %s: upload %.2fs, worker %.2fs (agents %.2fs), bring back %.2fs", host.label, tag,
                  t1 - t0, t2 - t1, agents, time.time() - t2)
        return result

    def _upload(self, host: _Host, conn: Any, path: str) -> str:
        """Upload a bundle once per host (several slots may need the same one at the same time)."""
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
        with host.lock:
            lock = host.upload_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in host.uploads:
                remote = f"{host.run_dir}/bundles/{Path(path).name}"
                sftp = conn.client.open_sftp()
                try:
                    sftp.put(path, remote + ".part")
                    sftp.posix_rename(remote + ".part", remote)
                finally:
                    sftp.close()
                host.uploads[key] = remote
            return host.uploads[key]

    def _exec_worker(self, host: _Host, conn: Any, spec: SegmentSpec, tag: str) -> tuple[int, str, str]:
        rd = shlex.quote(host.run_dir)
        mark = shlex.quote(f"{host.run_dir}:{tag}")
        cmd = (f"cd {rd} && PYTHONPATH={rd}/lib DISTPAR_NODE={shlex.quote(host.label)} {RUN_VAR}={mark} "
               f"exec python3 -m distpar.supervisor supervise {shlex.quote(tag)}")
        transport = conn.client.get_transport()
        chan = transport.open_session(timeout=COMMAND_TIMEOUT)
        try:
            chan.exec_command("/bin/sh -c " + shlex.quote(cmd))
            chan.sendall(json.dumps(spec.to_dict()).encode() + b"\n")  # secrets travel only in the channel
            out, err = bytearray(), bytearray()
            cancelled_at: float | None = None
            killed = False
            while True:
                got = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    got = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    got = True
                if chan.exit_status_ready() and (chan.eof_received or chan.closed) \
                        and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if not transport.is_active():
                    raise _HostDown("connection lost while a worker ran")
                if self._cancel.is_set() and cancelled_at is None:
                    cancelled_at = time.time()
                    with contextlib.suppress(Exception):
                        chan.sendall(b"cancel\n")
                if not killed and (self._closing.is_set() or (
                        cancelled_at is not None and time.time() - cancelled_at > CANCEL_GRACE)):
                    killed = True
                    with contextlib.suppress(Exception):
                        chan.sendall(b"kill\n")
                if not got:
                    time.sleep(POLL)
            if chan.recv_exit_status() == -1:  # closed without an exit status: the process or the link died
                deadline = time.time() + 2  # paramiko closes the channels just before it marks the link dead
                while transport.is_active() and time.time() < deadline:
                    time.sleep(POLL)
                if not transport.is_active():
                    raise _HostDown("connection lost while a worker ran")
            return chan.recv_exit_status(), out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        finally:
            chan.close()  # if we got here early, the supervisor sees the end of its input and stops the worker

    def _bring_back(self, host: _Host, conn: Any, spec: SegmentSpec, result: SegmentResult) -> SegmentResult:
        """Download the result bundle and the batch logs (secrets masked); point the result at the copies."""
        assert self._ctx is not None
        bundles, logs = self._ctx.run_dir / "bundles", self._ctx.run_dir / "logs"
        bundles.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        sftp = conn.client.open_sftp()
        try:
            bundle = None
            if result.bundle:
                local = bundles / f"{safe_name(host.label)}-{Path(result.bundle).name}"
                sftp.get(result.bundle, str(local) + ".part")
                os.replace(str(local) + ".part", local)
                sftp.remove(result.bundle)
                bundle = str(local)
            try:
                names = sftp.listdir(spec.log_dir)
            except FileNotFoundError:
                names = []
            for name in names:
                with sftp.open(f"{spec.log_dir}/{name}", "rb") as f:
                    text = _mask(f.read().decode("utf-8", "replace"), spec.env)
                mode = "w" if name.endswith(".prompt.md") else "a"  # logs of earlier attempts stay
                with (logs / name).open(mode) as f:
                    f.write(text)
        finally:
            sftp.close()
        results = tuple(replace(r, log_path=str(logs / Path(r.log_path).name)) if r.log_path else r
                        for r in result.results)
        return replace(result, bundle=bundle, results=results)


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


def build_zip(dest: Path) -> Path:
    """The ``distpar`` package as a zip (importable from PYTHONPATH): all a host needs of distpar."""
    import distpar

    pkg = Path(distpar.__file__).parent
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(pkg.rglob("*.py")):
            z.write(f, f"distpar/{f.relative_to(pkg).as_posix()}")
    os.replace(tmp, dest)
    return dest


def _exec(conn: Any, script: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
    """Run a short shell script on the host (through ``sh``, whatever the login shell is)."""
    try:
        chan = conn.client.get_transport().open_session(timeout=timeout)
    except Exception as exc:
        raise _HostDown(f"cannot open a channel: {exc}") from None
    try:
        chan.settimeout(timeout)
        chan.exec_command("/bin/sh -c " + shlex.quote(script))
        chan.shutdown_write()
        out = chan.makefile("rb").read().decode("utf-8", "replace")
        err = chan.makefile_stderr("rb").read().decode("utf-8", "replace")
        return chan.recv_exit_status(), out, err
    except TimeoutError:
        raise _HostDown(f"not responding (a command took over {timeout:g}s)") from None
    finally:
        chan.close()


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
    return f"PYTHONPATH={rd}/lib python3 -m distpar.supervisor reap {rd} {shlex.quote(tag) if tag else ''}"


def _not_found(host: _Host, need: set[str]) -> str:
    return f"agent executable {', '.join(sorted(e for e in need if not host.exes.get(e)))} not found on PATH"


def _not_started(spec: SegmentSpec) -> SegmentResult:
    if spec.source.kind == "url":
        raise BackendError("the run was interrupted before this segment started")
    results = tuple(BatchResult(b.id, spec.stream, BatchStatus.INTERRUPTED, error="the run was interrupted",
                                attempt=spec.attempt) for b in spec.batches)
    return SegmentResult(spec.run_id, spec.stream, spec.segment, spec.branch, spec.base, spec.base, results,
                         interrupted=True)


def _mask(text: str, forwarded: dict[str, str]) -> str:
    return agents.mask(text, agents.secret_values(os.environ, forwarded))
