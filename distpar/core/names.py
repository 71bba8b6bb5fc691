"""Batch and unit ids -> names that are safe everywhere distpar uses them: git ref components, file names.

``key(id)`` is injective: an id made only of lower-case letters, digits and ``_ - . #`` (not leading ``.``,
``-`` or ``#``; no ``..``; not ending in ``.`` or ``.lock``; not a Windows device name; at most 64
characters) is its own key; any other id becomes a readable, lower-case prefix, ``+`` and 16 hex digits of its
SHA-256. No plain key contains ``+``, so the two forms never meet, and two different ids share a key only if
they share 64 bits of a SHA-256. Lower case only, so case-insensitive file systems (macOS, Windows) never merge
two keys. Pure code, no I/O.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_PLAIN = 64  # longer ids are hashed (file names stay well below every OS's limit)
READABLE = 40  # characters of the id kept in front of a hashed key
_PLAIN = re.compile(r"[a-z0-9_][a-z0-9_.#-]*")
_WINDOWS_DEVICES = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?")
_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def problem(name: str) -> str | None:
    """Why ``name`` cannot be an id (None when it can): empty, or holding control or surrogate characters
    (a newline breaks the commit trailers resume reads; NUL cannot reach a file name or an argument)."""
    if not name:
        return "is empty"
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            what = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL byte"}.get(
                ch, f"the control character U+{ord(ch):04X}")
            return f"contains {what}"
    return None


def is_plain(name: str) -> bool:
    """Whether ``name`` is its own key."""
    return (
        len(name) <= MAX_PLAIN
        and _PLAIN.fullmatch(name) is not None
        and ".." not in name
        and not name.endswith((".", ".lock"))
        and _WINDOWS_DEVICES.fullmatch(name) is None
    )


def key(name: str) -> str:
    """The safe, injective name of a batch or unit id (``ValueError`` for an id ``problem`` refuses)."""
    why = problem(name)
    if why:
        raise ValueError(f"id {name!r} {why}")
    if is_plain(name):
        return name
    readable = _UNSAFE.sub("_", name.lower())[:READABLE].strip("_-") or "id"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    return f"{readable}+{digest}"


def branch_problem(name: str) -> str | None:
    """Why ``name`` cannot be a git branch name (git check-ref-format --branch rules), or None."""
    why = problem(name)
    if why:
        return why
    if name.startswith("-") or name.startswith("/") or name.endswith("/") or name.endswith("."):
        return "cannot start with '-' or '/' or end with '/' or '.'"
    if ".." in name or "@{" in name or "//" in name or name == "@":
        return "cannot contain '..', '@{' or '//', or be '@'"
    bad = sorted(set(name) & set(" ~^:?*[\\"))
    if bad:
        return "cannot contain " + " ".join(repr(c) for c in bad)
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        return "no part of it can start with '.' or end with '.lock'"
    return None
