"""The machine and software a benchmark session ran on (results are only comparable within one session)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import distpar

REPO = Path(distpar.__file__).resolve().parent.parent  # the distpar being measured


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _field(text: str, key: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip().strip('"')
    return None


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def describe() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    meminfo = _read("/proc/meminfo")
    mem_kib = _field(meminfo, "MemTotal")
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    try:
        ray_version: str | None = metadata.version("ray")  # installed or not; importing it is slow
    except metadata.PackageNotFoundError:
        ray_version = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _field(cpuinfo, "model name") or platform.processor() or None,
        "memory_gib": round(int(mem_kib.split()[0]) / 2**20, 2) if mem_kib else None,
        "os": _field(_read("/etc/os-release"), "PRETTY_NAME") or platform.platform(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "git": (_git("--version") or "").removeprefix("git version ") or None,
        "distpar": distpar.__version__,
        "distpar_commit": _git("rev-parse", "HEAD"),
        "distpar_tree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "ray": ray_version,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
