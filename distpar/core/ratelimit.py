"""How many agents a run lets run at once, from what the agents report: a pure controller (no clock, no I/O).

Additive increase, multiplicative decrease, as TCP does: every agent that finishes without a rate limit raises
the limit by ``increase / limit`` (one slot more per window of successes), every rate-limited one (a 429, an
"overloaded", a usage limit: ``AgentOutcome.rate_limited``) halves it, at most once per ``cooldown`` seconds so
that a burst of 429s from agents started together counts once. A retry-after or reset time that the CLI reported
pauses new starts until then; a usage limit that resets more than ``stop_after`` seconds later stops starting
units altogether (the run ends resumable, saying when the limit resets).

The caller (the coordinator) owns the clock: it passes ``now`` to every call and asks ``decide(now, running)``
before it starts a unit.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace

from distpar.core.model import AgentOutcome

DEFAULT_PAUSE = 30.0  # seconds without new starts after a rate limit that named no time


@dataclass(frozen=True, slots=True)
class Decision:
    start: bool  # a new unit may start now
    limit: int  # agents allowed at once
    wait_until: float | None = None  # no new start before then (epoch seconds)
    stop: bool = False  # start nothing more in this run (a usage limit far away)
    reason: str = ""  # for the live view and the journal


@dataclass(frozen=True, slots=True)
class RateLimiter:
    """The controller's state; every method returns a new one."""

    ceiling: int  # the run's --max-concurrent-agents (or worker count): never above it
    floor: int = 1
    limit: float = 0.0  # 0: start at the ceiling
    increase: float = 1.0
    decrease: float = 0.5
    cooldown: float = 10.0
    stop_after: float = 3600.0  # a reset further away than this stops the run instead of pausing it
    pause_until: float = 0.0
    last_decrease: float = float("-inf")
    stopped_until: float | None = None  # the usage limit's reset, once it stopped the run
    reason: str = ""
    default_pause: float = DEFAULT_PAUSE  # seconds without new starts after a rate limit that named no time

    def __post_init__(self) -> None:
        if self.ceiling < 1 or self.floor < 1 or self.floor > self.ceiling:
            raise ValueError(f"need 1 <= floor ({self.floor}) <= ceiling ({self.ceiling})")
        if not 0 < self.decrease < 1:
            raise ValueError(f"decrease must be in (0, 1), not {self.decrease}")
        if self.limit == 0.0:
            object.__setattr__(self, "limit", float(self.ceiling))

    @property
    def allowed(self) -> int:
        return max(self.floor, min(self.ceiling, int(self.limit)))

    def observe(self, outcome: AgentOutcome, now: float) -> RateLimiter:
        """Account for one finished agent."""
        if not outcome.rate_limited and outcome.result_class not in ("usage_limit",):
            if outcome.ok:
                return replace(self, limit=min(float(self.ceiling), self.limit + self.increase / max(self.limit, 1)))
            return self
        state = self
        if now - self.last_decrease >= self.cooldown:
            state = replace(state, limit=max(float(self.floor), self.limit * self.decrease), last_decrease=now)
        until = _until(outcome, now)
        if outcome.result_class == "usage_limit" and until is not None and until - now > self.stop_after:
            return replace(state, stopped_until=until,
                           reason=f"usage limit: resets at {until:.0f}; no new units until then")
        if outcome.result_class == "usage_limit" and until is None:
            return replace(state, stopped_until=float("inf"), reason="usage limit with no reset time reported")
        pause = until if until is not None else now + self.default_pause
        if pause > state.pause_until:
            state = replace(state, pause_until=pause)
        return replace(state, reason=f"rate limited: {state.allowed} agent(s) at once, new starts from {pause:.0f}")

    def decide(self, now: float, running: int) -> Decision:
        """Whether one more unit may start now, with ``running`` agents running."""
        if self.stopped_until is not None:
            until = None if self.stopped_until == float("inf") else self.stopped_until
            return Decision(False, self.allowed, until, stop=True, reason=self.reason)
        if now < self.pause_until:
            return Decision(False, self.allowed, self.pause_until, reason=self.reason)
        if running >= self.allowed:
            return Decision(False, self.allowed, reason=f"{running} of {self.allowed} agent(s) running")
        return Decision(True, self.allowed)


def _until(outcome: AgentOutcome, now: float) -> float | None:
    """When the provider said to try again: ``resets_at``, else ``now + retry_after``."""
    if outcome.resets_at is not None and outcome.resets_at > now:
        return outcome.resets_at
    if outcome.retry_after is not None and outcome.retry_after > 0:
        return now + outcome.retry_after
    return None


RETRY_BASE_VAR = "DISTPAR_RETRY_BASE_SECONDS"
RETRY_BASE_SECONDS = 10.0
RETRY_CAP_SECONDS = 300.0


def retry_base() -> float:
    """``$DISTPAR_RETRY_BASE_SECONDS`` (tests make it tiny), else 10 s: the unit of every retry wait."""
    return float(os.environ.get(RETRY_BASE_VAR) or RETRY_BASE_SECONDS)


def retry_delay(n: int) -> float:
    """Seconds before try ``n + 1``: exponential in ``n`` with jitter (half fixed, half random), capped."""
    base = retry_base()
    d = min(RETRY_CAP_SECONDS, base * 2 ** (n - 1))
    return d / 2 + random.uniform(0, d / 2)
