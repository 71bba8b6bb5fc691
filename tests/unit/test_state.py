"""The pure run state: every transition by plain asserts, then hypothesis properties over random DAGs, worker
counts and interleavings of completions, failures, transport losses, worker deaths and interrupts."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpar.core.model import AgentOutcome, UnitStatus
from distpar.core.ratelimit import RateLimiter
from distpar.core.state import (
    Blocked,
    BudgetSpent,
    CancelAll,
    Event,
    Fatal,
    Finish,
    GiveUp,
    Instruction,
    Interrupt,
    InvariantError,
    Record,
    Requeue,
    Rerun,
    Retry,
    RunState,
    Start,
    StopWaiting,
    Throttle,
    Tick,
    UnitEnded,
    UnitInfo,
    UnitLost,
    WorkerDown,
    WorkerUp,
    critical_path,
)

OK, FAILED, SKIPPED, BLOCKED = UnitStatus.OK, UnitStatus.FAILED, UnitStatus.SKIPPED, UnitStatus.BLOCKED


def units(*specs: str | tuple[str, str]) -> list[UnitInfo]:
    """``"a"`` or ``("c", "a b")`` (c depends on a and b); plan order as given, no priorities."""
    out = []
    for i, s in enumerate(specs):
        uid, deps = (s, "") if isinstance(s, str) else s
        out.append(UnitInfo(uid, tuple(deps.split()), order=i))
    return out


def up(state: RunState, workers: int) -> list[Instruction]:
    """Bring workers 0..workers-1 up one by one, as the executor does."""
    out: list[Instruction] = []
    for w in range(workers):
        out += state.handle(WorkerUp(w))
    return out


def starts(instructions: list[Instruction]) -> list[tuple[str, int]]:
    return [(i.uid, i.worker) for i in instructions if isinstance(i, Start)]


def finishes(instructions: list[Instruction]) -> list[Finish]:
    return [i for i in instructions if isinstance(i, Finish)]


# --- creation and queries ----------------------------------------------------------------------------------


def test_unknown_dependency_is_refused_with_both_names() -> None:
    with pytest.raises(ValueError, match="unit 'b' depends on unknown unit 'x'"):
        RunState.create(units("a", ("b", "x")))


def test_ready_orders_by_priority_then_plan_order() -> None:
    us = [UnitInfo("a", order=0), UnitInfo("b", priority=5.0, order=1), UnitInfo("c", priority=5.0, order=2),
          UnitInfo("d", ("a",), priority=9.0, order=3)]
    state = RunState.create(us)
    assert state.ready() == ["b", "c", "a"]  # d waits for a, whatever its priority


def test_critical_path_is_longest_estimate_weighted_path_to_the_end() -> None:
    rank = critical_path([("a", (), 1.0), ("b", ("a",), 5.0), ("c", ("a",), 2.0), ("d", ("c",), 4.0)])
    assert rank == {"a": 7.0, "b": 5.0, "c": 6.0, "d": 4.0}


# --- dispatch ----------------------------------------------------------------------------------------------


def test_dispatch_by_priority_then_plan_order_to_workers_in_the_order_they_came_free() -> None:
    us = [UnitInfo("a", order=0), UnitInfo("b", priority=3.0, order=1), UnitInfo("c", order=2),
          UnitInfo("d", priority=3.0, order=3)]
    state = RunState.create(us)
    assert starts(up(state, 3)) == [("b", 0), ("d", 1), ("a", 2)]
    assert starts(state.handle(UnitEnded("d", 1, OK))) == [("c", 1)]


def test_a_free_worker_takes_the_next_ready_unit_when_one_ends() -> None:
    state = RunState.create(units("a", "b", "c"))
    assert starts(up(state, 1)) == [("a", 0)]
    assert starts(state.handle(UnitEnded("a", 0, OK))) == [("b", 0)]
    assert starts(state.handle(UnitEnded("b", 0, OK))) == [("c", 0)]
    out = state.handle(UnitEnded("c", 0, OK))
    assert out == [Finish(True)] and state.finished and state.complete


def test_while_a_long_unit_runs_the_other_worker_takes_every_short_one() -> None:
    """Two workers, one long unit and four short ones of equal estimate: each short one goes to the worker that
    comes free, one after another (a schedule frozen up front would have put two behind the long one)."""
    state = RunState.create(units("long", "s0", "s1", "s2", "s3"))
    assert starts(up(state, 2)) == [("long", 0), ("s0", 1)]
    for i in range(3):
        assert starts(state.handle(UnitEnded(f"s{i}", 1, OK))) == [(f"s{i + 1}", 1)]
    assert starts(state.handle(UnitEnded("s3", 1, OK))) == [] and state.free == [1] and not state.finished
    assert state.handle(UnitEnded("long", 0, OK)) == [Finish(True)]
    assert state.assignment == {"long": 0, "s0": 1, "s1": 1, "s2": 1, "s3": 1}


def test_a_unit_starts_only_after_all_its_dependencies_ended_ok() -> None:
    state = RunState.create(units("a", "b", ("c", "a b")))
    assert starts(up(state, 3)) == [("a", 0), ("b", 1)]
    assert starts(state.handle(UnitEnded("a", 0, OK))) == []
    assert starts(state.handle(UnitEnded("b", 1, OK))) == [("c", 0)]  # 2 came free first, but 0 ran a (first dep)


def test_start_carries_the_attempt() -> None:
    state = RunState.create(units("a"))
    assert up(state, 1) == [Start("a", 0, 1)]


def test_pinned_unit_runs_only_on_its_worker() -> None:
    us = [UnitInfo("a", pin=1, order=0), UnitInfo("b", pin=1, order=1), UnitInfo("c", order=2)]
    state = RunState.create(us)
    assert starts(up(state, 2)) == [("c", 0), ("a", 1)]
    assert starts(state.handle(UnitEnded("c", 0, OK))) == []  # b waits for worker 1, worker 0 stays idle
    assert state.free == [0]
    assert starts(state.handle(UnitEnded("a", 1, OK))) == [("b", 1)]


def test_pinned_unit_waits_for_its_worker_to_come_up() -> None:
    # The executor brings workers up one by one; a unit pinned to worker 1 must not go to worker 0 meanwhile.
    us = [UnitInfo("a", priority=2.0, pin=1, order=0), UnitInfo("b", priority=1.0, pin=0, order=1)]
    state = RunState.create(us)
    assert starts(state.handle(WorkerUp(0))) == [("b", 0)]
    assert starts(state.handle(WorkerUp(1))) == [("a", 1)]


def test_pinned_unit_goes_to_any_worker_once_its_worker_is_gone() -> None:
    us = [UnitInfo("a", pin=1, order=0), UnitInfo("b", ("a",), pin=1, order=1)]
    state = RunState.create(us)
    assert starts(up(state, 2)) == [("a", 1)]
    out = state.handle(WorkerDown(1, "node lost"))
    assert Retry("a", 2, "node lost") in out and starts(out) == [("a", 0)]
    assert starts(state.handle(UnitEnded("a", 0, OK))) == [("b", 0)]


def test_locality_prefers_the_free_worker_that_ran_a_dependency() -> None:
    state = RunState.create(units("a", "b", "c", ("d", "b")))
    assert starts(up(state, 3)) == [("a", 0), ("b", 1), ("c", 2)]
    state.handle(UnitEnded("a", 0, OK))  # 0 comes free first ...
    out = state.handle(UnitEnded("b", 1, OK))  # ... but d goes to 1, whose workspace already has b
    assert starts(out) == [("d", 1)]
    assert state.free == [0]


def test_locality_falls_back_to_the_first_free_worker() -> None:
    state = RunState.create(units("a", "b", "c", ("d", "a")))
    assert starts(up(state, 2)) == [("a", 0), ("b", 1)]
    assert starts(state.handle(UnitEnded("a", 0, OK))) == [("c", 0)]  # plan order: c before d
    assert starts(state.handle(UnitEnded("b", 1, OK))) == [("d", 1)]  # 0 (which ran a) is busy: any free worker


def test_worker_up_twice_is_one_worker() -> None:
    state = RunState.create(units("a", "b"))
    state.handle(WorkerUp(0))
    assert state.handle(WorkerUp(0)) == [] and state.free == []


# --- failures ----------------------------------------------------------------------------------------------


def test_failure_skips_dependents_transitively_and_spares_the_rest() -> None:
    state = RunState.create(units("a", ("b", "a"), ("c", "b"), "d", ("e", "c d")))
    up(state, 2)  # a on 0, d on 1
    out = state.handle(UnitEnded("a", 0, FAILED))
    skipped = {i.uid: i.reason for i in out if isinstance(i, Record)}
    assert skipped == {"b": "dependency a did not succeed", "c": "dependency b did not succeed",
                       "e": "dependency c did not succeed"}
    assert all(i.status is SKIPPED for i in out if isinstance(i, Record))
    assert finishes(out) == []  # d still runs
    assert state.handle(UnitEnded("d", 1, OK)) == [Finish(False)]
    assert state.done == {"a": FAILED, "b": SKIPPED, "c": SKIPPED, "d": OK, "e": SKIPPED}


def test_blocked_unit_skips_its_dependents_and_marks_a_conflict() -> None:
    state = RunState.create(units("a", ("b", "a"), ("c", "b"), "d"))
    up(state, 2)
    state.handle(UnitEnded("a", 0, OK))  # b starts on 0
    assert state.running["b"] == (0, 1)
    out = state.handle(Blocked("b", 0, "merging its dependencies conflicts in f"))
    assert Record("c", SKIPPED, "dependency b did not succeed") in out
    assert state.done["b"] is BLOCKED and state.conflicted
    assert not any(isinstance(i, Record) and i.uid == "b" for i in out)  # the executor records b itself
    assert state.free == [0]


def test_blocked_stops_new_starts_with_stop_on_conflict() -> None:
    state = RunState.create(units("a", "b", "c"), stop_on_conflict=True)
    up(state, 2)
    assert starts(state.handle(Blocked("a", 0, "conflict"))) == []
    assert state.handle(UnitEnded("b", 1, OK)) == [Finish(False)]
    assert state.pending == ["c"]


def test_transport_loss_retries_up_to_retries_then_fails() -> None:
    state = RunState.create(units("a", ("b", "a")), retries=2)
    assert up(state, 2) == [Start("a", 0, 1)]
    out = state.handle(UnitLost("a", 0, "broken pipe"))
    assert out[0] == Retry("a", 2, "broken pipe") and starts(out) == [("a", 1)]  # 1 came free first
    assert state.running["a"] == (1, 2)
    out = state.handle(UnitLost("a", 1, "broken pipe"))
    assert out[0] == Retry("a", 3, "broken pipe") and state.running["a"][1] == 3
    worker = state.running["a"][0]
    out = state.handle(UnitLost("a", worker, "broken pipe"))
    assert out == [Record("a", FAILED, "broken pipe"), Record("b", SKIPPED, "dependency a did not succeed"),
                   Finish(False)]


def test_no_retries_fails_at_the_first_loss() -> None:
    state = RunState.create(units("a"), retries=0)
    up(state, 1)
    assert state.handle(UnitLost("a", 0, "gone")) == [Record("a", FAILED, "gone"), Finish(False)]


def test_worker_down_requeues_its_unit_on_another_worker() -> None:
    state = RunState.create(units("a", "b", "c"))
    up(state, 2)
    out = state.handle(WorkerDown(0))
    assert out[0] == Retry("a", 2, "worker 0 went away")
    assert 0 not in state.alive and 0 not in state.free
    assert state.handle(UnitEnded("b", 1, OK)) == [Start("a", 1, 2)]  # a before c: plan order
    assert starts(state.handle(UnitEnded("a", 1, OK))) == [("c", 1)]


def test_worker_down_error_is_the_retry_reason() -> None:
    state = RunState.create(units("a"))
    up(state, 2)
    assert state.handle(WorkerDown(0, "node 10.0.0.3 died"))[:2] == [Retry("a", 2, "node 10.0.0.3 died"),
                                                                      Start("a", 1, 2)]


def test_worker_down_of_an_idle_worker_leaves_the_pool() -> None:
    state = RunState.create(units("a", "b"))
    up(state, 3)
    assert state.handle(WorkerDown(2)) == [] and state.free == []
    state.handle(UnitEnded("a", 0, OK))
    assert state.free == [0]


def test_no_workers_left_finishes_with_work_pending() -> None:
    state = RunState.create(units("a", ("b", "a"), "c"))
    up(state, 2)
    state.handle(WorkerDown(1))
    out = state.handle(WorkerDown(0))
    assert out[-1] == Finish(False) and len(finishes(out)) == 1
    assert set(state.pending) == {"a", "b", "c"} and not state.running


def test_worker_back_up_takes_work_again() -> None:
    state = RunState.create(units("a", "b", "c"))
    up(state, 2)
    state.handle(WorkerDown(1))  # b goes back to the queue
    assert state.handle(WorkerUp(1)) == [Start("b", 1, 2)]
    assert 1 in state.alive and state.running["b"] == (1, 2)


def test_interrupt_cancels_once_and_starts_nothing_more() -> None:
    state = RunState.create(units("a", "b", "c", "d"))
    up(state, 2)
    assert state.handle(Interrupt()) == [CancelAll()]
    assert state.handle(Interrupt()) == []
    assert state.handle(UnitEnded("a", 0, UnitStatus.INTERRUPTED)) == []
    assert state.handle(UnitLost("b", 1, "killed")) == [Record("b", FAILED, "killed"), Finish(False)]
    assert state.pending == ["c", "d"]


def test_interrupt_with_nothing_running_finishes_at_once() -> None:
    state = RunState.create(units("a"))
    assert state.handle(Interrupt()) == [CancelAll(), Finish(False)]


def test_interrupt_overrides_requeue() -> None:
    state = RunState.create(units("a"))
    up(state, 1)
    state.handle(Interrupt())
    out = state.handle(UnitEnded("a", 0, UnitStatus.INTERRUPTED, rate_limited=True))
    assert out == [GiveUp("a", "the run was interrupted"), Finish(False)]
    assert state.done == {"a": UnitStatus.INTERRUPTED} and state.requeues == {}


def test_fatal_cancels_once_and_starts_nothing_more() -> None:
    state = RunState.create(units("a", "b"), retries=3)
    up(state, 1)
    assert state.handle(Fatal("git broke")) == [CancelAll()]
    assert state.handle(Fatal("again")) == []
    assert state.handle(UnitLost("a", 0, "gone")) == [Record("a", FAILED, "gone"), Finish(False)]  # no retry
    assert state.pending == ["b"]


def test_budget_spent_once_then_no_new_starts() -> None:
    state = RunState.create(units("a", "b", "c", "d"), budget_usd=1.0)
    up(state, 2)
    assert state.handle(UnitEnded("a", 0, OK, cost_usd=0.4)) == [Start("c", 0, 1)]
    out = state.handle(UnitEnded("b", 1, OK, cost_usd=0.6))
    assert out == [BudgetSpent(1.0, ("d",))] and state.budget_exhausted
    assert state.handle(UnitEnded("c", 0, OK, cost_usd=5.0)) == [Finish(False)]  # BudgetSpent only once
    assert state.spent == 6.0 and state.pending == ["d"]


def test_no_budget_never_stops() -> None:
    state = RunState.create(units("a", "b"))
    up(state, 1)
    assert starts(state.handle(UnitEnded("a", 0, OK, cost_usd=1e9))) == [("b", 0)]


def test_conflict_found_stops_new_starts_only_with_stop_on_conflict() -> None:
    for stop in (False, True):
        state = RunState.create(units("a", "b", "c"), stop_on_conflict=stop)
        up(state, 1)
        out = state.handle(UnitEnded("a", 0, OK, conflicts=True))
        assert out == ([Finish(False)] if stop else [Start("b", 0, 1)])
        assert state.conflicted


# --- throttling: rate limits are the run's signal (distpar.core.ratelimit inside the state) ---------------------


def limited(n: int, *uids: str, pause: float = 30.0) -> RunState:
    return RunState.create(units(*uids), limiter=RateLimiter(ceiling=n, cooldown=10.0, default_pause=pause))


RATE = AgentOutcome("api_error", False, "429", transient=True, rate_limited=True)
SUCCESS = AgentOutcome("success", True)


def test_a_rate_limit_halves_the_agents_at_once_pauses_and_successes_climb_back() -> None:
    state = limited(4, *"abcdefghijkl")
    up(state, 4)  # a b c d
    out = state.handle(UnitEnded("a", 0, FAILED, outcome=RATE, at=100.0))
    assert [(t.limit, t.until) for t in out if isinstance(t, Throttle)] == [(2, 130.0)]
    assert starts(out) == []  # three still run and starts pause until 130
    assert starts(state.handle(UnitEnded("b", 1, OK, outcome=SUCCESS, at=101.0))) == []
    assert starts(state.handle(Tick(129.0))) == []
    # at 130 the pause is over: 2 run (c, d), and successes raised the limit a little: still 2 at once
    assert starts(state.handle(Tick(130.0))) == []
    assert starts(state.handle(UnitEnded("c", 2, OK, outcome=SUCCESS, at=131.0))) == [("e", 0)]


def test_a_burst_of_rate_limits_counts_once_per_cooldown() -> None:
    state = limited(8, *"abcdefghij")
    up(state, 8)
    state.handle(UnitEnded("a", 0, FAILED, outcome=RATE, at=10.0))
    state.handle(UnitEnded("b", 1, FAILED, outcome=RATE, at=10.5))  # the same burst: not halved again
    assert state.limiter is not None and state.limiter.allowed == 4
    state.handle(UnitEnded("c", 2, FAILED, outcome=RATE, at=21.0))
    assert state.limiter.allowed == 2


def test_the_limit_never_goes_below_one() -> None:
    state = limited(1, "a", "b", "c", pause=0.0)
    up(state, 1)
    out = state.handle(UnitEnded("a", 0, FAILED, outcome=RATE, at=0.0))
    assert state.limiter is not None and state.limiter.allowed == 1 and starts(out) == [("b", 0)]


def test_a_reset_time_is_honoured_via_tick_and_a_paused_run_does_not_finish() -> None:
    state = limited(2, "a", "b", "c")
    up(state, 2)
    reset = AgentOutcome("api_error", False, "429", transient=True, rate_limited=True, retry_after=60.0)
    out = state.handle(UnitEnded("a", 0, FAILED, outcome=reset, at=100.0))
    assert [t.until for t in out if isinstance(t, Throttle)] == [160.0]
    assert finishes(state.handle(UnitEnded("b", 1, OK, outcome=SUCCESS, at=101.0))) == []  # c still to come
    assert state.handle(Tick(159.9)) == []
    assert starts(state.handle(Tick(160.0))) == [("c", 0)]


def test_a_usage_limit_far_away_stops_new_units_and_the_run_ends_resumable() -> None:
    state = limited(2, "a", "b", "c")
    up(state, 2)
    far = AgentOutcome("usage_limit", False, "limit", rate_limited=True, resets_at=100.0 + 5 * 3600)
    out = state.handle(UnitEnded("a", 0, FAILED, outcome=far, at=100.0, rate_limited=True))
    stops = [t for t in out if isinstance(t, Throttle)]
    assert stops and stops[0].stop and stops[0].until == 100.0 + 5 * 3600 and starts(out) == []
    out = state.handle(UnitEnded("b", 1, OK, outcome=SUCCESS, at=101.0))
    assert out[-1] == Finish(False) and state.pending == ["a", "c"]  # nothing lost, nothing failed


def test_other_failures_do_not_slow_the_run() -> None:
    state = limited(2, "a", "b", "c")
    up(state, 2)
    out = state.handle(UnitEnded("a", 0, FAILED, outcome=AgentOutcome("error", False, "boom"), at=1.0))
    assert not [t for t in out if isinstance(t, Throttle)] and starts(out) == [("c", 0)]


def test_requeue_runs_the_unit_again_with_the_same_attempt() -> None:
    state = limited(1, "a", "b", pause=5.0)
    up(state, 1)
    out = state.handle(UnitEnded("a", 0, FAILED, outcome=RATE, at=0.0, rate_limited=True))
    assert Requeue("a", 1) in out and starts(out) == [] and "a" not in state.done and state.pending == ["a", "b"]
    assert state.handle(Tick(5.0)) == [Start("a", 0, 1)]


def test_a_rate_limited_unit_is_requeued_at_most_agent_retries_times_then_its_end_stands() -> None:
    state = RunState.create(units("a", ("b", "a")), agent_retries=2)
    up(state, 1)
    assert state.handle(UnitEnded("a", 0, FAILED, rate_limited=True)) == [Requeue("a", 1), Start("a", 0, 1)]
    assert state.handle(UnitEnded("a", 0, FAILED, rate_limited=True)) == [Requeue("a", 2), Start("a", 0, 1)]
    out = state.handle(UnitEnded("a", 0, FAILED, rate_limited=True))
    assert out == [GiveUp("a", "rate-limited 3 times"), Record("b", SKIPPED, "dependency a did not succeed"),
                   Finish(False)]
    assert state.done == {"a": FAILED, "b": SKIPPED} and state.requeues == {"a": 2}


def test_no_agent_retries_never_requeues() -> None:
    state = RunState.create(units("a"), agent_retries=0)
    up(state, 1)
    assert state.handle(UnitEnded("a", 0, FAILED, rate_limited=True)) == [GiveUp("a", "rate-limited 1 times"),
                                                                           Finish(False)]


def test_requeue_counts_are_per_unit() -> None:
    state = RunState.create(units("a", "b"), agent_retries=1)
    up(state, 2)
    assert state.handle(UnitEnded("a", 0, FAILED, rate_limited=True))[0] == Requeue("a", 1)
    assert state.handle(UnitEnded("b", 1, FAILED, rate_limited=True))[0] == Requeue("b", 1)


# --- the cancel deadline: an interrupted run waits for its units, but not for ever ---------------------------


def test_an_interrupted_run_stops_waiting_after_cancel_wait() -> None:
    state = RunState.create(units("a", "b", "c"), cancel_wait=30.0)
    up(state, 2)
    assert state.handle(Interrupt(at=100.0)) == [CancelAll()]
    assert state.handle(UnitEnded("a", 0, UnitStatus.INTERRUPTED, at=110.0)) == []  # b still saves its work
    assert state.handle(Tick(130.0)) == []  # exactly the deadline: still waiting
    assert state.handle(Tick(130.5)) == [StopWaiting(("b",), 30.0), Finish(False)]
    assert state.finished and not state.running and state.pending == ["b", "c"]  # b stays resumable
    assert state.handle(UnitEnded("b", 1, OK, at=131.0)) == []  # too late: the run is over


def test_units_that_stop_in_time_end_the_run_without_giving_up() -> None:
    state = RunState.create(units("a"), cancel_wait=30.0)
    up(state, 1)
    state.handle(Interrupt(at=0.0))
    assert state.handle(UnitEnded("a", 0, UnitStatus.INTERRUPTED, at=29.0)) == [Finish(False)]


def test_without_cancel_wait_an_interrupted_run_waits_for_its_units() -> None:
    state = RunState.create(units("a"))
    up(state, 1)
    state.handle(Interrupt(at=0.0))
    assert state.handle(Tick(1e9)) == [] and not state.finished


def test_a_second_interrupt_does_not_move_the_deadline() -> None:
    state = RunState.create(units("a"), cancel_wait=10.0)
    up(state, 1)
    state.handle(Interrupt(at=0.0))
    state.handle(Interrupt(at=8.0))
    assert state.handle(Tick(10.5)) == [StopWaiting(("a",), 10.0), Finish(False)]


def test_requeue_after_a_retry_keeps_that_attempt() -> None:
    state = RunState.create(units("a"))
    up(state, 1)
    state.handle(UnitLost("a", 0, "x"))  # restarts at once as attempt 2
    assert state.running["a"] == (0, 2)
    assert state.handle(UnitEnded("a", 0, FAILED, rate_limited=True)) == [Requeue("a", 1), Start("a", 0, 2)]


# --- late and duplicate reports, Finish --------------------------------------------------------------------


def test_duplicate_unit_ended_is_ignored() -> None:
    state = RunState.create(units("a", ("b", "a"), "c"))
    up(state, 1)
    state.handle(UnitEnded("a", 0, OK))  # b starts
    assert state.handle(UnitEnded("a", 0, FAILED)) == []
    assert state.done == {"a": OK} and state.running == {"b": (0, 1)}


def test_late_report_from_a_worker_that_no_longer_runs_the_unit_is_ignored() -> None:
    # a's first worker went away; a runs again on worker 1. A late report from worker 0 must not settle a,
    # nor free worker 1 (which still runs it).
    state = RunState.create(units("a", "b"))
    up(state, 2)
    state.handle(WorkerDown(0))
    state.handle(UnitEnded("b", 1, OK))
    assert state.running == {"a": (1, 2)}
    assert state.handle(UnitEnded("a", 0, OK)) == []
    assert state.handle(UnitLost("a", 0, "late")) == []
    assert state.handle(Blocked("a", 0, "late")) == []
    assert state.running == {"a": (1, 2)} and state.free == [] and "a" not in state.done
    assert state.handle(UnitEnded("a", 1, OK)) == [Finish(True)]


def test_late_loss_after_the_unit_ended_is_ignored() -> None:
    state = RunState.create(units("a", "b"))
    up(state, 1)
    state.handle(UnitEnded("a", 0, OK))
    assert state.handle(UnitLost("a", 0, "late")) == []
    assert state.handle(Blocked("a", 0, "late")) == []
    assert state.done == {"a": OK}


def test_finish_exactly_once_and_nothing_after() -> None:
    state = RunState.create(units("a"))
    out = up(state, 2)
    assert finishes(out) == []
    assert state.handle(UnitEnded("a", 0, OK)) == [Finish(True)]
    for ev in (Tick(1.0), WorkerUp(5), Interrupt(), Fatal("x"), UnitEnded("a", 0, OK), WorkerDown(1)):
        assert state.handle(ev) == []


def test_resumed_units_are_not_run_again() -> None:
    state = RunState.create(units("a", ("b", "a"), "c"), {"a": OK, "c": OK})
    assert up(state, 2) == [Start("b", 0, 1)]
    assert state.handle(UnitEnded("b", 0, OK)) == [Finish(True)]


def test_a_dependency_resumed_as_not_ok_never_lets_its_dependent_start() -> None:
    state = RunState.create(units("a", ("b", "a"), "c"), {"a": FAILED})
    assert up(state, 2) == [Start("c", 0, 1)]
    assert state.handle(UnitEnded("c", 0, OK)) == [Finish(False)]
    assert "b" not in state.done or state.done["b"] is SKIPPED


def test_everything_resumed_finishes_at_the_first_event() -> None:
    state = RunState.create(units("a"), {"a": OK})
    assert state.handle(WorkerUp(0)) == [Finish(True)]


def test_an_empty_plan_finishes_complete() -> None:
    assert RunState.create([]).handle(WorkerUp(0)) == [Finish(True)]


# --- properties: a small simulator drives the state with random interleavings ------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[UnitInfo], int]:
    n = draw(st.integers(0, 10))
    workers = draw(st.integers(1, 4))
    pinned = draw(st.booleans())
    out = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        pin = draw(st.one_of(st.none(), st.integers(0, workers - 1))) if pinned else None
        out.append(UnitInfo(f"u{i}", tuple(f"u{d}" for d in deps), draw(st.sampled_from([0.0, 1.0, 5.0])), i, pin))
    # plan order need not be topological: shuffle the order numbers
    orders = draw(st.permutations(range(n)))
    return [UnitInfo(u.uid, u.deps, u.priority, orders[i], u.pin) for i, u in enumerate(out)], workers


@dataclass
class Sim:
    """What the executor knows, checked against every instruction the state gives."""

    state: RunState
    units: dict[str, UnitInfo]
    alive: set[int]
    status: dict[str, UnitStatus]
    running: dict[str, tuple[int, int]] = field(default_factory=dict)  # uid -> (worker, attempt)
    starts: dict[tuple[str, int], int] = field(default_factory=dict)  # (uid, attempt) -> how often started
    requeued: dict[tuple[str, int], int] = field(default_factory=dict)
    attempt: dict[str, int] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)  # workers that went down
    settled: list[tuple[str, int]] = field(default_factory=list)  # (uid, worker) reports that are now stale
    now: float = 0.0
    pause: float = 0.0
    limit: int | None = None
    stopped: set[str] = field(default_factory=set)  # why starts stopped: interrupt, fatal, budget, conflict
    cancelled: int = 0
    finish: list[Finish] = field(default_factory=list)
    stop_on_conflict: bool = False
    requeue_count: dict[str, int] = field(default_factory=dict)  # uid -> Requeue instructions seen
    deadline: float | None = None  # interrupted with a cancel_wait: when the state must stop waiting

    def send(self, event: Event) -> list[Instruction]:
        out = self.state.handle(event)
        self.state.validate()  # the state's own invariants, after every event
        for ins in out:
            assert not self.finish, f"{ins} after Finish"
            self.check(ins)
        return out

    def check(self, ins: Instruction) -> None:
        if isinstance(ins, Start):
            assert not self.stopped, f"{ins} after the run stopped ({self.stopped})"
            assert self.now >= self.pause, f"{ins} during a pause until {self.pause}"
            assert ins.uid not in self.running, f"{ins.uid} started twice at the same time"
            assert ins.uid not in self.status, f"{ins.uid} started after it ended {self.status[ins.uid]}"
            assert ins.worker in self.alive, f"{ins} on a worker that is not up"
            assert all(w != ins.worker for w, _ in self.running.values()), f"worker {ins.worker} holds two units"
            assert self.limit is None or len(self.running) < self.limit, f"{ins} over the limit {self.limit}"
            unit = self.units[ins.uid]
            assert all(self.status.get(d) is OK for d in unit.deps), f"{ins} before its dependencies ended ok"
            if unit.pin is not None and unit.pin not in self.gone:
                assert ins.worker == unit.pin, f"{ins} off its pinned worker {unit.pin}"
            assert ins.attempt == self.attempt.get(ins.uid, 1)
            key = (ins.uid, ins.attempt)
            self.starts[key] = self.starts.get(key, 0) + 1
            assert self.starts[key] <= 1 + self.requeued.get(key, 0), f"{ins.uid} attempt {ins.attempt} twice"
            self.running[ins.uid] = (ins.worker, ins.attempt)
        elif isinstance(ins, Record):
            assert ins.uid not in self.running and ins.uid not in self.status
            if ins.status is FAILED:  # only a lost unit is recorded failed by the state: out of retries, or stopped
                assert (self.attempt.get(ins.uid, 1) == self.state.retries + 1
                        or self.stopped & {"interrupt", "fatal"}), f"{ins} with retries left"
            if ins.status is SKIPPED:
                assert any(self.status.get(d) not in (None, OK) for d in self.units[ins.uid].deps)
            self.status[ins.uid] = ins.status
        elif isinstance(ins, Retry):
            assert ins.attempt == self.attempt.get(ins.uid, 1) + 1 and ins.attempt <= self.state.retries + 1
            assert not self.stopped & {"interrupt", "fatal"}, f"{ins} after an interrupt or a fatal error"
            self.attempt[ins.uid] = ins.attempt
        elif isinstance(ins, CancelAll):
            self.cancelled += 1
            causes = len(self.stopped & {"interrupt", "fatal"})
            assert 1 <= self.cancelled <= causes, "CancelAll only on interrupt or fatal, once each"
        elif isinstance(ins, BudgetSpent):
            assert "budget" not in self.stopped, "BudgetSpent once"
            self.stopped.add("budget")
        elif isinstance(ins, Throttle):
            self.limit = ins.limit
            if ins.stop:
                self.stopped.add("rate")
            else:
                self.pause = max(self.pause, ins.until or 0.0)
        elif isinstance(ins, Requeue):
            assert ins.uid not in self.running and ins.uid not in self.status and "interrupt" not in self.stopped
            assert ins.count == self.requeue_count.get(ins.uid, 0) + 1 <= self.state.agent_retries
            self.requeue_count[ins.uid] = ins.count
        elif isinstance(ins, Rerun):  # the merge queue: the unit's end does not stand, it runs again later
            assert self.status.pop(ins.uid) is OK and ins.uid not in self.running
            assert self.state.on_conflict == "rerun" and ins.count <= self.state.max_reruns
            key = (ins.uid, self.attempt.get(ins.uid, 1))
            self.requeued[key] = self.requeued.get(key, 0) + 1
        elif isinstance(ins, GiveUp):
            assert ins.uid in self.status, f"{ins} for a unit whose end the executor did not expect to stand"
        elif isinstance(ins, StopWaiting):
            assert self.deadline is not None and self.now > self.deadline, f"{ins} before the deadline"
            assert sorted(ins.uids) == sorted(self.running), "StopWaiting names every unit still running"
            for uid in ins.uids:
                self.lose(uid)
        elif isinstance(ins, Finish):
            self.finish.append(ins)

    def lose(self, uid: str) -> None:
        """A running unit's report arrived or its worker died: later reports about it are stale."""
        worker, _ = self.running.pop(uid)
        self.settled.append((uid, worker))


