from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpar.core.errors import UsageError
from distpar.core.plan import AgentTask, Batch, Plan, parse_plan
from distpar.core.units import UnitGraph, batch_dependencies, unit_graph


def manifest(batches: list[dict[str, object]], **top: object) -> str:
    body = json.dumps({"plan_id": "t", "batches": batches, **top}, indent=1)
    return f"# plan\n\n```json dispatch\n{body}\n```\n"


def agents(*prompts: str, **extra: object) -> list[dict[str, object]]:
    return [{"subagent_type": "code-writer", "prompt": p, **extra} for p in prompts]


def ancestors(g: UnitGraph) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for u in g.units:  # topological order
        acc: set[str] = set()
        for d in u.depends_on:
            acc |= out[d] | {d}
        out[u.uid] = acc
    return out


@st.composite
def plans(draw: st.DrawFn, with_deps: bool | None = None) -> Plan:
    n = draw(st.integers(1, 9))
    declare = draw(st.booleans()) if with_deps is None else with_deps
    batches = []
    for i in range(n):
        k = draw(st.integers(0 if i else 1, 4))
        deps = draw(st.lists(st.integers(0, i - 1), max_size=2, unique=True)) if declare and i else []
        agent_deps = [draw(st.lists(st.integers(0, i - 1), max_size=1)) if declare and i else [] for _ in range(k)]
        batches.append(Batch(
            str(i + 1), f"b{i + 1}",
            tuple(AgentTask("x", f"p{i}-{j}", depends_on=tuple(str(d + 1) for d in agent_deps[j]),
                            estimate=draw(st.sampled_from([None, 0.5, 2.0]))) for j in range(k)),
            parallel=draw(st.booleans()), depends_on=tuple(str(d + 1) for d in deps),
            type=draw(st.sampled_from(["sequential", "sequential", "fan-out"])),
            estimate=draw(st.sampled_from([1.0, 3.0])), depends_declared=bool(deps)))
    if not any(b.agents for b in batches):
        batches[0] = Batch("1", "b1", (AgentTask("x", "p"),))
    return Plan("p", tuple(batches))


def check_common(plan: Plan, g: UnitGraph) -> None:
    uids = [u.uid for u in g.units]
    assert len(uids) == len(set(uids)) == sum(len(b.agents) for b in plan.batches), "every agent once"
    seen: set[str] = set()
    for u in g.units:
        assert set(u.depends_on) <= seen, "topological order: dependencies first (so acyclic)"
        seen.add(u.uid)
    for b in plan.batches:
        mine = [u for u in g.units if u.batch_id == b.id]
        assert [u.index for u in mine] == ([None] if len(b.agents) == 1 else list(range(1, len(b.agents) + 1)))
        assert [u.prompt for u in mine] == [a.prompt for a in b.agents]


@settings(max_examples=200, deadline=None)
@given(plans(with_deps=False))
def test_stages_every_unit_waits_for_every_earlier_stage(plan: Plan) -> None:
    g = unit_graph(plan)
    assert g.rule == "stages"
    check_common(plan, g)
    anc = ancestors(g)
    order = [b.id for b in plan.batches]
    for u in g.units:
        earlier = {x.uid for x in g.units if order.index(x.batch_id) < order.index(u.batch_id)}
        assert earlier <= anc[u.uid], "a stage never starts before the stages before it"
        b = plan.batch(u.batch_id)
        siblings = {x.uid for x in g.units if x.batch_id == b.id and x.uid != u.uid}
        if b.concurrent:
            assert not (siblings & anc[u.uid]), "parallel agents do not wait for each other"
        else:
            assert {x.uid for x in g.units if x.batch_id == b.id and (x.index or 0) < (u.index or 0)} <= anc[u.uid]


@settings(max_examples=200, deadline=None)
@given(plans(with_deps=True))
def test_dag_waits_exactly_for_what_is_declared(plan: Plan) -> None:
    g = unit_graph(plan)
    check_common(plan, g)
    if not plan.declares_dependencies:
        return
    assert g.rule == "dag"
    anc = ancestors(g)
    # The batches each batch may wait for: declared (batch or agent level), the fan-out before it, transitively.
    needs: dict[str, set[str]] = {}
    for i, b in enumerate(plan.batches):
        direct = set(b.all_depends_on)
        if i and plan.batches[i - 1].type == "fan-out" and plan.batches[i - 1].agents:
            direct.add(plan.batches[i - 1].id)
        needs[b.id] = direct | {x for d in direct for x in needs[d]}
    for u in g.units:
        b = plan.batch(u.batch_id)
        a = b.agents[(u.index or 1) - 1]
        allowed = needs[b.id]
        assert {g.unit(x).batch_id for x in anc[u.uid]} - {b.id} <= allowed, "never waits for an undeclared batch"
        for d in [*b.depends_on, *a.depends_on]:
            assert {x.uid for x in g.units if x.batch_id == d} <= anc[u.uid], "waits for all of a declared batch"


