"""The one masker: every secret value in a text replaced by ``***``, whether the text comes whole or in pieces.

``mask(data, secrets)`` masks one complete text (``str`` or ``bytes``); ``IncrementalMasker`` masks output that comes
in pieces (an agent's output pipe), holding back only the end of a piece that could be the start of a secret, so
a secret split across two writes is masked like one written at once.

Every occurrence of every secret is found, overlapping ones included, and each run of overlapping occurrences
becomes one ``***``: with secrets ``abcdef`` and ``defghi`` the text ``abcdefghi`` leaves no character of either
visible, whatever the order the secrets come in. Values shorter than ``MIN_SECRET`` characters are not masked
(``1`` or ``true`` would mask half of every log).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import AnyStr

MASK = "***"
MIN_SECRET = 4
HOLD_MAX = 1 << 20  # an IncrementalMasker keeps back at most this many bytes (see its feed)


def secrets_of(values: Iterable[str]) -> tuple[str, ...]:
    """The values worth masking, once each, longest first."""
    if isinstance(values, (str, bytes, Mapping)):
        # a dict would give its keys, a string its characters: both mask the wrong thing without a word
        raise TypeError(f"secrets must be an iterable of values, not a {type(values).__name__}")
    return tuple(sorted({v for v in values if len(v) >= MIN_SECRET}, key=len, reverse=True))


def mask(data: AnyStr, secrets: Iterable[str]) -> AnyStr:
    """``data`` with every occurrence of each of ``secrets`` replaced by ``***``."""
    values = secrets_of(secrets)
    if not values or not data:
        return data
    if isinstance(data, bytes):
        return _masked(data, [v.encode() for v in values], MASK.encode())
    return _masked(data, list(values), MASK)


def _spans(data: AnyStr, secrets: list[AnyStr]) -> list[tuple[int, int]]:
    """The (start, end) of every run of overlapping occurrences of the secrets in ``data``, in order."""
    hits: list[tuple[int, int]] = []
    for s in secrets:
        i = data.find(s)
        while i >= 0:
            hits.append((i, i + len(s)))
            i = data.find(s, i + 1)
    hits.sort()
    spans: list[tuple[int, int]] = []
    for start, end in hits:
        if spans and start < spans[-1][1]:  # overlaps the run before: one run (adjacent ones stay apart)
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def _masked(data: AnyStr, secrets: list[AnyStr], star: AnyStr) -> AnyStr:
    out: list[AnyStr] = []
    pos = 0
    for start, end in _spans(data, secrets):
        out += [data[pos:start], star]
        pos = end
    out.append(data[pos:])
    return data[:0].join(out)


class IncrementalMasker:
    """Masks bytes written in pieces: ``feed(piece)`` returns the masked bytes that are now safe to write,
    ``flush()`` the rest at the end. What it keeps back is only the end of the output that could still become
    (part of) a secret, so a line with no secret in it is never held back waiting for more output."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = [v.encode() for v in secrets_of(secrets)]
        self._firsts = {s[:1] for s in self._secrets}
        self._longest = max((len(s) for s in self._secrets), default=0)
        self._no_newline = not any(b"\n" in s for s in self._secrets)  # then no secret starts before a line's end
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._pending + data
        if not self._secrets:
            self._pending = b""
            return buf
        spans = _spans(buf, self._secrets)
        cut = self._hold_from(buf)
        for start, end in spans:  # a run across the cut may grow with the next piece: keep all of it back
            if start < cut < end:
                cut = start
                break
        if len(buf) - cut > HOLD_MAX:  # overlapping secrets chained without end: let them out, masked
            cut = len(buf)
        self._pending = buf[cut:]
        return _masked(buf[:cut], self._secrets, MASK.encode())

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return _masked(rest, self._secrets, MASK.encode()) if self._secrets else rest

    def _hold_from(self, buf: bytes) -> int:
        """Where the longest end of ``buf`` that is the start of a secret begins (``len(buf)`` when none is)."""
        lo = max(0, len(buf) - self._longest + 1)
        if self._no_newline:
            lo = max(lo, buf.rfind(b"\n") + 1)  # output written line by line: nothing to search
        for i in range(lo, len(buf)):
            if buf[i : i + 1] in self._firsts and any(s.startswith(buf[i:]) for s in self._secrets):
                return i
        return len(buf)