@settings(max_examples=400, deadline=None)
@given(dags(), st.data())
def test_any_interleaving_keeps_the_invariants(dag: tuple[list[UnitInfo], int], data: st.DataObject) -> None:
    us, workers = dag
    # resume: a set of units already done, closed under dependencies
    done: dict[str, UnitStatus] = {}
    for u in us:
        if all(d in done for d in u.deps) and data.draw(st.integers(0, 4)) == 0:
            done[u.uid] = OK
    retries = data.draw(st.integers(0, 2))
    budget = data.draw(st.one_of(st.none(), st.sampled_from([0.5, 2.0, 5.0])))
    stop_on_conflict = data.draw(st.booleans())
    limiter = RateLimiter(ceiling=workers, cooldown=data.draw(st.sampled_from([0.0, 10.0])), default_pause=2.0) \
        if data.draw(st.booleans()) else None
    agent_retries = data.draw(st.integers(0, 2))
    cancel_wait = data.draw(st.sampled_from([None, 0.0, 5.0]))
    on_conflict = data.draw(st.sampled_from(["stop", "rerun"]))
    max_reruns = data.draw(st.integers(0, 2))
    state = RunState.create(us, done, retries=retries, budget_usd=budget, stop_on_conflict=stop_on_conflict,
                            limiter=limiter, agent_retries=agent_retries, cancel_wait=cancel_wait,
                            on_conflict=on_conflict, max_reruns=max_reruns)
    sim = Sim(state, {u.uid: u for u in us}, set(), dict(done), stop_on_conflict=stop_on_conflict)
    for w in range(workers):
        sim.alive.add(w)
        sim.send(WorkerUp(w))
    status = st.sampled_from([OK, OK, OK, FAILED, UnitStatus.TIMEOUT])
    steps = 0
    bound = 40 + 12 * len(us) * (retries + 2)
    while not sim.finish:
        steps += 1
        assert steps <= bound, "the run did not finish"
        if not sim.running:  # only time or a worker can move the run now
            if sim.pause > sim.now:
                sim.now = sim.pause
                sim.send(Tick(sim.now))
                continue
            raise AssertionError(f"stuck: nothing runs, not finished (pending {state.pending}, alive {sim.alive})")
        action = data.draw(st.sampled_from(
            ["end", "end", "end", "end", "lost", "blocked", "down", "up", "conflict", "interrupt", "fatal",
             "tick", "late"]))
        uid = data.draw(st.sampled_from(sorted(sim.running)))
        worker, attempt = sim.running[uid]
        if action == "end":
            s = data.draw(status)
            cost = data.draw(st.sampled_from([None, 0.0, 0.3, 1.0]))
            throttled = data.draw(st.integers(0, 5)) == 0
            retry_after = 3.0 if throttled and data.draw(st.booleans()) else None
            usage = throttled and data.draw(st.integers(0, 3)) == 0  # a usage limit, near or far
            outcome = (AgentOutcome("usage_limit" if usage else "api_error", False, "limit", rate_limited=True,
                                    retry_after=retry_after,
                                    resets_at=sim.now + data.draw(st.sampled_from([5.0, 99999.0])) if usage else None)
                       if throttled else AgentOutcome("success" if s is OK else "error", s is OK))
            rate_limited = throttled and data.draw(st.booleans())
            sim.lose(uid)
            requeue = (rate_limited and not state.interrupted
                       and sim.requeue_count.get(uid, 0) < agent_retries)  # what the state must decide
            if requeue:
                sim.requeued[(uid, attempt)] = sim.requeued.get((uid, attempt), 0) + 1
            else:
                sim.status[uid] = s
            spent_before = state.spent
            out = sim.send(UnitEnded(uid, worker, s, cost, outcome=outcome, at=sim.now, rate_limited=rate_limited))
            assert any(isinstance(i, Requeue) and i.uid == uid for i in out) is requeue
            assert any(isinstance(i, GiveUp) and i.uid == uid for i in out) is (rate_limited and not requeue)
            if budget is not None and spent_before + (cost or 0.0) >= budget:
                assert "budget" in sim.stopped, "the budget was spent"
        elif action == "lost":
            sim.lose(uid)
            sim.send(UnitLost(uid, worker, "transport broke"))
        elif action == "blocked":
            sim.lose(uid)
            sim.status[uid] = BLOCKED
            if stop_on_conflict:
                sim.stopped.add("conflict")
            sim.send(Blocked(uid, worker, "conflict"))
        elif action == "down":
            worker = data.draw(st.sampled_from(sorted(sim.alive | {worker})))  # busy or idle
            for other in [u for u, (w, _) in sim.running.items() if w == worker]:
                sim.lose(other)
            sim.alive.discard(worker)
            sim.gone.add(worker)
            sim.send(WorkerDown(worker, "node lost"))
        elif action == "up":
            back = sorted(sim.gone - sim.alive)
            if back:
                w = data.draw(st.sampled_from(back))
                sim.alive.add(w)
                sim.send(WorkerUp(w))
        elif action == "conflict":  # it ended ok, and its work conflicts with finished work (found early)
            sim.lose(uid)
            sim.status[uid] = OK  # (a Rerun takes it back)
            rerun = on_conflict == "rerun" and state.reruns.get(uid, 0) < max_reruns
            if stop_on_conflict and not rerun:
                sim.stopped.add("conflict")
            files = tuple(data.draw(st.lists(st.sampled_from("ab"), max_size=2, unique=True)))
            out = sim.send(UnitEnded(uid, worker, OK, at=sim.now, conflicts=True, conflict_files=files))
            assert any(isinstance(i, Rerun) for i in out) is rerun
        elif action in ("interrupt", "fatal"):
            if action == "interrupt" and "interrupt" not in sim.stopped and cancel_wait is not None:
                sim.deadline = sim.now + cancel_wait
            sim.stopped.add(action)
            sim.send(Interrupt(at=sim.now) if action == "interrupt" else Fatal("boom"))
        elif action == "tick":
            sim.now += data.draw(st.sampled_from([0.5, 2.0, 5.0]))
            sim.send(Tick(sim.now))
        elif action == "late" and sim.settled:
            old, w = data.draw(st.sampled_from(sim.settled))
            if sim.running.get(old, (None,))[0] != w:  # a report from the same worker is indistinguishable
                late: list[Event] = [UnitEnded(old, w, OK), UnitLost(old, w, "late"), Blocked(old, w, "late")]
                ev = data.draw(st.sampled_from(late))
                assert sim.send(ev) == [], f"late {ev} changed the run"
    # at Finish
    assert len(sim.finish) == 1
    assert state.handle(Tick(sim.now + 1.0)) == [] and state.handle(WorkerUp(0)) == [], "nothing after Finish"
    assert not sim.running and not state.running
    assert state.done == sim.status, "the state and the executor agree on every unit's end"
    pending = [u.uid for u in us if u.uid not in sim.status]
    assert sorted(pending) == sorted(state.pending)
    if pending:
        assert sim.stopped or not sim.alive, f"{pending} lost: the run was not stopped and workers remain"
    for uid in pending:  # never left pending behind a failure: such units are skipped
        assert all(sim.status.get(d) in (None, OK) for d in sim.units[uid].deps)
    every_ok = all(sim.status.get(u.uid) is OK for u in us)
    assert sim.finish[0].complete is every_ok


