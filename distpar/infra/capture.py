"""An agent's output captured through a masking pipe: what it prints reaches distpar's log files as it comes,
with every secret replaced by ``***`` (``core.masking.IncrementalMasker``: a secret split across writes too), and
the raw bytes never touch the disk.

``process.run_process`` writes a child's stdout and stderr to paths; here such a path is ``/dev/fd/N``, the
write end of a pipe that a thread drains (no file, FIFO or temporary directory is ever made, so nothing is left
behind even when the worker is killed). distpar keeps the write end open itself, so a grandchild that escaped
the process group cannot keep the reader waiting for an end of file: after the process is gone the reader
drains what is buffered and stops.

``OutputLines`` hands the complete masked lines on as they come (the ``agent_output`` events a worker emits),
bounded in length and in rate; the log files always get everything.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from distpar.core.masking import IncrementalMasker

CHUNK = 65536
KEEP_LINE = 1 << 20  # a line of the output the parsers see is cut at this many bytes
KEEP_BYTES = 16 << 20  # ... and they see about the last this many bytes of it
LONG_LINE = 65536  # an unfinished line longer than this is written to the files before its end
LINE_CHARS = 2000  # an output line is cut to this many characters in its event (the logs keep it whole)
LINES_PER_SECOND = 50  # per unit, in events: the rest of each second's lines are counted in one "skipped" line


class MaskedPipe:
    """A pipe, opened for writing by ``path`` (valid in this process), whose bytes are masked and appended to
    each of ``dests``; ``text`` has them too, bounded (see ``_retain``). ``on_line(line, cut)`` gets each
    complete masked line (without its newline; at most ``4 * LINE_CHARS`` bytes of it, ``cut`` when there were
    more), from the draining thread."""

    def __init__(self, dests: Sequence[Path], secrets: Iterable[str],
                 on_line: Callable[[bytes, bool], None] | None = None) -> None:
        self._masker = IncrementalMasker(secrets)  # keeps back only an end of the output that may begin a secret
        self._fd, self._wfd = os.pipe()  # not inherited by children (PEP 446)
        os.set_blocking(self._fd, False)
        self.path = Path(f"/dev/fd/{self._wfd}")
        self._dests = [d.open("ab") for d in dests]
        self._kept = bytearray()
        self._pending = bytearray()  # the masked end of an unfinished line, not written to the files yet
        self._kept_line = 0  # bytes of the current line seen (kept up to KEEP_LINE)
        self._kept_cut = False
        self._on_line = on_line
        self._line = bytearray()  # the masked start of the line being written (bounded)
        self._line_cut = False
        self.last_output = 0.0  # epoch of the last bytes read (stall detection)
        self._stop = threading.Event()
        self._wake, self._waker = os.pipe()  # close() wakes the drain at once (it never polls)
        self._thread = threading.Thread(target=self._pump, name="distpar-capture", daemon=True)
        self._thread.start()

    @property
    def text(self) -> str:
        return self._kept.decode("utf-8", "replace")

    def _pump(self) -> None:
        while True:
            readable, _, _ = select.select([self._fd, self._wake], [], [])
            chunk = self._read() if self._fd in readable else b""
            if chunk:
                self.last_output = time.time()
                self._write(self._masker.feed(chunk))
            elif self._stop.is_set():
                while chunk := self._read():  # what the process wrote just before it ended
                    self._write(self._masker.feed(chunk))
                self._write(self._masker.flush(), final=True)
                if self._line or self._line_cut:  # the last line had no newline
                    self._lines_done(bytes(self._line))
                return

    def _read(self) -> bytes:
        try:
            return os.read(self._fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return b""

    def _write(self, data: bytes, final: bool = False) -> None:
        self._retain(data)
        if self._on_line is not None:
            self._split(data)
        # The files get whole lines (an unfinished one once it is LONG_LINE bytes, or at the end): a log is shared
        # by the agent's stdout and stderr pipes, and a line of one must not be cut by the other's.
        self._pending += data
        cut = len(self._pending) if final or len(self._pending) > LONG_LINE else self._pending.rfind(b"\n") + 1
        if not cut:
            return
        out, self._pending = bytes(self._pending[:cut]), self._pending[cut:]
        for f in self._dests:
            try:
                f.write(out)
                f.flush()
            except OSError:  # a full disk must not block the agent: keep draining the pipe
                pass

    def _retain(self, data: bytes) -> None:
        """What ``text`` (the parsers' input) holds, bounded: each line cut at KEEP_LINE bytes, and only the last
        KEEP_BYTES or so of the output (an agent's result comes last). The log files get everything."""
        *complete, rest = data.split(b"\n")
        for part in complete:
            self._keep_part(part)
            self._kept += b"\n"
            self._kept_line, self._kept_cut = 0, False
        self._keep_part(rest)
        if len(self._kept) > 2 * KEEP_BYTES:  # amortised: the front goes in one piece, at a line's start
            start = self._kept.find(b"\n", len(self._kept) - KEEP_BYTES) + 1
            del self._kept[:start or len(self._kept) - KEEP_BYTES]

    def _keep_part(self, part: bytes) -> None:
        room = KEEP_LINE - self._kept_line
        if room > 0:
            self._kept += part[:room]
        if len(part) > room and not self._kept_cut:
            self._kept += b" [... cut by distpar; the log has the whole line]"
            self._kept_cut = True
        self._kept_line += len(part)

    def _split(self, data: bytes) -> None:
        """Hand on the complete lines in ``data`` (masked already), keeping a bounded start of the last one."""
        limit = 4 * LINE_CHARS  # bytes: LINE_CHARS characters of UTF-8 at most
        *complete, rest = data.split(b"\n")
        for part in complete:
            room = limit - len(self._line)
            self._lines_done(bytes(self._line) + part[: max(0, room)], len(part) > room)
        room = limit - len(self._line)
        if len(rest) > room:
            self._line_cut = True
        self._line += rest[: max(0, room)]

    def _lines_done(self, line: bytes, cut: bool = False) -> None:
        cut = cut or self._line_cut
        self._line.clear()
        self._line_cut = False
        if self._on_line is None:
            return
        try:
            self._on_line(line.rstrip(b"\r"), cut)
        except Exception:  # whoever listens must not stop the draining (the agent would block on a full pipe)
            self._on_line = None

    def close(self) -> None:
        self._stop.set()
        os.write(self._waker, b"x")
        self._thread.join(timeout=30)
        for fd in (self._fd, self._wfd, self._wake, self._waker):
            os.close(fd)
        for f in self._dests:
            f.close()

    def __enter__(self) -> MaskedPipe:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class OutputLines:
    """A unit's output lines as ``agent_output`` events: ``emit(data)`` gets ``{"fd": "out"|"err", "line": ...,
    "at": EPOCH}`` (plus ``fields``) for each line, cut at LINE_CHARS characters (``"cut": true``, and the line
    says so), at most LINES_PER_SECOND lines a second over both pipes; the lines beyond that in a second are
    counted and reported as one line (``"skipped": N``) when the next second's first line comes, or at
    ``close``. An agent printing megabytes thus never floods a transport or the coordinator."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], fields: dict[str, Any],
                 rate: int = LINES_PER_SECOND, clock: Callable[[], float] = time.monotonic) -> None:
        self._emit, self._fields, self._rate, self._clock = emit, fields, rate, clock
        self._lock = threading.Lock()  # the stdout and the stderr pipe call in from their own threads
        self._window = float("-inf")
        self._sent = 0
        self._skipped = {"out": 0, "err": 0}

    def pipe(self, fd: str) -> Callable[[bytes, bool], None]:
        """The ``on_line`` of the pipe for ``fd`` ("out" or "err")."""
        return lambda line, cut: self.line(fd, line, cut)

    def line(self, fd: str, raw: bytes, cut: bool = False) -> None:
        text = raw.decode("utf-8", "replace")
        if cut or len(text) > LINE_CHARS:
            text = text[:LINE_CHARS] + f" [... cut at {LINE_CHARS} characters; the log has the whole line]"
            cut = True
        with self._lock:  # events stay in the order the lines came
            now = self._clock()
            if now - self._window >= 1.0:
                self._flush()
                self._window, self._sent = now, 0
            if self._sent >= self._rate:
                self._skipped[fd] += 1
                return
            self._sent += 1
            self._send({"fd": fd, "line": text, **({"cut": True} if cut else {})})

    def close(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        for fd, n in self._skipped.items():
            if n:
                self._send({"fd": fd, "skipped": n, "line": f"--- distpar: {n} line(s) of std{fd} not sent as events "
                                                            f"(at most {self._rate} a second); the log has them all"})
                self._skipped[fd] = 0

    def _send(self, data: dict[str, Any]) -> None:
        try:
            self._emit({**self._fields, **data, "at": time.time()})
        except Exception:  # a listener that failed must not stop the agent's output from being drained
            pass
