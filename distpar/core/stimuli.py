"""What the run state hears and says: events in (a worker is up, a unit ended, a transport broke, Ctrl+C, time
passed) and instructions out (start this unit on that worker, record, retry, requeue, give up, stop waiting, cancel,
throttle, finish). Plain
frozen data, nothing else; ``distpar.core.state`` decides, ``distpar.coordinator.executor`` carries out."""

from __future__ import annotations

from dataclasses import dataclass

from distpar.core.model import AgentOutcome, UnitStatus

# --- events (stimuli) ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerUp:
    worker: int


@dataclass(frozen=True, slots=True)
class WorkerDown:
    """A worker is gone for good (its node or host died); what it ran goes to another worker."""

    worker: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class UnitEnded:
    uid: str
    worker: int
    status: UnitStatus
    cost_usd: float | None = None
    outcome: AgentOutcome | None = None  # what the agent reported: rate limits change how many run at once
    at: float | None = None  # when it ended (the executor's clock)
    rate_limited: bool = False  # the agent hit a rate limit before it could work: the state decides whether the
    # unit goes back to the queue (``Requeue``, a few times at most) or its end stands (``GiveUp``)
    conflicts: bool = False  # its work conflicts with work already finished (found before the final merge)
    conflict_files: tuple[str, ...] = ()  # with ``conflicts``: the files, and the finished units that touched them
    conflict_with: tuple[str, ...] = ()
    touched: tuple[str, ...] = ()  # with ``conflicts``: every file its work changed (a rerun's place in the queue)


@dataclass(frozen=True, slots=True)
class UnitLost:
    """The transport failed while the unit ran (not the agent): it may run again from the same base."""

    uid: str
    worker: int
    error: str


@dataclass(frozen=True, slots=True)
class Blocked:
    """Merging the unit's dependencies into its base conflicted: it cannot run."""

    uid: str
    worker: int
    reason: str


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Ctrl+C: start nothing more, cancel what runs, and wait for it at most ``RunState.cancel_wait`` from ``at``."""

    at: float | None = None  # the executor's clock (None: the last time the state heard of)


@dataclass(frozen=True, slots=True)
class Fatal:
    """The coordinator cannot go on (git or a transport broke under it): start nothing more."""

    error: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the executor sends its clock, so that pauses end without the state reading a clock)."""

    now: float


Event = WorkerUp | WorkerDown | UnitEnded | UnitLost | Blocked | Interrupt | Fatal | Tick


# --- instructions ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    uid: str
    worker: int
    attempt: int
    rerun: int = 0  # > 0: the unit's n-th run after a conflict (its base: everything integrated so far)


@dataclass(frozen=True, slots=True)
class Record:
    """A unit ends without running (skipped after a failed dependency, or failed after its transport broke)."""

    uid: str
    status: UnitStatus
    reason: str


@dataclass(frozen=True, slots=True)
class Retry:
    """The unit's transport broke; it goes back to the queue (journaled as such)."""

    uid: str
    attempt: int
    error: str


@dataclass(frozen=True, slots=True)
class Requeue:
    """A rate-limited unit goes back to the queue (the ``count``-th time): keep what it reported, it adds to what
    the unit finally reports."""

    uid: str
    count: int


@dataclass(frozen=True, slots=True)
class Rerun:
    """``--on-conflict rerun``: the unit's finished work conflicts with work already integrated; it joins the merge
    queue and runs again (the ``count``-th time) from a base holding everything integrated so far (``base_units``
    when it was queued, and whatever is integrated by the time it starts). Its earlier attempt is kept on a ref."""

    uid: str
    base_units: tuple[str, ...]
    reason: str
    files: tuple[str, ...] = ()
    conflict_with: tuple[str, ...] = ()
    count: int = 1
    holds: tuple[str, ...] = ()  # the files it waits for in the queue (conflicting or changed by its earlier try)


@dataclass(frozen=True, slots=True)
class GiveUp:
    """A rate-limited unit is not requeued (``reason``: it was too often, or the run was interrupted): its
    reported end stands, record it."""

    uid: str
    reason: str


@dataclass(frozen=True, slots=True)
class StopWaiting:
    """An interrupted run waited ``waited`` seconds and these units did not stop: the run ends without them
    (they stay pending, resumable)."""

    uids: tuple[str, ...]
    waited: float


@dataclass(frozen=True, slots=True)
class CancelAll:
    pass


@dataclass(frozen=True, slots=True)
class BudgetSpent:
    spent: float
    not_started: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Throttle:
    """How many agents may run at once changed (rate limits), or starts pause until ``until``; ``stop``: a usage
    limit far away, nothing more starts in this run (it ends resumable)."""

    limit: int
    until: float | None
    stop: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Finish:
    """Nothing runs and nothing more will start. ``complete``: every unit ended ok (the executor merges)."""

    complete: bool


Instruction = (Start | Record | Retry | Requeue | Rerun | GiveUp | StopWaiting | CancelAll | BudgetSpent | Throttle
               | Finish)