def idle_while_ready(sim: Sim) -> list[str]:
    """Ready units some idle worker may take: a work-conserving state leaves none."""
    idle = sim.alive - {w for w, _ in sim.running.values()}
    return [u for u in sim.state.ready() if idle and (sim.units[u].pin is None or sim.units[u].pin in idle)]


@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_without_failures_every_unit_runs_once_and_no_worker_idles(dag: tuple[list[UnitInfo], int],
                                                                   data: st.DataObject) -> None:
    us, workers = dag
    state = RunState.create(us)
    sim = Sim(state, {u.uid: u for u in us}, set(range(workers)), {})
    for w in range(workers):
        sim.send(WorkerUp(w))
    assert idle_while_ready(sim) == []
    for _ in range(len(us) + 1):
        if sim.finish:
            break
        uid = data.draw(st.sampled_from(sorted(sim.running)))
        worker, _ = sim.running[uid]
        sim.lose(uid)
        sim.status[uid] = OK
        sim.send(UnitEnded(uid, worker, OK))
        assert idle_while_ready(sim) == []
    assert sim.finish == [Finish(True)]
    assert sorted(sim.starts) == sorted((u.uid, 1) for u in us), "every unit ran exactly once"


# --- dispatch by event type, and validate() catches a broken state ------------------------------------------


