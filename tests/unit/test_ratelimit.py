"""distpar/core/ratelimit.py: additive increase, multiplicative decrease; pauses until reset times; far resets stop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpar.core.model import AgentOutcome
from distpar.core.ratelimit import DEFAULT_PAUSE, RateLimiter

OK = AgentOutcome("success", True)
LIMITED = AgentOutcome("api_error", False, "429", transient=True, rate_limited=True)


def test_a_rate_limit_halves_and_successes_climb_back() -> None:
    r = RateLimiter(ceiling=8)
    assert r.allowed == 8
    r = r.observe(LIMITED, now=100.0)
    assert r.allowed == 4
    # a burst from agents started together counts once (cooldown)
    r = r.observe(LIMITED, now=101.0)
    assert r.allowed == 4
    r = r.observe(LIMITED, now=111.0)
    assert r.allowed == 2
    # one slot more per window of successes, never above the ceiling
    for _ in range(2):
        r = r.observe(OK, now=200.0)
    assert r.allowed == 2  # 2 + 1/2 + 1/2.5
    r = r.observe(OK, now=200.0)
    assert r.allowed == 3
    for _ in range(100):
        r = r.observe(OK, now=300.0)
    assert r.allowed == 8


def test_a_rate_limit_pauses_new_starts_until_retry_after() -> None:
    r = RateLimiter(ceiling=4).observe(AgentOutcome("api_error", False, rate_limited=True, retry_after=20), 100.0)
    d = r.decide(110.0, running=0)
    assert (d.start, d.wait_until, d.stop) == (False, 120.0, False)
    assert r.decide(120.0, running=1).start
    assert not r.decide(120.0, running=2).start  # the halved limit holds
    # no time reported: a default pause
    r2 = RateLimiter(ceiling=4).observe(LIMITED, 0.0)
    assert r2.decide(0.0, 0).wait_until == DEFAULT_PAUSE


def test_a_usage_limit_soon_pauses_one_far_away_stops() -> None:
    soon = AgentOutcome("usage_limit", False, rate_limited=True, resets_at=1000.0 + 600)
    r = RateLimiter(ceiling=4).observe(soon, 1000.0)
    d = r.decide(1001.0, 0)
    assert (d.start, d.stop, d.wait_until) == (False, False, 1600.0)
    far = AgentOutcome("usage_limit", False, rate_limited=True, resets_at=1000.0 + 5 * 3600)
    d = RateLimiter(ceiling=4).observe(far, 1000.0).decide(99999.0, 0)
    assert (d.start, d.stop, d.wait_until) == (False, True, 1000.0 + 5 * 3600)
    assert "usage limit" in d.reason
    unknown = RateLimiter(ceiling=4).observe(AgentOutcome("usage_limit", False), 0.0).decide(0.0, 0)
    assert unknown.stop and unknown.wait_until is None


def test_other_failures_change_nothing_and_bad_settings_are_refused() -> None:
    r = RateLimiter(ceiling=3)
    assert r.observe(AgentOutcome("error", False, "400"), 0.0) == r
    with pytest.raises(ValueError):
        RateLimiter(ceiling=0)
    with pytest.raises(ValueError):
        RateLimiter(ceiling=2, decrease=1.5)


@given(st.integers(1, 64), st.lists(st.tuples(st.booleans(), st.floats(0, 50)), max_size=200))
def test_the_limit_stays_between_floor_and_ceiling(ceiling: int, events: list[tuple[bool, float]]) -> None:
    r, now = RateLimiter(ceiling=ceiling), 0.0
    for limited, dt in events:
        now += dt
        before = r.allowed
        r = r.observe(LIMITED if limited else OK, now)
        assert 1 <= r.allowed <= ceiling
        if not limited:
            assert r.allowed >= before  # successes never lower it
        d = r.decide(now, running=r.allowed)
        assert not d.start  # never more than the limit at once
