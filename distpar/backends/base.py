"""The backend contract: submit a unit (with its worker's settings), get a future of its reply; cancel; start
and close."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from distpar.core.model import AgentConfig, UnitReply, UnitSpec, WorkerSettings
from distpar.infra import paths
from distpar.infra.pool import LOCAL_POOL


@dataclass(frozen=True, slots=True)
class RunContext:
    run_id: str
    repo: Path  # the coordinator's repository
    run_dir: Path  # per-run state on the coordinator (logs, bundles, local worktrees)
    workers: int
    agents: tuple[AgentConfig, ...] = ()  # every agent the plan uses, so hosts can be checked up front
    # Workers report what happens inside a unit as it happens (``unit_started``, ...) through this, from any
    # thread; the coordinator journals and shows it. Backends whose transport can carry it pass it on.
    events: Callable[[str, dict[str, Any]], None] | None = None


class Backend(ABC):
    """Runs units on workers. ``remote`` backends get the code as bundles and hand new commits back as bundles;
    local ones share the coordinator's repository through worktrees. Everything else (scheduling, merging,
    journaling, retries) belongs to the runtime, so every backend behaves alike."""

    name: ClassVar[str]
    remote: ClassVar[bool] = False

    def start(self, ctx: RunContext) -> None:  # noqa: B027 - optional hook
        """Connect, check hosts, start a cluster. Raise BackendError when that is impossible."""

    @abstractmethod
    def submit(self, settings: WorkerSettings, spec: UnitSpec) -> Future[UnitReply]:
        """Start running one unit on worker ``spec.worker``, whose settings are ``settings`` (the same for all its
        units: a backend sends them to a worker once). The future raises BackendError when the transport (not
        the agent) fails."""

    def cancel(self) -> None:  # noqa: B027 - optional hook
        """Ask every running unit to stop: agents are killed, their work saved, results still returned."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything ``start`` acquired. Called once, also after errors and interrupts, before the
        final merge; slow teardown that touches nothing of the run (stopping a cluster it started) may go on
        in the background until ``wait_closed``."""

    def wait_closed(self) -> None:  # noqa: B027 - optional hook
        """Wait for what ``close`` left running. Called once, after the final merge."""

    def workspace(self, ctx: RunContext, worker: int) -> str:
        """Where worker ``worker`` keeps its workspace for the whole run (units after the first reuse it):
        outside the checkout (see paths.py)."""
        return str(paths.workspace(ctx.repo, ctx.run_id, worker))

    def pool(self, ctx: RunContext) -> str:
        """Where ``--reuse-workspaces`` keeps this repository's workspaces between runs on the workers' machine:
        locally under the repository's worktrees base; a remote backend's nodes anchor the repository's key in
        their work directory (``<dir>/pool/<key>``)."""
        return paths.repo_key(ctx.repo) if self.remote else str(paths.worktrees_base(ctx.repo) / LOCAL_POOL)

    def log_dir(self, ctx: RunContext) -> str:
        return str(ctx.run_dir / "logs")
