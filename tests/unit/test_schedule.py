from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpar.errors import UsageError
from distpar.plan import AgentTask, Batch, Plan
from distpar.schedule import STRATEGIES, Schedule, make_schedule, topological_order


def mkplan(specs: list[tuple[float, list[int]]]) -> Plan:
    batches = tuple(
        Batch(str(i), f"b{i}", (AgentTask("x", "p"),), depends_on=tuple(str(d) for d in deps), estimate=est)
        for i, (est, deps) in enumerate(specs)
    )
    return Plan("p", batches, has_dependencies=any(b.depends_on for b in batches))


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(1, 25))
    specs = []
    for i in range(n):
        est = draw(st.sampled_from([0.5, 1, 2, 3, 8]))
        # Dependencies may point backwards or forwards in plan order; acyclic by construction of a permutation.
        specs.append((est, i))
    perm = draw(st.permutations(range(n)))
    rank = {v: k for k, v in enumerate(perm)}  # topological rank of each batch
    out = []
    for est, i in specs:
        earlier = [j for j in range(n) if rank[j] < rank[i]]
        deps = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True)) if earlier else []
        out.append((est, deps))
    return mkplan(out)


def check_invariants(plan: Plan, s: Schedule, workers: int, strategy: str = "balanced") -> None:
    ids = [b for stream in s.streams for b in stream.batch_ids]
    assert sorted(ids) == sorted(plan.ids), "every batch exactly once"
    assert len(s.streams) <= workers and all(stream.batch_ids for stream in s.streams)
    order = {b: i for i, b in enumerate(topological_order(plan))}
    for stream in s.streams:
        ranks = [order[b] for b in stream.batch_ids]
        if not plan.has_dependencies or strategy != "balanced":
            assert ranks == sorted(ranks), "streams keep the (topological) plan order"
        starts = [s.start[b] for b in stream.batch_ids]
        assert starts == sorted(starts), "a stream runs its batches one after another"
    for b in plan.batches:
        for d in b.depends_on:
            assert s.finish[d] <= s.start[b.id] + 1e-9, "a batch never starts before its dependencies end"
            if s.stream_of(d) != s.stream_of(b.id):
                assert d in s.waits[b.id]
    assert s.makespan >= s.lower_bound - 1e-9


@settings(max_examples=150, deadline=None)
@given(plans(), st.integers(1, 8), st.sampled_from(STRATEGIES))
def test_every_schedule_is_valid(plan: Plan, workers: int, strategy: str) -> None:
    check_invariants(plan, make_schedule(plan, workers, strategy), workers, strategy)


@settings(max_examples=200, deadline=None)
@given(plans(), st.integers(1, 8))
def test_balanced_meets_the_list_scheduling_bound(plan: Plan, workers: int) -> None:
    s = make_schedule(plan, workers)
    # Graham: a list schedule never exceeds total work / m + (1 - 1/m) * critical path (<= (2 - 1/m) OPT).
    assert s.makespan <= s.serial / workers + (1 - 1 / workers) * s.critical_path + 1e-9


def test_independent_equal_batches_reach_the_lower_bound() -> None:
    plan = mkplan([(1, [])] * 6)
    s = make_schedule(plan, 6)
    assert s.makespan == s.lower_bound == 1 and len(s.streams) == 6
    assert s.predicted_speedup == 6


def test_plan_order_is_kept_inside_streams() -> None:
    plan = mkplan([(1, [])] * 7)
    s = make_schedule(plan, 3)
    assert [list(x.batch_ids) for x in s.streams] == [["0", "3", "6"], ["1", "4"], ["2", "5"]]


def test_heavy_tail_is_balanced_better_than_plan_order() -> None:
    plan = mkplan([(4, []), (1, []), (4, []), (1, []), (1, []), (1, [])])
    s = make_schedule(plan, 2)
    assert s.makespan == 6  # {4,1,1} and {4,1,1}; round-robin gives {4,4,1} and {1,1,1}
    rr = make_schedule(plan, 2, "round-robin")
    assert rr.makespan > s.makespan


def test_chain_stays_on_one_stream_and_more_workers_idle() -> None:
    plan = mkplan([(1, []), (1, [0]), (1, [1])])
    s = make_schedule(plan, 4)
    assert len(s.streams) == 1 and s.waits == {} and s.makespan == 3 == s.critical_path


def test_diamond_waits_across_streams() -> None:
    plan = mkplan([(1, []), (2, [0]), (2, [0]), (1, [1, 2])])
    s = make_schedule(plan, 2)
    assert s.makespan == 4 == s.lower_bound
    assert len(s.streams) == 2 and s.waits  # one branch of the diamond is merged in before batch 3


def test_midpoint_is_the_seed_split() -> None:
    plan = mkplan([(1, [])] * 5)
    s = make_schedule(plan, 4, "midpoint")  # the seed: floor(5 / 2) = 2 -> 1,2 | 3,4,5
    assert [list(x.batch_ids) for x in s.streams] == [["0", "1"], ["2", "3", "4"]]
    s = make_schedule(plan, 2, split=1)  # --split alone implies midpoint
    assert s.strategy == "midpoint"
    assert [list(x.batch_ids) for x in s.streams] == [["0"], ["1", "2", "3", "4"]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "--workers must be at least 1, got 0"),
        ({"workers": 2, "strategy": "random"}, "unknown strategy 'random'"),
        ({"workers": 2, "strategy": "round-robin", "split": 2}, "--split goes with --strategy midpoint"),
        ({"workers": 2, "strategy": "midpoint", "split": 5}, "--split must be between 1 and 4"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("'", "'")):
        make_schedule(mkplan([(1, [])] * 5), **kwargs)  # type: ignore[arg-type]


def test_forward_dependency_reorders_within_plan_order() -> None:
    plan = mkplan([(1, [2]), (1, []), (1, [])])  # batch 0 depends on a later batch
    assert topological_order(plan) == ["1", "2", "0"]
    check_invariants(plan, make_schedule(plan, 1), 1)


def test_large_plan_is_fast() -> None:
    import time

    plan = mkplan([(float(i % 7 + 1), [i - 3] if i >= 3 and i % 2 else []) for i in range(10_000)])
    t0 = time.perf_counter()
    s = make_schedule(plan, 64)
    assert time.perf_counter() - t0 < 5  # generous: a correctness guard against quadratic blow-ups
    assert s.makespan <= 1.1 * s.lower_bound
