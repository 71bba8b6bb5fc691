"""What the coordinator's steps are handed instead of the whole run: where it works and what it owns there
(``RunSite``), and where what happens is told (``RunEvents``: the journal and the observer). Landing, the unit
specs and recovery take these and the few values they need, and return results the executor applies."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distpar.coordinator.journal import Journal
from distpar.core import names

log = logging.getLogger(__name__)

Observer = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class RunSite:
    """The repository a run works in, and the names of the branches and refs it owns there."""

    repo: Path
    run_id: str
    run_dir: Path
    start: str  # the target's commit when the run began: the base of every unit without dependencies
    target: str
    env: dict[str, str] = field(default_factory=dict)  # distpar's own commits: the user's git identity

    def branch(self, uid: str) -> str:
        return f"distpar/{self.run_id}/b/{names.key(uid)}"

    def saved_ref(self, uid: str) -> str:
        """Where a unit's unfinished work is kept when it fails or is interrupted."""
        return f"refs/distpar/{self.run_id}/saved/{names.key(uid)}"

    @property
    def integration(self) -> str:
        return f"distpar/{self.run_id}/integration"


class RunEvents:
    """Tells what happens: ``record`` to the journal, ``emit`` to the observer (live view, ``--json``), ``publish``
    to both. An observer that fails never breaks a run."""

    def __init__(self, journal: Journal, run_id: str, observer: Observer | None = None) -> None:
        self.journal, self.run_id = journal, run_id
        self.observer: Observer = observer or (lambda kind, data: None)

    def record(self, kind: str, worker: int | None = None, unit: str | None = None, **data: Any) -> None:
        self.journal.event(self.run_id, kind, worker, unit, **data)

    def emit(self, kind: str, **data: Any) -> None:
        try:
            self.observer(kind, data)
        except Exception:
            log.exception("observer failed on %s", kind)

    def publish(self, kind: str, worker: int | None = None, unit: str | None = None, **data: Any) -> None:
        self.record(kind, worker, unit, **data)
        self.emit(kind, **({"worker": worker} if worker is not None else {}),
                  **({"unit": unit} if unit is not None else {}), **data)
