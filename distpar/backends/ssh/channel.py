"""A worker's channel: ``distpar.worker.supervisor serve TAG`` on a host for the whole run, fed the worker's
settings and unit specs and read as JSON lines; it notes when it last carried anything, for the stall watch."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import shlex
import threading
import time
from typing import TYPE_CHECKING, Any

from distpar.backends.ssh.connection import close_quietly, heartbeat_every
from distpar.core.model import WorkerSettings
from distpar.worker.serve import HEARTBEAT_VAR
from distpar.worker.supervisor import RUN_VAR

if TYPE_CHECKING:
    from distpar.backends.ssh.slots import Host

log = logging.getLogger(__name__)


class Feed:
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


class Lines:
    """An ``out_stream``: calls ``on_line`` for every complete line, as invoke's stdout thread writes them."""

    def __init__(self, on_line: Any, on_data: Any = None) -> None:
        self._buf, self._on_line, self._on_data = "", on_line, on_data

    def write(self, text: str) -> None:
        if self._on_data is not None:
            self._on_data()
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._on_line(line)

    def flush(self) -> None:
        pass


class Tail:
    """An ``err_stream`` keeping the last few thousand characters."""

    def __init__(self, limit: int = 8000) -> None:
        self.text, self._limit = "", limit

    def write(self, text: str) -> None:
        self.text = (self.text + text)[-self._limit:]

    def flush(self) -> None:
        pass


class Channel:
    """``distpar.worker.supervisor serve TAG`` on a host, fed and read as JSON lines for the whole run."""

    def __init__(self, conn: Any, host: Host, tag: str, on_event: Any, on_end: Any) -> None:
        self.tag, self.host = tag, host
        self.feed, self.err = Feed(), Tail()
        self.replies: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()  # None: the channel ended
        self.exited: int | None = None
        self.settings: WorkerSettings | None = None  # the worker settings this channel's worker has
        self.ended = threading.Event()
        self.heard = time.monotonic()  # when the channel last carried anything (a heartbeat at least)
        self._on_event, self._on_end = on_event, on_end
        rd = shlex.quote(host.run_dir)
        mark = shlex.quote(f"{host.run_dir}:{tag}")
        cmd = (f"cd {rd} && PYTHONPATH={rd}/lib DISTPAR_NODE={shlex.quote(host.label)} {RUN_VAR}={mark} "
               f"{HEARTBEAT_VAR}={heartbeat_every():g} exec python3 -m distpar.worker.supervisor serve "
               f"{shlex.quote(tag)}")
        self.promise = conn.run("/bin/sh -c " + shlex.quote(cmd), asynchronous=True, in_stream=self.feed,
                                out_stream=Lines(self._line, self._heard), err_stream=self.err, warn=True,
                                pty=False, encoding="utf-8")
        self._kept: list[str] = self.promise.runner.stdout  # invoke keeps a command's whole output: see _line
        threading.Thread(target=self._wait, daemon=True, name=f"distpar-ssh-{host.label}-{tag}").start()

    def send(self, line: str) -> None:
        self.feed.put(line + "\n")

    def close(self) -> None:
        """End the worker's input: an idle worker exits, a busy one stops its unit and saves the work."""
        self.feed.close()

    def silent_for(self) -> float:
        return time.monotonic() - self.heard

    def abort(self) -> None:
        """Close the SSH channel itself (a stalled one: its worker may never read the end of its input). In a
        thread of its own: a close on a stalled link may block in paramiko's send."""
        channel = getattr(self.promise.runner, "channel", None)
        if channel is not None:
            threading.Thread(target=close_quietly, args=(channel,), daemon=True,
                             name=f"distpar-ssh-abort-{self.tag}").start()

    def _heard(self) -> None:
        self.heard = time.monotonic()

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
        if isinstance(msg, dict) and "heartbeat" in msg:
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
