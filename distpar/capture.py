"""An agent's output captured through a masking pipe: what it prints reaches distpar's log files as it comes,
with every secret replaced by ``***``, and the raw bytes never touch the disk.

``process.run_process`` writes a child's stdout and stderr to paths; here such a path is ``/dev/fd/N``, the
write end of a pipe that a thread drains (no file, FIFO or temporary directory is ever made, so nothing is left
behind even when the worker is killed). distpar keeps the write end open itself, so a grandchild that escaped
the process group cannot keep the reader waiting for an end of file: after the process is gone the reader
drains what is buffered and stops.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

MASK = b"***"
CHUNK = 65536
LONG_LINE = 65536  # a line longer than this is written before its end (keeping a possible partial secret back)


class MaskedPipe:
    """A pipe, opened for writing by ``path`` (valid in this process), whose bytes are masked and appended to
    each of ``dests``; ``text`` has them all."""

    def __init__(self, dests: Sequence[Path], secrets: Iterable[str]) -> None:
        self.secrets = sorted({s.encode() for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._keep = max((len(s) for s in self.secrets), default=1) - 1
        self._fd, self._wfd = os.pipe()  # not inherited by children (PEP 446)
        os.set_blocking(self._fd, False)
        self.path = Path(f"/dev/fd/{self._wfd}")
        self._dests = [d.open("ab") for d in dests]
        self._kept = bytearray()
        self.last_output = 0.0  # epoch of the last bytes read (stall detection)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="distpar-capture", daemon=True)
        self._thread.start()

    @property
    def text(self) -> str:
        return self._kept.decode("utf-8", "replace")

    def mask(self, data: bytes) -> bytes:
        for s in self.secrets:
            data = data.replace(s, MASK)
        return data

    def _pump(self) -> None:
        pending = b""
        while True:
            readable, _, _ = select.select([self._fd], [], [], 0.05)
            chunk = self._read() if readable else b""
            if chunk:
                self.last_output = time.time()
                pending = self._emit(pending + chunk, final=False)
            elif self._stop.is_set():
                while chunk := self._read():  # what the process wrote just before it ended
                    pending = self._emit(pending + chunk, final=False)
                self._emit(pending, final=True)
                return

    def _read(self) -> bytes:
        try:
            return os.read(self._fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return b""

    def _emit(self, data: bytes, final: bool) -> bytes:
        """Write the masked complete lines of ``data``; return the rest (raw), which may hold a partial secret."""
        if final:
            out, rest = data, b""
        else:
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) > LONG_LINE:
                cut = len(data) - self._keep
            out, rest = data[:cut], data[cut:]
            # a secret can straddle the cut only when the cut is not at a newline (secrets hold no newlines)
            if out and not out.endswith(b"\n"):
                masked = self.mask(data)
                out, rest = masked[: len(masked) - self._keep], masked[len(masked) - self._keep :]
                self._write(out)
                return rest
        if out:
            self._write(self.mask(out))
        return rest

    def _write(self, data: bytes) -> None:
        self._kept += data
        for f in self._dests:
            try:
                f.write(data)
                f.flush()
            except OSError:  # a full disk must not block the agent: keep draining the pipe
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        os.close(self._fd)
        os.close(self._wfd)
        for f in self._dests:
            f.close()

    def __enter__(self) -> MaskedPipe:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
