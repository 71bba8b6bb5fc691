"""What goes to a host: distpar itself (a zip, unpacked there), the tools a host needs, and files (bundles)
over SFTP, or over an exec channel when the host has no SFTP subsystem."""

from __future__ import annotations

import base64
import importlib.util
import os
import shlex
import sys
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distpar import agents
from distpar.backends.ssh.connection import CHANNEL_OPEN_TIMEOUT, close_quietly, run_script, stall_after, watchdog
from distpar.core.errors import BackendError
from distpar.core.model import AgentConfig

if TYPE_CHECKING:
    from distpar.backends.ssh.slots import Host

MIN_PYTHON = (3, 10)
CHUNK = 3 * 256 * 1024  # bytes per base64 line when a file goes over an exec channel
UNPACK = "import os, zipfile; zipfile.ZipFile('distpar.zip').extractall('lib'); os.remove('distpar.zip')"
# Without SFTP: a file arrives as base64 lines on stdin.
RECEIVE = ("import base64, os, sys; p = sys.argv[1]; f = open(p + '.part', 'wb')\n"
            "for line in sys.stdin.buffer: f.write(base64.b64decode(line))\n"
            "f.close(); os.replace(p + '.part', p)")


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


def package_dir(name: str) -> Path:
    """Where package ``name`` lives, found without importing it (distpar's root imports its Python API)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def build_zip(dest: Path) -> Path:
    """The ``distpar`` package as a zip (importable from PYTHONPATH): all a host needs of distpar, and
    cloudpickle (pure Python), which a preset defined in the user's own code needs to load there."""
    import cloudpickle

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for pkg in (package_dir("distpar"), Path(cloudpickle.__file__ or "").parent):
            for f in sorted(pkg.rglob("*.py")):
                z.write(f, f"{pkg.name}/{f.relative_to(pkg).as_posix()}")
    os.replace(tmp, dest)
    return dest


class Base64Lines:
    """An ``in_stream`` sending a file as base64 lines (invoke's stdin thread reads it; "" is the end)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed at the end of the data

    def read(self, _size: int = -1) -> str:
        data = b"" if self._f.closed else self._f.read(CHUNK)  # invoke reads on after the end
        if not data:
            self._f.close()
            return ""
        return base64.b64encode(data).decode() + "\n"


def upload_file(host: Host, conn: Any, local: str, remote: str) -> None:
    """Copy a file to the host atomically: with SFTP (fabric's ``put``) or, without, over an exec channel."""
    if host.sftp:
        _, client, lock = sftp_client(host, conn)
        with lock:  # bounded: every request on the client's channel times out after stall_after()
            try:
                client.put(local, remote + ".part")
                client.posix_rename(remote + ".part", remote)
            except BaseException:  # a reply may be half read: the next transfer gets a new client
                with host.lock:
                    if host.sftp_clients.get(id(conn), (None,))[0] is conn:
                        del host.sftp_clients[id(conn)]
                close_quietly(client)
                raise
        return
    code, _, err = run_script(conn, f"python3 -c {shlex.quote(RECEIVE)} {shlex.quote(remote)}",
                         in_stream=Base64Lines(local))
    if code != 0:
        raise BackendError(f"host {host.label}: cannot upload {Path(local).name} to {remote} "
                           f"(no SFTP, over the exec channel): {err.strip()[-300:] or f'exit code {code}'}")


def sftp_client(host: Host, conn: Any) -> tuple[Any, Any, threading.Lock]:
    """The connection's SFTP client (one per connection, opened on first use) and the lock its users take
    turns with; its channel's reads time out after ``stall_after()``."""
    with host.lock:
        entry = host.sftp_clients.get(id(conn))
        if entry is not None and entry[0] is conn:
            return entry
    with watchdog(conn, CHANNEL_OPEN_TIMEOUT, "opening SFTP"):
        client = conn.client.open_sftp()
    client.get_channel().settimeout(stall_after())
    with host.lock:
        entry = host.sftp_clients.get(id(conn))
        if entry is not None and entry[0] is conn:  # another thread was quicker
            close_quietly(client)
            return entry
        host.sftp_clients[id(conn)] = entry = (conn, client, threading.Lock())
        return entry


def probe_tools(conn: Any, exes: set[str]) -> dict[str, str]:
    lines = [
        "printf 'python=%s\\n' \"$(python3 -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])' 2>/dev/null)\"",
        "printf 'git=%s\\n' \"$(git --version 2>/dev/null)\"",
        "printf 'home=%s\\n' \"$HOME\"",
    ]
    lines += [f"printf 'exe:%s=%s\\n' {shlex.quote(e)} \"$(command -v {shlex.quote(e)} 2>/dev/null)\""
              for e in sorted(exes)]
    _, out, _ = run_script(conn, "\n".join(lines))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def missing_tools(info: dict[str, str], exes: set[str]) -> list[str]:
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
