"""The JSON of a plan's dispatch block: decoding that refuses duplicate keys (naming the object's JSON path), and
``Spans``: where each value sits in the block text, for errors that name their exact line.

Pure: text in, values and offsets out.
"""

from __future__ import annotations

import bisect
import json
import re
from typing import Any

Path_ = tuple[str | int, ...]  # a JSON path: ("batches", 2, "agents", 0, "prompt")


class NonFinite(str):
    """``NaN``, ``Infinity`` or ``-Infinity`` in the JSON (Python's json accepts them): refused with a path."""


class _Twice(dict[str, Any]):
    """A JSON object in which a key appeared more than once (json keeps the last value silently)."""

    __slots__ = ("duplicate",)
    duplicate: str


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    seen: set[str] = set()
    out = _Twice(d)
    for key, _ in pairs:
        if key in seen:
            out.duplicate = key
            break
        seen.add(key)
    return out


def decode(block: str) -> tuple[Any, tuple[Path_, str] | None]:
    """The block's value, and the first object (in document order) holding a key twice: (its path, the key).
    Raises ``json.JSONDecodeError``."""
    data = json.loads(block, parse_constant=NonFinite, object_pairs_hook=_pairs)
    stack: list[tuple[Any, Path_]] = [(data, ())]
    twice = None
    while stack and twice is None:
        v, p = stack.pop()
        if isinstance(v, _Twice):
            twice = (p, v.duplicate)
        if isinstance(v, dict):
            stack.extend(reversed([(x, (*p, k)) for k, x in v.items()]))
        elif isinstance(v, list):
            stack.extend(reversed([(x, (*p, k)) for k, x in enumerate(v)]))
    return data, twice


def dollar_path(path: Path_) -> str:
    """``$``, ``$.batches[1].agents[0]``: a JSON path as JSONPath writes it."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def json_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class Spans:
    """Where each JSON value sits in the block text (offsets), found on demand by walking the path with the
    standard decoder: exact lines for errors without a parser of our own."""

    _WS = re.compile(r"[ \t\r\n]*")

    def __init__(self, block: str, first_line: int) -> None:
        self.block = block
        self.first_line = first_line
        self._newlines = [m.start() for m in re.finditer("\n", block)]
        self._decoder = json.JSONDecoder(parse_constant=NonFinite)
        # container start -> [children found (name -> value start), scan position, next index, value to skip
        # before scanning on (-1: none), done]; scanned only as far as asked (a plan may be large)
        self._scans: dict[int, list[Any]] = {}

    def line(self, offset: int) -> int:
        return self.first_line + bisect.bisect_left(self._newlines, offset)

    def _skip(self, i: int) -> int:
        m = self._WS.match(self.block, i)
        return m.end() if m else i

    def end(self, start: int) -> int:
        """Where the value opening at ``start`` ends."""
        return int(self._decoder.raw_decode(self.block, start)[1])

    def child(self, start: int, name: str | int) -> int | None:
        """Where member ``name`` (object) or element ``name`` (array) of the value at ``start`` opens."""
        block = self.block
        scan = self._scans.get(start)
        if scan is None:
            opener = block[start] if start < len(block) else ""
            scan = self._scans[start] = [{}, self._skip(start + 1), 0, -1, opener not in ("{", "[")]
        found, closer = scan[0], "}" if block[start] == "{" else "]"
        while name not in found and not scan[4]:
            pos = scan[1]
            if scan[3] >= 0:
                pos = self._skip(self.end(scan[3]))
                if pos < len(block) and block[pos] == ",":
                    pos = self._skip(pos + 1)
                scan[3] = -1
            if pos >= len(block) or block[pos] == closer:
                scan[1], scan[4] = pos, True
                break
            key: str | int = scan[2]
            if closer == "}":
                key, pos = self._decoder.raw_decode(block, pos)
                pos = self._skip(self._skip(pos) + 1)  # past the ':'
            found[key] = pos
            scan[1], scan[2], scan[3] = pos, scan[2] + 1, pos
        return found.get(name)

    def start(self, path: Path_) -> int:
        """Where the deepest value along ``path`` that exists opens."""
        at = self._skip(0)
        for part in path:
            nxt = self.child(at, part)
            if nxt is None:
                break
            at = nxt
        return at

    def line_of(self, path: Path_) -> int:
        return self.line(self.start(path))

    def text(self, path: Path_) -> str:
        a = self.start(path)
        return self.block[a : self.end(a)]

    def key_starts(self, start: int, name: str) -> list[int]:
        """Where each occurrence of key ``name`` of the object opening at ``start`` sits (a key given twice)."""
        block, out = self.block, []
        pos = self._skip(start + 1)
        while pos < len(block) and block[pos] == "\"":
            key, after = self._decoder.raw_decode(block, pos)
            if key == name:
                out.append(pos)
            value = self._skip(self._skip(after) + 1)  # past the ':'
            pos = self._skip(self.end(value))
            if pos < len(block) and block[pos] == ",":
                pos = self._skip(pos + 1)
        return out
