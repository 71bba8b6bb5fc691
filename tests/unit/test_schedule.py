from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpar.core.errors import UsageError
from distpar.core.model import UnitStatus
from distpar.core.plan import AgentTask, Batch, Plan, parse_plan
from distpar.core.predict import predict as core_predict
from distpar.core.schedule import STRATEGIES, Schedule, make_schedule, predict, preview, topological_order
from distpar.core.state import UnitInfo
from distpar.core.units import UnitGraph, unit_graph


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
    ids = [b for lane in s.lanes for b in lane.batch_ids]
    assert sorted(ids) == sorted(plan.ids), "every batch exactly once"
    assert len(s.lanes) <= workers and all(lane.batch_ids for lane in s.lanes)
    order = {b: i for i, b in enumerate(topological_order(plan))}
    for lane in s.lanes:
        ranks = [order[b] for b in lane.batch_ids]
        if not plan.has_dependencies or strategy != "balanced":
            assert ranks == sorted(ranks), "lanes keep the (topological) plan order"
        starts = [s.start[b] for b in lane.batch_ids]
        assert starts == sorted(starts), "a lane runs its batches one after another"
    for b in plan.batches:
        for d in b.depends_on:
            assert s.finish[d] <= s.start[b.id] + 1e-9, "a batch never starts before its dependencies end"
            if s.lane_of(d) != s.lane_of(b.id):
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
    assert s.makespan == s.lower_bound == 1 and len(s.lanes) == 6
    assert s.predicted_speedup == 6


def test_plan_order_is_kept_inside_streams() -> None:
    plan = mkplan([(1, [])] * 7)
    s = make_schedule(plan, 3)
    assert [list(x.batch_ids) for x in s.lanes] == [["0", "3", "6"], ["1", "4"], ["2", "5"]]


def test_heavy_tail_is_balanced_better_than_plan_order() -> None:
    plan = mkplan([(4, []), (1, []), (4, []), (1, []), (1, []), (1, [])])
    s = make_schedule(plan, 2)
    assert s.makespan == 6  # {4,1,1} and {4,1,1}; round-robin gives {4,4,1} and {1,1,1}
    rr = make_schedule(plan, 2, "round-robin")
    assert rr.makespan > s.makespan


def test_chain_stays_on_one_stream_and_more_workers_idle() -> None:
    plan = mkplan([(1, []), (1, [0]), (1, [1])])
    s = make_schedule(plan, 4)
    assert len(s.lanes) == 1 and s.waits == {} and s.makespan == 3 == s.critical_path


def test_diamond_waits_across_streams() -> None:
    plan = mkplan([(1, []), (2, [0]), (2, [0]), (1, [1, 2])])
    s = make_schedule(plan, 2)
    assert s.makespan == 4 == s.lower_bound
    assert len(s.lanes) == 2 and s.waits  # one branch of the diamond is merged in before batch 3


def test_midpoint_is_the_seed_split() -> None:
    plan = mkplan([(1, [])] * 5)
    s = make_schedule(plan, 4, "midpoint")  # the seed: floor(5 / 2) = 2 -> 1,2 | 3,4,5
    assert [list(x.batch_ids) for x in s.lanes] == [["0", "1"], ["2", "3", "4"]]
    s = make_schedule(plan, 2, split=1)  # --split alone implies midpoint
    assert s.strategy == "midpoint"
    assert [list(x.batch_ids) for x in s.lanes] == [["0"], ["1", "2", "3", "4"]]


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


# --- predictions over the unit graph ---------------------------------------------------------------------------


def cast_plan(stages: list[tuple[bool, list[float]]], **extra: object) -> Plan:
    batches = [{"id": i + 1, "parallel": par, "agents": [{"subagent_type": "code-writer", "prompt": f"s{i}a{j}",
                                                          "estimate": est} for j, est in enumerate(ests)]}
               for i, (par, ests) in enumerate(stages)]
    return parse_plan("```json dispatch\n" + json.dumps({"batches": batches, **extra}) + "\n```\n")


