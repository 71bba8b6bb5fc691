from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpar.core.errors import PlanError
from distpar.core.plan import parse_plan


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
    from distpar.core.plan import Plan

    plan = parse_plan(SEED_PLAN, "seed.md")
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


# --- the CAST protocol's manifests, written from its documented rules (spec, planner templates, README) --------

def cast_doc(manifest: dict[str, object]) -> str:
    return "# Feature X Implementation Plan\n\n## Agent Dispatch Manifest\n\n" + doc(manifest, before="")


SPEC_FULL = {  # the protocol spec's full field reference: fan-out, main, parallel quality gates, commit
    "batches": [
        {"id": 1, "description": "Plan and audit", "parallel": True, "type": "fan-out", "agents": [
            {"subagent_type": "planner", "prompt": "Plan X. Plan file: ~/.claude/plans/2026-01-01-x.md"},
            {"subagent_type": "security", "prompt": "Audit the security surface of X."}]},
        {"id": 2, "description": "Implementation", "parallel": False, "agents": [
            {"subagent_type": "main", "prompt": "Implement X per the plan at ~/.claude/plans/2026-01-01-x.md"}]},
        {"id": 3, "description": "Quality gates", "parallel": True, "agents": [
            {"subagent_type": "code-reviewer", "prompt": "Review the changes for X"},
            {"subagent_type": "test-runner", "prompt": "Run the tests for X"}]},
        {"id": 4, "description": "Commit", "parallel": False, "agents": [
            {"subagent_type": "commit", "prompt": "Create a semantic commit for X."}]},
    ]
}
MINIMUM = {"batches": [  # the spec's minimum valid manifest: no plan_id
    {"id": i, "description": d, "parallel": False, "agents": [{"subagent_type": t, "prompt": "..."}]}
    for i, d, t in ((1, "Implementation", "main"), (2, "Review", "code-reviewer"), (3, "Commit", "commit"))
]}
PLANNER = {  # a planner template: target_branch, and the documented optional agent-level metadata
    "target_branch": "feature/x",
    "pre_approved": True,
    "batches": [
        {"id": 1, "description": "Implementation", "parallel": True, "agents": [
            {"subagent_type": "code-writer", "prompt": "backend", "owns_files": ["/abs/api/server.js"],
             "commit_repos": ["/abs/api"]},
            {"subagent_type": "frontend", "prompt": "frontend", "owns_files": ["/abs/web/App.jsx"],
             "commit_repos": ["/abs/web"]}]},
        {"id": 2, "description": "Spec review", "parallel": False, "depends_on": [1],
         "agents": [{"subagent_type": "code-reviewer", "prompt": "spec compliance"}]},
        {"id": 3, "description": "Tests", "parallel": False,
         "agents": [{"subagent_type": "test-runner", "prompt": "tests", "depends_on": [1]}]},
        {"id": 4, "description": "Commit", "parallel": False, "depends_on": [2, 3],
         "agents": [{"subagent_type": "commit", "prompt": "commit"}]},
    ],
}
README_EXAMPLE = {"batches": [  # the ecosystem README's example: no descriptions
    {"id": 1, "parallel": True, "agents": [
        {"subagent_type": "code-writer", "owns_files": ["/abs/path/to/file.sh"], "prompt": "..."},
        {"subagent_type": "security", "owns_files": ["/abs/path/to/other.sh"], "prompt": "..."}]},
    {"id": 2, "parallel": False, "agents": [{"subagent_type": "commit", "prompt": "..."}]},
]}
EXECUTOR_FIXTURE = {"plan_id": "p-9", "batches": [  # a plan executor's test fixture: verify_files
    {"id": 1, "description": "test batch", "parallel": False, "verify_files": ["~/out/report.md"],
     "agents": [{"subagent_type": "commit", "prompt": "test task"}]},
    {"id": 2, "description": "nothing yet", "parallel": False, "agents": [], "verify_files": []},
]}


@pytest.mark.parametrize("manifest", [SPEC_FULL, MINIMUM, PLANNER, README_EXAMPLE, EXECUTOR_FIXTURE],
                         ids=["spec", "minimum", "planner", "readme", "executor"])
def test_every_documented_manifest_parses(manifest: dict[str, object]) -> None:
    plan = parse_plan(cast_doc(manifest), "plan.md")
    assert [b.id for b in plan.batches] == [str(b["id"]) for b in manifest["batches"]]  # type: ignore[index]
    assert not [w for w in plan.warnings if "unknown" in w]