def test_every_event_type_has_exactly_one_handler_and_an_unknown_event_is_refused() -> None:
    from typing import get_args

    from distpar.core.state import _HANDLERS

    assert set(_HANDLERS) == set(get_args(Event))
    with pytest.raises(TypeError, match="no handler for str"):
        RunState.create(units("a")).handle("a")  # type: ignore[arg-type]


def broken(mutate: str) -> RunState:
    state = RunState.create(units("a", "b", ("c", "a")))
    up(state, 2)
    state.validate()
    if mutate == "done and running":
        state.done["a"] = OK
    elif mutate == "two units on one worker":
        state.running["b"] = (0, 1)
    elif mutate == "ready too early":
        state.ready_set.add("c")
    elif mutate == "left a terminal state":
        state.handle(UnitEnded("a", 0, FAILED))
        state.validate()
        state.done["a"] = OK
    elif mutate == "budget":
        state.spent = 5.0
        state.budget_usd = 1.0
    elif mutate == "time":
        state.handle(Tick(10.0))
        state.validate()
        state.now = 5.0
    return state


@pytest.mark.parametrize("mutate", ["done and running", "two units on one worker", "ready too early",
                                    "left a terminal state", "budget", "time"])
def test_validate_catches_a_broken_state(mutate: str) -> None:
    with pytest.raises(InvariantError):
        broken(mutate).validate()