def test_four_stages_take_the_sum_of_each_stages_longest_agent() -> None:
    # The example: 3 x 3 + 1 + 2 x 2 + 1 of work, about 6-7 of wall time instead of 15.
    plan = cast_plan([(True, [3, 3, 3]), (False, [1]), (True, [2, 2]), (False, [1])])
    p = predict(unit_graph(plan), 3)
    assert (p.makespan, p.serial, p.critical_path, p.lower_bound) == (7, 15, 7, 7)
    assert p.speedup == pytest.approx(15 / 7)
    assert [len(row) for row in p.timeline()] == [4, 2, 1]
    assert predict(unit_graph(plan), 1).makespan == 15


def test_free_workers_take_the_longest_remaining_path_first() -> None:
    plan = cast_plan([(True, [1, 1, 5])], independent=True)
    p = predict(unit_graph(plan), 2)
    assert p.slots[0].uid == "1#3" and p.makespan == 5


def test_pinned_units_run_only_on_their_worker() -> None:
    plan = cast_plan([(False, [1])] * 5)
    g = unit_graph(plan, strategy="midpoint")
    p = predict(g, 4)
    assert {s.worker for s in p.slots if g.unit(s.uid).pin == 0} == {0}
    assert {s.worker for s in p.slots if g.unit(s.uid).pin == 1} == {1}
    assert p.makespan == 3 and p.waits == {}
    one = predict(g, 1)  # the midpoint rule runs its two halves on two workers whatever --workers says, as the run
    assert (one.workers, one.makespan) == (2, 3)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=1, max_size=4)),
                min_size=1, max_size=8), st.integers(1, 6), st.booleans())
def test_every_prediction_is_a_valid_schedule(stages: list[tuple[bool, list[float]]], workers: int,
                                              independent: bool) -> None:
    g: UnitGraph = unit_graph(cast_plan(stages), independent=independent)
    p = predict(g, workers)
    assert sorted(s.uid for s in p.slots) == sorted(g.uids), "every unit exactly once"
    at = {s.uid: s for s in p.slots}
    for u in g.units:
        assert all(at[d].finish <= at[u.uid].start + 1e-9 for d in u.depends_on), "dependencies end first"
    for row in p.timeline():
        assert all(a.finish <= b.start + 1e-9 for a, b in itertools.pairwise(row)), "one unit at a time per worker"
    assert p.lower_bound - 1e-9 <= p.makespan <= p.serial / workers + (1 - 1 / workers) * p.critical_path + 1e-9


def test_preview_warns_about_shared_files_and_absolute_paths() -> None:
    batches = [{"id": 1, "parallel": True, "agents": [
        {"subagent_type": "a", "prompt": "edit /repo/src/x.py", "owns_files": ["src/x.py"]},
        {"subagent_type": "b", "prompt": "see ~/.claude/plans/p.md", "owns_files": ["/repo/src/x.py"]}]},
        {"id": 2, "agents": [{"subagent_type": "main", "prompt": "read /etc/hosts and /dev/null",
                              "owns_files": ["src/x.py"]}]}]
    plan = parse_plan("```json dispatch\n" + json.dumps({"batches": batches}) + "\n```\n")
    pv = preview(unit_graph(plan), 2, repo_root="/repo", plan_path="/home/u/.claude/plans/p.md")
    assert [(o.path, o.uids) for o in pv.overlaps] == [("src/x.py", ("1#1", "1#2"))]  # 2 runs after both
    warnings = pv.warnings()
    assert any("/repo/src/x.py points into your checkout" in w for w in warnings)
    assert any("~/.claude/plans/p.md is the plan file" in w for w in warnings)
    assert any("/etc/hosts is outside the repository" in w for w in warnings)
    assert not any("/dev/null" in w for w in warnings)
    assert pv.subagents == {"a": "not passed to the agent (the prompt is given verbatim)",
                            "b": "not passed to the agent (the prompt is given verbatim)",
                            "main": "the agent does the work itself"}
    halves = preview(unit_graph(plan, strategy="midpoint"), 2, repo_root="/repo")
    # Each half is a chain (1#1 -> 1#2 | 2), but the halves run at the same time.
    assert [o.uids for o in halves.overlaps] == [("1#1", "2"), ("1#2", "2")]


# --- the one prediction from the middle of a run (distpar.core.predict) --------------------------------------