def test_documented_fields_are_kept() -> None:
    spec = parse_plan(cast_doc(SPEC_FULL))
    assert spec.batches[0].type == "fan-out" and spec.batches[0].concurrent and spec.fan_out_source("2") == "1"
    assert spec.plan_id == "" and not spec.declares_dependencies
    planner = parse_plan(cast_doc(PLANNER))
    assert (planner.target_branch, planner.pre_approved) == ("feature/x", True)
    a1 = planner.batches[0].agents[0]
    assert a1.owns_files == ("/abs/api/server.js",) and a1.commit_repos == ("/abs/api",)
    assert planner.batches[2].agents[0].depends_on == ("1",) and planner.batches[2].all_depends_on == ("1",)
    assert planner.declares_dependencies
    fixture = parse_plan(cast_doc(EXECUTOR_FIXTURE), "p.md")
    assert fixture.batches[0].verify_files == ("~/out/report.md",) and fixture.batches[1].agents == ()
    assert fixture.warnings == ("p.md:23: batch 2 has no agents: it is skipped",)


def test_agent_lines_are_exact() -> None:
    plan = parse_plan(cast_doc(README_EXAMPLE))
    text = cast_doc(README_EXAMPLE).splitlines()
    for b in plan.batches:
        assert text[b.line - 1].strip() == "{"
        for a in b.agents:
            assert text[a.line - 1].strip() == "{" and a.prompt in "\n".join(text[a.line : a.line + 8])


def test_unknown_top_level_fields_are_warnings() -> None:
    plan = parse_plan(doc({"plan_id": "x", "owner": "me", "waves": [], "batches": [batch(1)]}), "p.md")
    assert plan.warnings == ("p.md:6: unknown top-level field(s) owner, waves ignored (known: batches, independent, "
                             "plan_id, pre_approved, target_branch)",)


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ({"batches": [batch(1, prompt="a\u0000b")]}, "p.md:15: batches[0].agents[0].prompt contains a NUL byte"),
        ({"batches": [batch(1, estimate=1e309)]}, "p.md:18: batches[0].estimate must be a finite number, got Infinity"),
        ('{"batches": [{"id": 1, "estimate": 1e309, "agents": [{"prompt": "x"}]}]}',
         "p.md:6: batches[0].estimate must be a finite number, got 1e309"),
        ('{"batches": [{"id": 1, "timeout": NaN, "agents": [{"prompt": "x"}]}]}',
         "p.md:6: batches[0].timeout must be a finite number, got NaN"),
        ('{"batches": [{"id": 1, "agents": [{"prompt": "x", "estimate": -Infinity}]}]}',
         "p.md:6: batches[0].agents[0].estimate must be a finite number, got -Infinity"),
        ({"batches": [batch(1, estimate=10**400)]}, "p.md:18: batches[0].estimate must be a finite number"),
        ({"batches": [batch("a\nb")]}, "p.md:9: batches[0].id 'a\\nb' contains a newline: ids name branches"),
        ({"batches": [batch("x\x1b")]}, "batches[0].id 'x\\x1b' contains the control character U+001B"),
        ({"batches": [{**batch(1), "agents": [{"subagent_type": "a\tb", "prompt": "x"}]}]},
         "batches[0].agents[0].subagent_type 'a\\tb' contains a tab"),
        ({"batches": [{**batch(2), "parallel": True, "agents": [{"prompt": "x"}, {"prompt": "y"}]}, batch("2#1")]},
         "batches[1].id: '2#1' is the name of agent 1 of batch '2' (batches[0]); rename this batch"),
        ({"batches": [batch(1), {**batch(2), "agents": [{"prompt": "x", "depends_on": [9]}]}]},
         "batches[1].agents[0].depends_on[0]: unknown batch id '9' (known ids: 1, 2)"),
        ({"batches": [{**batch(1), "agents": [{"prompt": "x", "depends_on": [1]}]}]},
         "batches[0].agents[0].depends_on[0]: batch '1' depends on itself"),
        ({"batches": [{**batch(1), "agents": [{"prompt": "x", "depends_on": [2]}]}, batch(2, depends_on=[1])]},
         "dependency cycle: 1 -> 2 -> 1"),
        ({"target_branch": "a..b", "batches": [batch(1)]},
         "target_branch 'a..b' cannot be a branch name: cannot contain '..'"),
        ({"pre_approved": "yes", "batches": [batch(1)]}, "pre_approved must be true or false, not 'yes'"),
        ({"batches": [{**batch(1), "agents": [{"prompt": "x", "owns_files": "a.py"}]}]},
         "batches[0].agents[0].owns_files must be a list of paths"),
        ({"batches": [{**batch(1), "agents": [{"prompt": "x", "colour": 1}]}]},
         "batches[0].agents[0]: unknown field(s) colour"),
    ],
)
def test_refused_at_plan_time(manifest: object, expected: str) -> None:
    with pytest.raises(PlanError) as exc:
        parse_plan(doc(manifest), "p.md")
    assert expected in str(exc.value), str(exc.value)
    assert exc.value.exit_code == 2