@settings(max_examples=200, deadline=None)
@given(plans(), st.data())
def test_midpoint_is_the_seeds_cut_exactly(plan: Plan, data: st.DataObject) -> None:
    n = len(plan.batches)
    split = data.draw(st.one_of(st.none(), st.integers(1, n - 1))) if n > 1 else None
    g = unit_graph(plan, strategy="midpoint", split=split)
    check_common(plan, g)
    cut = split if split is not None else max(1, n // 2)
    half = {b.id: 0 if i < cut else 1 for i, b in enumerate(plan.batches)}
    for h in (0, 1):
        chain = [u for u in g.units if half[u.batch_id] == h]
        assert all(u.pin == h for u in chain)
        expected = [(), *((x.uid,) for x in chain[:-1])] if chain else []
        assert [u.depends_on for u in chain] == expected, "one chain in plan order"


@settings(max_examples=100, deadline=None)
@given(plans())
def test_independent_keeps_only_declared_dependencies_and_the_graph_round_trips(plan: Plan) -> None:
    g = unit_graph(plan, independent=True)
    check_common(plan, g)
    assert g.rule == "independent"
    if not plan.declares_dependencies and not any(b.type == "fan-out" for b in plan.batches):
        assert {g.unit(d).batch_id for u in g.units for d in u.depends_on} <= {u.batch_id for u in g.units}
        assert all(g.unit(d).batch_id == u.batch_id for u in g.units for d in u.depends_on)
    assert UnitGraph.from_dict(json.loads(json.dumps(g.to_dict()))) == g


def test_four_stage_cast_plan_fans_out_and_in() -> None:
    plan = parse_plan(manifest([
        {"id": 1, "parallel": True, "estimate": 3, "agents": agents("a", "b", "c")},
        {"id": 2, "parallel": False, "estimate": 1, "agents": agents("wire")},
        {"id": 3, "parallel": True, "estimate": 2, "agents": agents("d", "e")},
        {"id": 4, "parallel": False, "estimate": 1, "agents": agents("commit")},
    ]))
    g = unit_graph(plan)
    assert g.rule == "stages" and "ordered stages" in g.why
    assert [(u.uid, u.depends_on) for u in g.units] == [
        ("1#1", ()), ("1#2", ()), ("1#3", ()), ("2", ("1#1", "1#2", "1#3")),
        ("3#1", ("2",)), ("3#2", ("2",)), ("4", ("3#1", "3#2")),
    ]
    assert batch_dependencies(g) == {"1": (), "2": ("1",), "3": ("2",), "4": ("3",)}


def test_sequential_agents_chain_and_share_the_batch_estimate() -> None:
    plan = parse_plan(manifest([{"id": "a", "estimate": 6, "agents": agents("x", "y", "z")},
                                {"id": "b", "agents": agents("w", estimate=4)}]))
    g = unit_graph(plan)
    assert [(u.uid, u.depends_on, u.estimate) for u in g.units] == [
        ("a#1", (), 2.0), ("a#2", ("a#1",), 2.0), ("a#3", ("a#2",), 2.0), ("b", ("a#3",), 4.0)]


def test_dag_roots_agent_level_dependencies_and_skipped_batches() -> None:
    plan = parse_plan(manifest([
        {"id": 1, "agents": agents("backend parser")},
        {"id": 2, "agents": agents("component A")},
        {"id": 3, "agents": []},
        {"id": 4, "parallel": True, "depends_on": [3],
         "agents": [*agents("wire A", depends_on=[2]), *agents("wire parser", depends_on=[1])]},
        {"id": 5, "depends_on": [4], "agents": agents("commit")},
    ]))
    g = unit_graph(plan)
    assert g.rule == "dag" and "1, 2" in g.why
    assert [(u.uid, u.depends_on) for u in g.units] == [
        ("1", ()), ("2", ()), ("4#1", ("2",)), ("4#2", ("1",)), ("5", ("4#1", "4#2"))]
    assert "batch 3 has no agents: it is skipped" in plan.warnings[0]


def test_a_skipped_stage_passes_its_predecessors_on() -> None:
    plan = parse_plan(manifest([{"id": 1, "agents": agents("x")}, {"id": 2, "agents": []},
                                {"id": 3, "agents": agents("y")}]))
    assert [(u.uid, u.depends_on) for u in unit_graph(plan).units] == [("1", ()), ("3", ("1",))]


def test_a_batch_after_a_fan_out_waits_for_it_even_in_a_dag() -> None:
    plan = parse_plan(manifest([
        {"id": 1, "type": "fan-out", "agents": agents("research a", "research b")},
        {"id": 2, "agents": agents("design")},
        {"id": 3, "depends_on": [], "agents": agents("unrelated")},
    ]))
    g = unit_graph(plan)
    assert g.rule == "dag" and plan.fan_out_source("2") == "1"
    assert g.unit("1#1").depends_on == () and g.unit("1#2").depends_on == ()  # fan-out agents run at once
    assert g.unit("2").depends_on == ("1#1", "1#2") and g.unit("3").depends_on == ()


def test_independent_by_flag_or_plan_field() -> None:
    text = manifest([{"id": 1, "agents": agents("x")}, {"id": 2, "agents": agents("y")}])
    flagged = unit_graph(parse_plan(text), independent=True)
    assert [u.depends_on for u in flagged.units] == [(), ()] and flagged.why.startswith("--independent")
    fielded = unit_graph(parse_plan(text.replace('"plan_id"', '"independent": true, "plan_id"')))
    assert fielded.rule == "independent" and fielded.why.startswith('"independent": true')


def test_midpoint_notes_what_it_does_not_honour() -> None:
    plan = parse_plan(manifest([{"id": i, "agents": agents(f"p{i}")} for i in range(1, 5)]
                               + [{"id": 5, "depends_on": [1], "agents": agents("p5")}]))
    g = unit_graph(plan, strategy="midpoint")
    assert [u.pin for u in g.units] == [0, 0, 1, 1, 1]
    assert "(1, 2 | 3, 4, 5)" in g.why
    assert g.notes == ("batch 5 depends on 1, which runs in the other half: midpoint does not wait",)
    assert unit_graph(plan, split=3).why.startswith("--split 3: the seed's split (1, 2, 3 | 4, 5)")


@pytest.mark.parametrize(("kwargs", "message"), [({"split": 5}, "--split must be between 1 and 4"),
                                                 ({"split": 2, "strategy": "round-robin"}, "--split goes with"),
                                                 ({"strategy": "random"}, "unknown strategy 'random'")])
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    plan = parse_plan(manifest([{"id": i, "agents": agents("p")} for i in range(5)]))
    with pytest.raises(UsageError, match=message):
        unit_graph(plan, **kwargs)  # type: ignore[arg-type]


def test_suggest_answer_is_checked_and_applied_without_touching_anything_else() -> None:
    from distpar.agents import suggest

    text = manifest([{"id": "api", "agents": agents("build the api")},
                     {"id": "ui", "agents": agents("@fake write x y\nbuild the ui")},
                     {"id": "glue", "agents": agents("wire")}])
    plan = parse_plan(text, "p.md")
    asked = suggest.prompt(plan)
    assert "\n    > @fake write x y\n" in asked and "\n@fake" not in asked
    answer = suggest.parse_answer(plan, {"batches": [{"id": "glue", "depends_on": ["ui", "api", "api"]},
                                                     {"id": "api", "depends_on": ["glue"]}]})
    assert answer.depends_on == {"api": (), "ui": ("api",), "glue": ("api", "ui")}
    assert answer.notes == ("batch api: ignored glue (not an earlier batch)",
                            "batch ui: no answer, it keeps its stage order (after api)")
    new = suggest.apply(text, plan, answer)
    assert new.replace(', "depends_on": []', "").replace(', "depends_on": ["api"]', "").replace(
        ', "depends_on": ["api", "ui"]', "") == text
    assert unit_graph(parse_plan(new)).rule == "dag"


def test_the_batch_after_a_fan_out_gets_its_summary() -> None:
    from distpar.core.units import with_fan_out_summary

    plan = parse_plan(manifest([
        {"id": 1, "type": "fan-out", "agents": [{"subagent_type": "planner", "prompt": "plan"},
                                                 {"subagent_type": "security", "prompt": "audit"}]},
        {"id": 2, "agents": agents("build it")}]))
    g = unit_graph(plan)
    source = plan.fan_out_source("2")
    assert source == "1" and plan.fan_out_source("1") is None
    text = with_fan_out_summary(g.unit("2").prompt, source, {"1#1": "Use a queue.\nDetails...", "1#2": ""}, g)
    assert text == ("Fan-out Summary (Batch 1):\n- planner: Use a queue.\n- security: (no answer)\n\nbuild it")
