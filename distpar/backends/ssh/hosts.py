"""SSH host inventory: ``[user@]host[:port]`` strings and the TOML inventory file -> ``HostSpec`` values.

Pure parsing, no network: errors are ``UsageError`` (bad input, nothing was changed).

Inventory (``--hosts-file``)::

    [[host]]
    address = "build1"            # [user@]host[:port], or a Host alias from ~/.ssh/config
    slots = 4                     # agents that may run there at once (default: workers spread evenly)
    user = "ci"                   # optional, overrides ~/.ssh/config
    port = 2222                   # optional
    key = "~/.ssh/build_ed25519"  # optional private key (relative paths: from the inventory's directory)
    workdir = "/scratch/distpar"  # optional; per-run directories are created under it (default ~/.cache/distpar/runs)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distpar.core.errors import UsageError

DEFAULT_WORKDIR = "~/.cache/distpar/runs"
_KEYS = {"address", "slots", "user", "port", "key", "workdir"}
_NAME = re.compile(r"^[A-Za-z0-9_.%+-]+$")  # host names, ~/.ssh/config aliases, user names


@dataclass(frozen=True, slots=True)
class HostSpec:
    host: str  # name, alias from ~/.ssh/config, or address
    user: str | None = None
    port: int | None = None
    slots: int | None = None  # None: the run's workers spread evenly over the hosts
    key: Path | None = None
    workdir: str | None = None

    @property
    def label(self) -> str:
        """How the host is named in messages and in the journal (``build2:2222``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host


def parse_host(text: str, where: str = "--hosts") -> HostSpec:
    """``[user@]host[:port]``; an IPv6 address with a port is written ``[::1]:2222``."""
    raw = text.strip()
    if not raw:
        raise UsageError(f"{where}: empty host name")
    user: str | None = None
    rest = raw
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        if not user or not _NAME.match(user):
            raise UsageError(f"{where}: bad user name in host {raw!r}")
    port: int | None = None
    if rest.startswith("["):
        m = re.fullmatch(r"\[([0-9A-Fa-f:.%a-z]+)\](?::(\d+))?", rest)
        if not m:
            raise UsageError(f"{where}: bad host {raw!r} (expected [user@]host[:port])")
        host, port_text = m.group(1), m.group(2)
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    elif rest.count(":") > 1:  # a bare IPv6 address, no port
        host, port_text = rest, None
    else:
        host, port_text = rest, None
    if port_text is not None:
        port = _port(port_text, f"{where}: bad port in host {raw!r}")
    if not host or not (_NAME.match(host) or ":" in host):
        raise UsageError(f"{where}: bad host name in {raw!r} (expected [user@]host[:port])")
    return HostSpec(host=host, user=user, port=port)


def _port(value: Any, msg: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{msg}: {value!r} is not a number") from None
    if isinstance(value, bool) or not 1 <= port <= 65535:
        raise UsageError(f"{msg}: {value!r} is not a port (1-65535)")
    return port


def load_inventory(path: Path) -> list[HostSpec]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"--hosts-file {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--hosts-file {path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"host"}
    if unknown:
        raise UsageError(f"--hosts-file {path}: unknown table(s) {', '.join(sorted(unknown))} (expected [[host]])")
    entries = data.get("host", [])
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"--hosts-file {path}: no [[host]] entries")
    return [_entry(e, i, path) for i, e in enumerate(entries, 1)]


def _entry(e: Any, i: int, path: Path) -> HostSpec:
    where = f"--hosts-file {path}: host #{i}"
    if not isinstance(e, dict):
        raise UsageError(f"{where}: expected a table")
    unknown = set(e) - _KEYS
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_KEYS))})")
    if not isinstance(e.get("address"), str):
        raise UsageError(f"{where}: 'address' (a string, [user@]host[:port]) is required")
    spec = parse_host(e["address"], where)
    changes: dict[str, Any] = {}
    if "user" in e:
        if not isinstance(e["user"], str) or not _NAME.match(e["user"]):
            raise UsageError(f"{where}: 'user' must be a user name")
        changes["user"] = e["user"]
    if "port" in e:
        changes["port"] = _port(e["port"], f"{where}: 'port'")
    if "slots" in e:
        slots = e["slots"]
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise UsageError(f"{where}: 'slots' must be a whole number of at least 1")
        changes["slots"] = slots
    if "key" in e:
        if not isinstance(e["key"], str) or not e["key"]:
            raise UsageError(f"{where}: 'key' must be a path")
        key = Path(e["key"]).expanduser()
        changes["key"] = key if key.is_absolute() else (path.parent / key).resolve()
    if "workdir" in e:
        if not isinstance(e["workdir"], str) or not e["workdir"].strip():
            raise UsageError(f"{where}: 'workdir' must be a directory path")
        changes["workdir"] = e["workdir"].strip()
    return replace(spec, **changes)


def resolve_hosts(hosts: Iterable[str], hosts_file: Path | None) -> list[HostSpec]:
    """The hosts of ``--hosts`` and ``--hosts-file``, in that order; each host once."""
    specs = [parse_host(h) for h in hosts if h.strip()]
    if hosts_file is not None:
        specs += load_inventory(Path(hosts_file))
    if not specs:
        raise UsageError("--backend ssh needs --hosts H1,H2 or --hosts-file FILE")
    seen: set[tuple[str | None, str, int | None]] = set()
    for s in specs:
        k = (s.user, s.host, s.port)
        if k in seen:
            raise UsageError(f"host {s.label} is listed twice")
        seen.add(k)
    return specs


def default_slots(specs: Sequence[HostSpec], workers: int) -> list[int]:
    """Slots per host: as given, else the run's workers spread evenly over the hosts without slots."""
    free = [s for s in specs if s.slots is None]
    given = sum(s.slots or 0 for s in specs)
    each = max(1, math.ceil(max(workers - given, 0) / len(free))) if free else 0
    return [s.slots if s.slots is not None else each for s in specs]