def test_every_batch_without_agents_is_a_valid_plan_with_nothing_to_run() -> None:
    # As CAST's own executor fixtures write them: valid, nothing to run (issue 21, item 12).
    plan = parse_plan(doc({"plan_id": "fixture", "batches": [{**batch(1), "agents": []},
                                                             {"id": 2, "agents": [], "verify_files": []}]}), "p.md")
    assert plan.ids == ["1", "2"] and not any(b.agents for b in plan.batches)
    assert plan.warnings == ("p.md:9: batch 1 has no agents: it is skipped",
                             "p.md:15: batch 2 has no agents: it is skipped")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"batches": [{"id": 1, "agents": [{"prompt": "a"}]}],\n "plan_id": "x",\n "batches": []}',
         'p.md:8: duplicate key "batches" at $'),
        ('{"batches": [{"id": 1, "agents": [{"prompt": "a"}]},\n {"id": 2, "agents": [{"prompt": "b",\n'
         '  "prompt": "c"}]}]}', 'p.md:8: duplicate key "prompt" at $.batches[1].agents[0]'),
        ('{"batches": [{"id": 1, "id": 2, "agents": [{"prompt": "a"}]}]}',
         'p.md:6: duplicate key "id" at $.batches[0]'),
    ],
)
def test_duplicate_keys_are_refused_with_their_json_path_and_line(body: str, expected: str) -> None:
    with pytest.raises(PlanError) as exc:
        parse_plan(doc(body), "p.md")
    assert str(exc.value) == expected
    assert exc.value.exit_code == 2


def test_roundtrip_keeps_every_field() -> None:
    from distpar.core.plan import Plan

    for manifest in (PLANNER, EXECUTOR_FIXTURE, SPEC_FULL):
        plan = parse_plan(cast_doc(manifest), "x.md")
        assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


# --- properties -------------------------------------------------------------------------------------------------


texts = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12).filter(str.strip)


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 6))
    ids = draw(st.lists(st.one_of(st.integers(0, 99), texts.filter(lambda s: "#" not in s)), min_size=n, max_size=n,
                        unique_by=str))
    batches = []
    for i, bid in enumerate(ids):
        agents = [{"subagent_type": draw(texts), "prompt": draw(texts),
                   **({"owns_files": draw(st.lists(texts, max_size=2))} if draw(st.booleans()) else {})}
                  for _ in range(draw(st.integers(1 if i == 0 else 0, 3)))]
        b: dict[str, object] = {"id": bid, "agents": agents, "parallel": draw(st.booleans())}
        if draw(st.booleans()):
            b["type"] = draw(st.sampled_from(["sequential", "fan-out"]))
        if i and draw(st.booleans()):
            b["depends_on"] = draw(st.lists(st.sampled_from(ids[:i]), max_size=2))
        if draw(st.booleans()):
            b["estimate"] = draw(st.floats(0.1, 100))
        batches.append(b)
    return {"plan_id": draw(texts), "batches": batches}


@settings(max_examples=150, deadline=None)
@given(manifests(), st.sampled_from([None, 1, 2, 4]))
def test_any_valid_manifest_parses_with_exact_lines_and_round_trips(manifest: dict[str, object],
                                                                    indent: int | None) -> None:
    from distpar.core.plan import Plan

    text = "# p\n\n```json dispatch\n" + json.dumps(manifest, indent=indent) + "\n```\n"
    plan = parse_plan(text, "p.md")
    assert plan.ids == [str(b["id"]) for b in manifest["batches"]]  # type: ignore[index]
    lines = text.splitlines()
    for b in plan.batches:
        assert "{" in lines[b.line - 1]
        for a in b.agents:
            assert a.line >= b.line and json.dumps(a.prompt)[1:-1] in "\n".join(lines[a.line - 1 :])
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def string_leaves(value: object, path: str = "") -> list[str]:
    """The path (as the plan's errors write it) of every string in ``value``."""
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in string_leaves(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in string_leaves(v, f"{path}[{i}]")]
    return []


def with_nul(manifest: dict[str, object], path: str) -> None:
    """Append a NUL to the string at ``path`` (``batches[0].agents[1].prompt``) in place."""
    keys: list[str | int] = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    parent: object = manifest
    for k in keys[:-1]:
        parent = parent[k]  # type: ignore[index]
    parent[keys[-1]] += "\x00"  # type: ignore[index]


@settings(max_examples=100, deadline=None)
@given(manifests(), st.data())
def test_a_nul_anywhere_is_refused_naming_its_path(manifest: dict[str, object], data: st.DataObject) -> None:
    leaves = string_leaves(manifest)
    assert leaves  # plan_id and every prompt are strings: every example puts a NUL somewhere
    path = data.draw(st.sampled_from(leaves), label="where")
    with_nul(manifest, path)
    with pytest.raises(PlanError, match=re.escape(f"{path} contains a NUL byte")):
        parse_plan(doc(manifest), "p.md")
