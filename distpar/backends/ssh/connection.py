"""One SSH connection to a host: opening it (host keys checked), short commands over it, whether it still
stands, and the bounds on every wait paramiko would otherwise make without one (``watchdog``, ``stall_after``)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distpar.core.errors import UsageError

if TYPE_CHECKING:
    from distpar.backends.ssh.slots import Host

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15  # seconds to reach a host and authenticate
COMMAND_TIMEOUT = 120.0  # short remote commands (probe, mkdir, cleanup)
LINK_WAIT = 2.0  # paramiko closes the channels just before it marks a dead link inactive
CHANNEL_OPEN_TIMEOUT = 30.0  # a session the host neither opens nor refuses (paramiko's own default: an hour)
# A channel that carries nothing for this long while distpar waits on it is stalled: the worker sends a heartbeat
# every STALL_AFTER / 4 s (at most every HEARTBEAT_MAX s), the SFTP channel answers every request well within it.
STALL_AFTER = 60.0
STALL_VAR = "DISTPAR_SSH_STALL_SECONDS"  # tests make it short
HEARTBEAT_MAX = 5.0
POLL = 0.05
_CONFIG_LOCK = threading.Lock()


class HostDown(Exception):
    """The connection to a host failed (refused, lost, authentication, host key): the host is unusable."""


class Stalled(HostDown):
    """A worker's channel carried nothing (not even a heartbeat) for ``stall_after()`` seconds."""


class UnknownHostKey(Exception):
    pass


def connect(host: Host, config: Any, identity: Path | None, accept_unknown_hosts: bool) -> Any:
    """An open connection to ``host`` (host keys checked, keepalive and bounded session opens set)."""
    from fabric import Connection

    s = host.spec
    key = s.key or identity
    # Always a fresh, non-empty dict: fabric otherwise adopts (and mutates) the shared config's dict.
    kwargs: dict[str, Any] = {"key_filename": [str(key)]} if key else {"look_for_keys": True}
    with _CONFIG_LOCK:  # fabric's configs are not thread-safe: each connection gets its own copy
        conn = Connection(s.host, user=s.user, port=s.port, config=config.clone(), connect_kwargs=kwargs)
    conn.client.set_missing_host_key_policy(host_key_policy(accept_unknown_hosts, host))
    for path in known_hosts_files(conn.ssh_config):
        with contextlib.suppress(OSError, ValueError):
            conn.client.load_system_host_keys(path)
    for name, key_type, host_key in host.pinned:  # an accepted unknown key holds for the whole run
        conn.client.get_host_keys().add(name, key_type, host_key)
    try:
        conn.open()
    except Exception as exc:
        with contextlib.suppress(Exception):
            conn.close()
        raise HostDown(connect_error(exc, conn, key)) from None
    conn.transport.set_keepalive(30)
    conn.transport.channel_timeout = CHANNEL_OPEN_TIMEOUT
    return conn


def run_script(conn: Any, script: str, timeout: float = COMMAND_TIMEOUT,
               in_stream: Any = False) -> tuple[int, str, str]:
    """Run a short shell script on the host (through ``sh``, whatever the login shell is)."""
    from invoke.exceptions import CommandTimedOut

    try:
        # invoke's timeout starts once the command has started; the watchdog also covers the start itself
        with watchdog(conn, timeout + CHANNEL_OPEN_TIMEOUT, "a command"):
            res = conn.run("/bin/sh -c " + shlex.quote(script), hide=True, warn=True, pty=False, timeout=timeout,
                           in_stream=in_stream, encoding="utf-8")
    except CommandTimedOut:
        raise HostDown(f"not responding (a command took over {timeout:g}s)") from None
    except HostDown:
        raise
    except Exception as exc:
        if not link_alive(conn):
            raise HostDown(f"cannot run a command: {exc}") from None
        raise
    return res.exited, res.stdout, res.stderr


def connected(conn: Any) -> bool:
    return conn is not None and conn.is_connected and conn.transport is not None and conn.transport.is_active()


def link_alive(conn: Any) -> bool:
    """Whether the SSH connection still stands (waiting a moment: paramiko closes the channels of a dead link
    just before it marks the link inactive)."""
    transport = conn.transport if conn is not None else None
    deadline = time.time() + LINK_WAIT
    while transport is not None and transport.is_active() and time.time() < deadline:
        time.sleep(POLL)
    return transport is not None and transport.is_active()


@contextlib.contextmanager
def watchdog(conn: Any, seconds: float, what: str) -> Iterator[None]:
    """Bound a step that paramiko may wait on forever (a session request the host accepted and never answered):
    past ``seconds``, the connection is closed under it, which ends every wait on it; the step then raises
    ``Stalled``."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        close_quietly(conn)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception:
        if fired.is_set():
            raise Stalled(f"stalled: {what} got no answer for {seconds:g}s") from None
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        raise Stalled(f"stalled: {what} got no answer for {seconds:g}s")


def close_quietly(closable: Any) -> None:
    with contextlib.suppress(Exception):
        closable.close()


def stall_after() -> float:
    """Seconds of silence after which a channel distpar waits on is stalled (``$DISTPAR_SSH_STALL_SECONDS``)."""
    try:
        value = float(os.environ.get(STALL_VAR, "") or STALL_AFTER)
    except ValueError:
        raise UsageError(f"${STALL_VAR} must be a number of seconds, not {os.environ[STALL_VAR]!r}") from None
    if value <= 0:
        raise UsageError(f"${STALL_VAR} must be more than 0 seconds, not {value:g}")
    return value


def heartbeat_every() -> float:
    return min(HEARTBEAT_MAX, stall_after() / 4)


def known_hosts_files(ssh_config: dict[str, Any]) -> list[str]:
    user = ssh_config.get("userknownhostsfile")
    files = shlex.split(user) if isinstance(user, str) else ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]
    files += ["/etc/ssh/ssh_known_hosts"]
    return [p for p in (os.path.expanduser(f) for f in files) if os.path.isfile(p)]


def host_key_policy(accept: bool, host: Host) -> Any:
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            fp = f"{key.get_name()} {getattr(key, 'fingerprint', '')}".strip()
            if not accept:
                raise UnknownHostKey(fp)
            log.warning("host %s: accepting unknown host key %s (--accept-unknown-hosts)", host.label, fp)
            client.get_host_keys().add(hostname, key.get_name(), key)
            with host.lock:  # later connections to this host must present the same key
                host.pinned.append((hostname, key.get_name(), key))

    return Policy()


def connect_error(exc: BaseException, conn: Any, key: Path | None) -> str:
    import paramiko

    if isinstance(exc, UnknownHostKey):
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


def reap_command(run_dir: str, tag: str = "") -> str:
    rd = shlex.quote(run_dir)
    return f"PYTHONPATH={rd}/lib python3 -m distpar.worker.supervisor reap {rd} {shlex.quote(tag) if tag else ''}"
