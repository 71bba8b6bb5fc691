from __future__ import annotations

import json

import pytest

from distpar.errors import PlanError
from distpar.plan import parse_plan


def doc(manifest: object, before: str = "# A plan\n\nSome prose.\n\n") -> str:
    body = manifest if isinstance(manifest, str) else json.dumps(manifest, indent=2)
    return f"{before}```json dispatch\n{body}\n```\n\nMore prose.\n"


def batch(bid: object, prompt: str = "do it", **extra: object) -> dict[str, object]:
    return {"id": bid, "description": f"batch {bid}", "parallel": False,
            "agents": [{"subagent_type": "general-purpose", "prompt": prompt}], **extra}


SEED_PLAN = """# Feature plan

```json dispatch
{
  "plan_id": "auth-dashboard",
  "batches": [
    {"id": 1, "description": "auth module", "parallel": true,
     "agents": [{"subagent_type": "backend-dev", "prompt": "Build the auth module"},
                {"subagent_type": "test-writer", "prompt": "Write auth tests"}]},
    {"id": 2, "description": "dashboard", "parallel": false,
     "agents": [{"subagent_type": "frontend-dev", "prompt": "Scaffold the dashboard"}]}
  ]
}
```
"""


def test_seed_format_parses_unchanged() -> None:
    plan = parse_plan(SEED_PLAN, "seed.md")
    assert plan.plan_id == "auth-dashboard"
    assert plan.ids == ["1", "2"]
    b1 = plan.batches[0]
    assert b1.parallel and len(b1.agents) == 2 and b1.estimate == 1.0 and b1.depends_on == ()
    assert b1.line == 7 and plan.batches[1].line == 10
    assert "Build the auth module" in b1.prompt() and "in parallel" in b1.prompt()
    assert plan.batches[1].prompt() == "Scaffold the dashboard"
    assert not plan.has_dependencies


def test_extensions_parse() -> None:
    plan = parse_plan(doc({"plan_id": "x", "batches": [
        batch("a", estimate=2.5, timeout=30, agent="fake"),
        batch("b", depends_on=["a"]),
        batch(3, depends_on="a"),
    ]}))
    a, b, c = plan.batches
    assert (a.estimate, a.timeout, a.agent) == (2.5, 30.0, "fake")
    assert b.depends_on == ("a",) and c.depends_on == ("a",) and c.id == "3"
    assert plan.has_dependencies


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# nothing here\n", "plan.md: no dispatch block: expected a fenced block opened by a line ```json dispatch"),
        ("intro\n```json dispatch\n{\"plan_id\": \"x\",\n  \"batches\": [}\n```\n",
         "plan.md:4: invalid JSON in the dispatch block: Expecting value (column 15)"),
        ("```json dispatch\n{\"plan_id\": \"x\"}\n", "plan.md:1: the dispatch block opened here is never closed"),
        (doc({"plan_id": "x"}), 'plan.md:6: no "batches": the manifest needs a list of batches'),
        (doc({"plan_id": "x", "batches": []}), "plan.md:6: batches is empty: nothing to run"),
        (doc([1, 2]), "plan.md:6: the dispatch block must be a JSON object, not a list"),
    ],
)
def test_structural_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(PlanError) as exc:
        parse_plan(text, "plan.md")
    assert str(exc.value).startswith(message)


def errors_of(batches: list[object]) -> str:
    with pytest.raises(PlanError) as exc:
        parse_plan(doc({"plan_id": "x", "batches": batches}), "p.md")
    return str(exc.value)


def test_duplicate_ids() -> None:
    assert errors_of([batch(1), batch("1")]) == (
        "p.md:21: batches[1].id: duplicate batch id '1' (first used by batches[0])"
    )


def test_unknown_dependency_points_at_the_batch() -> None:
    msg = errors_of([batch(1), batch(2, depends_on=[7])])
    assert msg == "p.md:31: batches[1].depends_on[0]: unknown batch id '7' (known ids: 1, 2)"


def test_cycle_is_printed() -> None:
    msg = errors_of([batch(1, depends_on=[3]), batch(2, depends_on=[1]), batch(3, depends_on=[2])])
    assert "dependency cycle: 1 -> 3 -> 2 -> 1" in msg


def test_self_dependency() -> None:
    assert "batch '1' depends on itself" in errors_of([batch(1, depends_on=[1])])


def test_empty_prompt() -> None:
    assert errors_of([batch(1, prompt="   ")]) == (
        "p.md:16: batches[0].agents[0].prompt is empty: every agent needs a prompt"
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("estimate", -1, "batches[0].estimate must be a positive number of minutes, got -1"),
        ("timeout", "soon", "batches[0].timeout must be a positive number of seconds, got 'soon'"),
        ("parallel", "yes", "batches[0].parallel must be true or false, not 'yes'"),
        ("agents", {}, "batches[0].agents must be a list of {subagent_type, prompt}"),
        ("type", "swarm", "batches[0].type must be one of sequential, fan-out, not 'swarm'"),
        ("verify_files", ["ok", ""], "batches[0].verify_files must be a list of paths"),
        ("colour", "red", "batches[0]: unknown field(s) colour"),
    ],
)
def test_field_errors(field: str, value: object, expected: str) -> None:
    assert expected in errors_of([{**batch(1), field: value}])


def test_two_blocks_are_refused() -> None:
    text = doc({"plan_id": "x", "batches": [batch(1)]}) * 2
    with pytest.raises(PlanError, match="2 dispatch blocks"):
        parse_plan(text, "p.md")


def test_roundtrip() -> None:
    from distpar.plan import Plan

    plan = parse_plan(SEED_PLAN, "seed.md")
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
