"""Where units run: a host of the inventory and its slots (one worker channel each), grouped on shared
connections."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from distpar.backends.ssh.hosts import HostSpec

# Slots whose workers share one SSH connection: OpenSSH allows 10 sessions per connection (MaxSessions); a slot's
# worker holds one for the run, and transfers and probes open one for a moment.
SLOTS_PER_CONNECTION = 4


class Host:
    def __init__(self, spec: HostSpec, slots: int) -> None:
        self.spec, self.label = spec, spec.label
        self.slots = [Slot(self, i) for i in range(slots)]
        self.control: Any = None  # connection for probes, uploads at start, cleanup, and the first slots' workers
        self.conns: dict[int, Any] = {}  # the other groups of slots: group -> their shared connection
        self.error = ""  # why the host is unusable ("" = healthy)
        self.run_dir = ""  # absolute path of the per-run directory on the host
        self.sftp = True  # False: the host has no SFTP subsystem, files go over exec channels
        self.exes: dict[str, bool] = {}  # agent executable -> found on PATH
        self.uploads: dict[tuple[str, int, int], str] = {}
        # connection id -> (connection, its SFTP client, the lock of that client): paramiko's SFTP client must not
        # be used by two threads at once (one thread reads, and drops, the reply the other waits for: a hang)
        self.sftp_clients: dict[int, tuple[Any, Any, threading.Lock]] = {}
        self.upload_locks: dict[tuple[str, int, int], threading.Lock] = {}
        self.lock = threading.Lock()
        self.unreturned: set[str] = set()  # units whose work may still be on the host
        self.pinned: list[tuple[str, str, Any]] = []  # unknown host keys accepted in this run

    @property
    def healthy(self) -> bool:
        return not self.error


class WorkerChannel(Protocol):
    """What a slot holds of its worker's channel (``channel.Channel``, which imports this module for its host)."""

    ended: threading.Event

    def send(self, line: str) -> None: ...

    def close(self) -> None: ...


class Slot:
    """One place to run a unit on a host: its long-lived worker channel, on a connection it shares with the
    host's other slots of its group (``SLOTS_PER_CONNECTION``)."""

    def __init__(self, host: Host, index: int) -> None:
        self.host, self.index = host, index
        self.conn: Any = None
        self.channel: WorkerChannel | None = None
        self.busy = False
        self.opened = 0  # channels opened so far: each gets its own tag (pid file, process mark)
        self.setup = threading.Lock()  # connecting and starting the worker: once at a time


def not_found(host: Host, need: set[str]) -> str:
    return f"agent executable {', '.join(sorted(e for e in need if not host.exes.get(e)))} not found on PATH"
