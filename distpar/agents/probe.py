"""``distpar agents``: whether each preset's CLI is installed here, and its version."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distpar.agents.base import strip_ansi
from distpar.agents.registry import PRESETS, command
from distpar.core.model import AgentConfig

VERSION_TIMEOUT = 20.0  # node CLIs start slowly on a loaded machine (gemini: several seconds)


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    description: str
    command: list[str]
    path: str | None  # where the command was found, None when it is not installed
    version: str | None
    error: str
    key_vars: tuple[str, ...]
    keys_set: tuple[str, ...]  # names only, never values

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def probe(name: str, env: Mapping[str, str] | None = None, timeout: float = VERSION_TIMEOUT) -> Probe:
    """Whether preset ``name``'s CLI is installed here, and its ``--version`` (bounded by ``timeout``)."""
    import shutil

    env = dict(os.environ if env is None else env)
    preset = PRESETS[name]
    argv = command(AgentConfig(preset=name), env)
    path = shutil.which(argv[0], path=env.get("PATH"))
    keys_set = tuple(k for k in preset.key_vars if env.get(k))
    version, error = None, ""
    if path is None:
        error = f"{argv[0]} not found on PATH"
    else:
        for k in preset.unset:
            env.pop(k, None)
        try:
            proc = subprocess.Popen([path, *argv[1:], "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            error = f"cannot run {argv[0]}: {exc.strerror or exc}"
        else:
            try:
                out, errs = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid)
                proc.communicate()
                error = f"{argv[0]} --version did not answer within {timeout:g}s"
            else:
                line = version_line(out.decode("utf-8", "replace"), errs.decode("utf-8", "replace"))
                if proc.returncode == 0 and line:
                    version = line
                else:
                    error = f"{argv[0]} --version exited with {proc.returncode}" + (f": {line}" if line else "")
            finally:
                _killpg(proc.pid)  # nothing it started outlives the probe
    return Probe(name, preset.description, argv, path, version, error, preset.key_vars, keys_set)


_VERSION = re.compile(r"\d+\.\d+")
_WARNING = re.compile(r"^(?:warn(?:ing)?|error|note|deprecat)", re.IGNORECASE)


def version_line(stdout: str, stderr: str) -> str:
    """The line of ``--version``'s output that names the version: on stdout before stderr, skipping warnings
    (codex prints "WARNING: proceeding, even though ..." first) and lines without a version number."""
    for text in (stdout, stderr):
        for line in strip_ansi(text).splitlines():
            line = line.strip()
            if line and _VERSION.search(line) and not _WARNING.match(line):
                return line[:200]
    lines = [ln.strip() for ln in strip_ansi(stdout + "\n" + stderr).splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
