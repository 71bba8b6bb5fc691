"""What every step of a unit's life shares: where it runs (``node_name``), how its events go out (``Emit``),
and ``UnitRun``, the unit on its way through the worker (what the steps read, and what they found)."""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distpar.core import names
from distpar.core.masking import mask
from distpar.core.model import UnitSpec, WorkerOptions, WorkerSettings, bounded_tail

TAIL_LINES = 20
TAIL_READ = 256 * 1024  # bytes of a log's end read for its tail

Emit = Callable[[str, dict[str, Any]], None]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] or "_"


def node_name() -> str:
    return os.environ.get("DISTPAR_NODE") or socket.gethostname()


def tail(path: Path, secrets: Iterable[str]) -> str:
    """The masked end of a log, bounded (``model.bounded_tail``): only the file's last bytes are read, so a
    log holding a 50 MB line costs no more than one holding a few."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL_READ))
            data = f.read(TAIL_READ)
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    # Masked before it is cut: a cut must not leave the start of a secret in sight.
    return bounded_tail(mask(text, secrets), lines=TAIL_LINES)


@dataclass
class UnitRun:
    """One unit in the worker: its settings and spec, its workspace, and what its steps found so far."""

    settings: WorkerSettings
    spec: UnitSpec
    ws: Path
    log_dir: Path
    env: dict[str, str]  # the git identity, the worker's ports, the plan file (not the forwarded variables)
    cancel: threading.Event
    emit: Emit | None = None
    before: str = ""  # the commit the unit started from
    secrets: tuple[str, ...] = ()  # values masked in everything the unit writes or reports
    notes: list[str] = field(default_factory=list)
    saved: str | None = None  # the ref its unfinished work was saved on, if any
    wrecked: str = ""  # why its workspace is unusable after the agent ran (it destroyed it), if it is
    status_head: str = ""  # HEAD when its work was looked at, before distpar's commit
    new_files: list[str] | None = None  # the files its work added or changed, when the status told them all

    @property
    def changed_files(self) -> list[str] | None:
        """The files its commit changed (or more), when the status before it saw them all: the agent committed
        nothing itself and made no repository of its own. None when git must be asked."""
        return self.new_files if self.status_head == self.before else None

    @property
    def opts(self) -> WorkerOptions:
        return self.settings.options

    @property
    def name(self) -> str:
        return names.key(self.spec.uid)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def out_path(self) -> Path:
        return self.log_dir / f"{self.name}.out"

    @property
    def prompt_file(self) -> Path:
        return self.log_dir / f"{self.name}.prompt.md"

    @property
    def trailer(self) -> str:
        return f"\n\nDistpar-Run: {self.settings.run_id}\nDistpar-Batch: {self.spec.uid}\n"

    def log(self, text: str) -> None:
        with self.log_path.open("a") as f:
            f.write(text)
