"""Helpers for the operating tests: the journal of the test's DISTPAR_HOME, waiting for a run to get somewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from distpar.coordinator.journal import Journal

T = TypeVar("T")


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def run_ids() -> list[str]:
    """Every run in the journal, newest first."""
    path = Path(os.environ["DISTPAR_HOME"]) / "journal.db"
    if not path.exists():
        return []
    j = journal()
    try:
        return [str(r["id"]) for r in j.runs()]
    finally:
        j.close()


def only_run_id() -> str:
    ids = run_ids()
    assert len(ids) == 1, ids
    return ids[0]


@contextmanager
def start_distpar(*args: str, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """The CLI in the background, in its own session (so a test can SIGKILL the coordinator alone); killed, if
    still running, and its pipes closed when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "distpar", *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


def batch_state(run_id: str, batch_id: str) -> str | None:
    j = journal()
    try:
        row = j.unit(run_id, batch_id)
    finally:
        j.close()
    return row["state"] if row else None
