"""``distpar mcp`` end to end through the official SDK client over stdio: the tools and their schemas, a run
started detached and followed to the end, cancel then resume, bad input that starts nothing, the allow-list, the
journal shared with the CLI, secrets that never come back."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from distpar.coordinator.journal import Journal
from distpar.mcp import options as opts
from distpar.mcp.tools import tool_options
from distpar.testing.builders import fake_batch, make_repo, plan_text, tree_files, write_plan
from tests.conftest import run_distpar, run_id_of
from tests.mcp.conftest import data, dump, mcp_session, text

pytestmark = pytest.mark.integration

TOOLS = {"plan", "run", "status", "logs", "resume", "cancel"}


def journal() -> Journal:
    return Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")


def run_state(run_id: str) -> str:
    j = journal()
    try:
        return str(j.run(run_id)["state"])  # type: ignore[index]
    finally:
        j.close()


def runs_in_journal() -> list[str]:
    j = journal()
    try:
        return [r["id"] for r in j.runs()]
    finally:
        j.close()


def test_tools_have_input_and_output_schemas(repo: Path) -> None:
    async def main() -> None:
        async with mcp_session(repo) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools) == TOOLS
        for t in tools.values():
            assert t.input_schema["type"] == "object" and t.output_schema and t.output_schema["type"] == "object"
            assert t.description
        run = tools["run"].input_schema["properties"]
        # derived from distpar run's click options, not listed again: every option but the deny-list
        derived = {o.name for o in tool_options("run")}
        assert derived <= set(run) and {"workers", "agent", "backend", "verify", "forward_env"} <= derived
        assert not {"dry_run", "json", "quiet", "run_id", "check_only", "repo_path"} & set(run)
        assert set(run) - derived == {"plan", "plan_text", "repo"}
        assert run["workers"]["anyOf"][0]["minimum"] == 1
        assert {"local", "ray", "ssh"} <= set(run["backend"]["enum"]) and run["backend"]["default"] == "local"
        # left out, a run option takes the repository's [tool.distpar] value, else its declared default (said)
        assert run["retries"]["default"] is None and "[default: 2]" in run["retries"]["description"]
        assert "[tool.distpar]: retries" in run["retries"]["description"]
        assert set(tools["resume"].input_schema["properties"]) == {"run_id", "repo", "retries", "timeout", "budget_usd"}
        assert tools["run"].output_schema["required"] == ["run_id", "state", "repo", "output"]
        assert "units" in json.dumps(tools["status"].output_schema)

    anyio.run(main)


def test_argv_from_derived_options(tmp_path: Path) -> None:
    options = tool_options("run")
    words = opts.argv(options, {"workers": 3, "agent": "fake", "hooks": True, "forward_env": ["A", "B"],
                                "stall_timeout": 2.0, "backend": "local", "hosts_file": "inv.toml",
                                "allow_dirty": False}, tmp_path)
    assert words == ["--workers", "3", "--agent", "fake", "--stall-timeout", "2", "--forward-env", "A",
                     "--forward-env", "B", "--hooks", "--hosts-file", str(tmp_path / "inv.toml")]
    # an option [tool.distpar] may turn on can be turned off for one run
    assert opts.argv(options, {"hooks": False}, tmp_path) == ["--no-hooks"]


def test_plan_run_status_logs_to_the_end(repo: Path) -> None:
    batches = [fake_batch(1, writes={"src/one.py": "ONE = 1\n"}, sleep=2, extra=["@fake say hello-from-one"]),
               fake_batch(2, writes={"src/two.py": "TWO = 2\n"}, sleep=2),
               fake_batch(3, writes={"docs/three.md": "three\n"}, depends_on=[1])]
    plan = write_plan(repo.parent / "plan.md", batches, independent=False)
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    async def main() -> dict[str, Any]:
        async with mcp_session(repo) as s:
            dry = data(await s.call_tool("plan", {"plan": str(plan), "workers": 2}))
            assert dry["units"] == 3 and dry["rule"] == "dag" and dry["plan_id"] == "test-plan"
            graph, prediction = dry["preview"]["graph"], dry["preview"]["prediction"]
            assert {u["uid"]: u["depends_on"] for u in graph["units"]} == {"1": [], "2": [], "3": ["1"]}
            assert prediction["workers"] == 2 and {x["uid"] for x in prediction["slots"]} == {"1", "2", "3"}
            t0 = time.monotonic()
            started = data(await s.call_tool("run", {"plan": str(plan), "workers": 2, "agent": "fake"}))
            took = time.monotonic() - t0
            run_id = started["run_id"]
            now = data(await s.call_tool("status", {"run_id": run_id}))["run"]
            assert now["state"] == "running", now  # run returned before the run ended (units take 2 s)
            assert took < 2.0 + 10, took
            assert now["total"] == 3 and now["done"] < 3
            final = data(await s.call_tool("status", {"run_id": run_id, "wait_seconds": 120},
                                           progress_callback=on_progress))["run"]
            log = data(await s.call_tool("logs", {"run_id": run_id, "unit": "1", "tail": 5}))
            every = data(await s.call_tool("status", {}))
            return {"run_id": run_id, "final": final, "log": log, "every": every}

    out = anyio.run(main)
    final = out["final"]
    assert final["state"] == "ok", final
    assert final["done"] == final["total"] == 3 and not final["running"] and final["landed"]
    assert {u["unit"]: u["state"] for u in final["units"]} == {"1": "ok", "2": "ok", "3": "ok"}
    assert {"src/one.py", "src/two.py", "docs/three.md"} <= set(tree_files(repo, "main"))
    assert progress and progress[-1][0] == 3 and progress[-1][1] == 3, progress
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(progress))
    log = out["log"]
    assert log["unit"] == "1" and log["state"] == "ok" and "hello-from-one" in log["text"]
    assert log["text"].count("\n") <= 5 and log["next_offset"] == log["size"]
    assert [r["run_id"] for r in out["every"]["runs"]] == [out["run_id"]]
    # the run is journaled as any: distpar status sees it
    cli = run_distpar("status", out["run_id"], "--json", cwd=repo)
    assert cli.returncode == 0 and json.loads(cli.stdout)["run"]["state"] == "ok"


def test_logs_bounded_by_offset_and_bytes(repo: Path) -> None:
    lines = [f"@fake say line-{i:03d}-" + "x" * 40 for i in range(60)]
    plan = write_plan(repo.parent / "plan.md", [fake_batch(1, writes={"a.txt": "a\n"}, extra=lines)])
    out = run_distpar("run", str(plan), "--agent", "fake", cwd=repo)
    assert out.returncode == 0, out.stderr
    run_id = run_id_of(out.stdout)

    async def main() -> list[dict[str, Any]]:
        async with mcp_session(repo) as s:
            head = data(await s.call_tool("logs", {"run_id": run_id, "offset": 0, "max_bytes": 200}))
            more = data(await s.call_tool("logs", {"run_id": run_id, "offset": head["next_offset"],
                                                   "max_bytes": 200}))
            tail = data(await s.call_tool("logs", {"run_id": run_id, "tail": 3}))
            capped = data(await s.call_tool("logs", {"run_id": run_id, "tail": 1000, "max_bytes": 300}))
            return [head, more, tail, capped]

    head, more, tail, capped = anyio.run(main)
    whole = Path(head["path"]).read_bytes().decode()
    assert head["offset"] == 0 and len(head["text"].encode()) == 200 and head["truncated"]
    assert head["text"] + more["text"] == whole[:400]
    assert tail["text"] == "".join(whole.splitlines(keepends=True)[-3:])
    assert len(capped["text"].encode()) <= 300 and whole.endswith(capped["text"]) and capped["truncated"]


def test_cancel_then_resume(repo: Path) -> None:
    once = Path(os.environ["FAKE_AGENT_STATE"]) / "slow-once"
    slow = fake_batch(1, writes={"src/one.py": "ONE = 1\n"},
                      extra=[f"@fake sh 'test -f {once} || {{ touch {once}; sleep 60; }}'"])
    plan = write_plan(repo.parent / "plan.md", [slow, fake_batch(2, writes={"src/two.py": "TWO = 2\n"})])

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
        async with mcp_session(repo) as s:
            run_id = data(await s.call_tool("run", {"plan": str(plan), "workers": 1, "agent": "fake"}))["run_id"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until the slow agent runs (its marker written)
                if once.exists():
                    break
                await anyio.sleep(0.1)
            assert once.exists()
            cancelled = data(await s.call_tool("cancel", {"run_id": run_id, "wait_seconds": 60}))
            again = await s.call_tool("cancel", {"run_id": run_id})
            resumed = data(await s.call_tool("resume", {"run_id": run_id}))
            final = data(await s.call_tool("status", {"run_id": run_id, "wait_seconds": 120}))["run"]
            return cancelled, resumed, final, text(again)

    cancelled, resumed, final, again = anyio.run(main)
    assert cancelled["state"] == "interrupted" and cancelled["resumable"], cancelled
    assert "is not running (it is interrupted)" in again
    assert resumed["run_id"] == cancelled["run_id"]
    assert final["state"] == "ok", final
    assert {"src/one.py", "src/two.py"} <= set(tree_files(repo, "main"))
    j = journal()
    events = [e.kind for e in j.events(cancelled["run_id"])]
    j.close()
    assert "interrupted" in events and "run_resumed" in events


def test_bad_input_is_a_tool_error_and_starts_nothing(repo: Path, tmp_path: Path) -> None:
    bad_deps = plan_text([fake_batch(1), fake_batch(2, depends_on=[7])])
    bad_file = tmp_path / "bad.md"
    bad_file.write_text(bad_deps)
    other = make_repo(tmp_path / "elsewhere")
    plain = tmp_path / "plain"
    plain.mkdir()

    async def main() -> dict[str, str]:
        got: dict[str, str] = {}
        async with mcp_session(repo, "--allow-repo", str(repo), "--allow-repo", str(plain)) as s:
            for key, name, args in [
                ("text", "run", {"plan_text": bad_deps, "agent": "fake"}),
                ("file", "run", {"plan": str(bad_file), "agent": "fake"}),
                ("plan_tool", "plan", {"plan": str(bad_file)}),
                ("missing", "run", {"plan": "nope.md", "agent": "fake"}),
                ("both", "run", {"plan": str(bad_file), "plan_text": bad_deps}),
                ("workers", "run", {"plan_text": plan_text([fake_batch(1)]), "workers": 0}),
                ("backend", "run", {"plan_text": plan_text([fake_batch(1)]), "backend": "cloud"}),
                ("flags", "run", {"plan_text": plan_text([fake_batch(1)]), "agent": "fake",
                                  "hosts": "h1"}),
                ("unset_env", "run", {"plan_text": plan_text([fake_batch(1)]), "agent": "fake",
                                      "forward_env": ["DISTPAR_SURELY_UNSET"]}),
                ("outside", "run", {"plan_text": plan_text([fake_batch(1)]), "agent": "fake", "repo": str(other)}),
                ("notgit", "status", {"repo": str(plain)}),
                ("unknown_run", "status", {"run_id": "20990101-000000-beef"}),
            ]:
                result = await s.call_tool(name, args)
                assert result.is_error, (key, dump(result))
                got[key] = text(result)
        return got

    got = anyio.run(main)
    assert re.search(r"\.plan\.md:\d+: batches\[1\]\.depends_on\[0\]: unknown batch id '7'", got["text"]), got
    assert f"{bad_file}:" in got["file"] and "batches[1].depends_on[0]: unknown batch id '7'" in got["file"]
    assert f"{bad_file}:" in got["plan_tool"] and "unknown batch id '7'" in got["plan_tool"]
    assert "plan file not found" in got["missing"]
    assert "exactly one of plan" in got["both"]
    assert "workers" in got["workers"] and "greater than or equal to 1" in got["workers"]
    assert "backend" in got["backend"]
    assert "--hosts goes with --backend ssh" in got["flags"]
    assert "--forward-env DISTPAR_SURELY_UNSET: the variable is not set" in got["unset_env"]
    assert "is not under an allowed directory" in got["outside"] and str(other.resolve()) in got["outside"]
    assert str(plain) in got["notgit"] and "git" in got["notgit"]
    assert "no run '20990101-000000-beef'" in got["unknown_run"]
    assert runs_in_journal() == []  # nothing started
    assert not list(repo.glob(".git/distpar/worktrees*")) and not list(
        Path(os.environ["DISTPAR_HOME"]).glob("runs/*"))


def test_a_run_started_by_the_cli_is_seen_by_the_status_tool(repo: Path) -> None:
    plan = write_plan(repo.parent / "plan.md", [fake_batch(1, writes={"a.txt": "a\n"})])
    out = run_distpar("run", str(plan), "--agent", "fake", cwd=repo)
    assert out.returncode == 0, out.stderr
    run_id = run_id_of(out.stdout)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with mcp_session(repo) as s:
            every = data(await s.call_tool("status", {}))
            one = data(await s.call_tool("status", {"run_id": run_id[:12]}))  # a unique prefix, as the CLI
            return every, one

    every, one = anyio.run(main)
    assert [(r["run_id"], r["state"]) for r in every["runs"]] == [(run_id, "ok")] and every["run"] is None
    assert one["run"]["run_id"] == run_id and one["run"]["units"][0]["state"] == "ok"


def test_forwarded_secret_never_in_a_tool_result(repo: Path) -> None:
    secret = "s3cr3t-" + os.urandom(6).hex()
    plan = write_plan(repo.parent / "plan.md", [
        fake_batch(1, writes={"a.txt": "a\n"}, extra=["@fake print-env DISTPAR_TEST_SECRET"]),
        fake_batch(2, extra=["@fake print-env DISTPAR_TEST_SECRET", "@fake fail 3 it-failed"])])

    async def main() -> list[str]:
        seen = []
        async with mcp_session(repo, env={"DISTPAR_TEST_SECRET": secret}) as s:
            started = await s.call_tool("run", {"plan": str(plan), "agent": "fake",
                                                "forward_env": ["DISTPAR_TEST_SECRET"]})
            run_id = data(started)["run_id"]
            final = await s.call_tool("status", {"run_id": run_id, "wait_seconds": 120})
            seen += [dump(started), dump(final), dump(await s.call_tool("status", {}))]
            for unit in ("1", "2"):
                seen.append(dump(await s.call_tool("logs", {"run_id": run_id, "unit": unit})))
                seen.append(dump(await s.call_tool("logs", {"run_id": run_id, "unit": unit, "offset": 0})))
            assert data(final)["run"]["state"] == "failed", dump(final)
        return seen

    seen = anyio.run(main)
    assert any("DISTPAR_TEST_SECRET=" in s for s in seen)  # the agent did print it ...
    for s in seen:
        assert secret not in s  # ... and no tool result carries its value


def test_a_run_outlives_the_server(repo: Path) -> None:
    plan = write_plan(repo.parent / "plan.md", [fake_batch(1, writes={"late.txt": "late\n"}, sleep=3)])

    async def main() -> str:
        async with mcp_session(repo) as s:
            return str(data(await s.call_tool("run", {"plan": str(plan), "agent": "fake"}))["run_id"])

    run_id = anyio.run(main)  # the session ends, the server exits, the run goes on
    assert run_state(run_id) == "running"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and run_state(run_id) == "running":
        time.sleep(0.2)
    cli = run_distpar("status", run_id, "--json", cwd=repo)
    assert json.loads(cli.stdout)["run"]["state"] == "ok"
    assert "late.txt" in tree_files(repo, "main")