def infos(*specs: str | tuple[str, str], pins: dict[str, int] | None = None) -> list[UnitInfo]:
    """``"a"`` or ``("c", "a b")``; priorities by critical path of unit estimates 1."""
    out = []
    for i, spec in enumerate(specs):
        uid, deps = (spec, "") if isinstance(spec, str) else spec
        out.append(UnitInfo(uid, tuple(deps.split()), 0.0, i, (pins or {}).get(uid)))
    return out


def test_prediction_from_the_middle_of_a_run_counts_what_is_left() -> None:
    us = infos("a", "b", ("c", "a"), ("d", "b c"))
    est = {"a": 2.0, "b": 3.0, "c": 1.0, "d": 2.0}
    p = core_predict(us, 2, est, done=["a"], running={"b": (1, 0.5)})
    at = {s.uid: (s.worker, s.start, s.finish) for s in p.slots}
    # a is done; b needs 0.5 more on w2; d goes where its first dependency ran, as the run state decides
    assert at == {"b": (1, 0.0, 0.5), "c": (0, 0.0, 1.0), "d": (1, 1.0, 3.0)}
    assert (p.makespan, p.serial, p.critical_path, p.path) == (3.0, 3.5, 3.0, ("c", "d"))
    assert p.waits == {"d": ("c",)}


def test_a_unit_after_one_that_failed_is_not_predicted() -> None:
    us = infos("a", ("b", "a"), "c")
    p = core_predict(us, 1, {"a": 1.0, "b": 1.0, "c": 4.0}, done={"a": UnitStatus.FAILED})
    assert [s.uid for s in p.slots] == ["c"] and p.makespan == 4.0


def test_a_running_unit_counts_its_dependencies_as_done() -> None:
    us = infos("a", ("b", "a"), ("c", "b"))
    p = core_predict(us, 1, {"a": 5.0, "b": 5.0, "c": 1.0}, running={"b": (0, 2.0)})  # a: not reported, but ran
    assert [(s.uid, s.finish) for s in p.slots] == [("b", 2.0), ("c", 3.0)]


def test_round_robin_pins_hold_in_the_prediction_as_in_the_run() -> None:
    plan = cast_plan([(True, [1, 1, 1, 1])], independent=True)
    g = unit_graph(plan, strategy="round-robin")
    p = predict(g, 2, "round-robin")
    assert {s.uid: s.worker for s in p.slots} == {"1#1": 0, "1#2": 1, "1#3": 0, "1#4": 1}


def test_bad_predictions_are_refused() -> None:
    with pytest.raises(UsageError, match="--workers must be at least 1"):
        core_predict(infos("a"), 0, {"a": 1.0})
    with pytest.raises(ValueError, match="running unit 'x' is unknown"):
        core_predict(infos("a"), 1, {"a": 1.0}, running={"x": (0, 1.0)})


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 9), st.integers(1, 4), st.data())
def test_every_prediction_from_the_middle_is_a_valid_schedule(n: int, workers: int, data: st.DataObject) -> None:
    us = []
    for i in range(n):
        deps = data.draw(st.lists(st.integers(0, i - 1), max_size=2, unique=True)) if i else []
        us.append(UnitInfo(f"u{i}", tuple(f"u{d}" for d in deps), 0.0, i))
    est = {u.uid: data.draw(st.sampled_from([0.5, 1.0, 3.0])) for u in us}
    done: list[str] = []
    for u in us:  # a prefix closed under dependencies
        if all(d in done for d in u.deps) and data.draw(st.booleans()):
            done.append(u.uid)
    ready = [u.uid for u in us if u.uid not in done and all(d in done for d in u.deps)]
    running = {uid: (w, 0.25) for w, uid in enumerate(ready[:workers]) if data.draw(st.booleans())}
    p = core_predict(us, workers, est, done=done, running=running)
    at = {s.uid: s for s in p.slots}
    assert sorted(at) == sorted(u.uid for u in us if u.uid not in done), "what is left runs, once"
    for uid, (w, need) in running.items():
        assert (at[uid].worker, at[uid].start, at[uid].finish) == (w, 0.0, need)
    for u in us:
        if u.uid in at:
            assert all(at[d].finish <= at[u.uid].start + 1e-9 for d in u.deps if d in at), "dependencies first"
    for row in p.timeline():
        assert all(a.finish <= b.start + 1e-9 for a, b in itertools.pairwise(row)), "one unit at a time"
    assert p.lower_bound - 1e-9 <= p.makespan <= p.serial + 1e-9
