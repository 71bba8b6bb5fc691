"""How a run option is declared: a dataclass field carrying an ``Option`` in its metadata (``opt``). The worker's
options (``distpar.core.model.WorkerOptions``) and the run's (``distpar.coordinator.options.RunOptions``, which
extends them) are declared this way; the CLI, the config, the journal, resume, the API, MCP and the docs read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Option:
    """How a run option is offered. ``kind``: bool, int, float, str, list (a repeated flag), or agent/dict (set by
    the program, never a flag); ``min``/``min_open``:
    the smallest value allowed (exclusive when ``min_open``); ``scale``: the flag's unit (warn_size is given in MB
    and kept in bytes)."""

    help: str
    flag: str | None = None  # None: not offered by ``distpar run`` (set by the program, e.g. plan_path)
    kind: str = "str"
    metavar: str | None = None
    min: float | None = None
    min_open: bool = False
    config: bool = False  # [tool.distpar] may set it (a repository setting: never a secret)
    resume: bool = False  # ``distpar resume --FLAG`` may change it
    scale: float = 1.0  # stored value = flag value x scale
    negatable: bool = False  # a bool flag with --no-FLAG too (for options [tool.distpar] can turn on)
    choices: tuple[str, ...] = ()  # a str option that takes only these values (a click.Choice, an MCP enum)


def opt(default: Any = None, *, factory: Any = None, **spec: Any) -> Any:
    """A ``RunOptions`` field with its ``Option``."""
    meta = {"option": Option(**spec)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)
