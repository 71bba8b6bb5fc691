"""The real Claude Code CLI loads the plugin's MCP configuration (plugin/.mcp.json: ``distpar mcp``) and, told so
by the stand-in model server, calls ``mcp__distpar__run`` then ``mcp__distpar__status``: the plan runs (the fake
agent doing its units) and its work lands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from distpar.coordinator.journal import Journal
from distpar.testing.builders import fake_batch, tree_files, write_plan
from tests.conftest import REPO_ROOT
from tests.realagents.conftest import Agent
from tests.realagents.standins import StandIn, tool_results

pytestmark = pytest.mark.realagents

PLUGIN = REPO_ROOT / "plugin"


def claude_env(agent: Agent) -> dict[str, str]:
    """The CLI's environment: ``distpar`` (this checkout's) on PATH for the plugin's server configuration."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **agent.env, "PATH": path, "IS_SANDBOX": "1", "MCP_TIMEOUT": "60000",
            # the MCP tools in the first request: not deferred behind ToolSearch, the servers connected before it
            "ENABLE_TOOL_SEARCH": "false", "MCP_CONNECTION_NONBLOCKING": "false"}


def test_the_plugin_validates(wired: Callable[[str], Agent]) -> None:
    claude = wired("claude")
    out = subprocess.run([str(claude.path), "plugin", "validate", str(PLUGIN)], capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL, env=claude_env(claude))
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_plugin_installs_from_its_directory(wired: Callable[[str], Agent], repo: Path) -> None:
    """As a user installs it: the directory is a marketplace of one plugin; installed, its server connects."""
    claude = wired("claude")
    env = claude_env(claude)
    for argv in (["plugin", "marketplace", "add", str(PLUGIN)], ["plugin", "install", "distpar@distpar"]):
        out = subprocess.run([str(claude.path), *argv], capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL, env=env, cwd=repo)
        assert out.returncode == 0, out.stdout + out.stderr
    listed = subprocess.run([str(claude.path), "mcp", "list"], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL, env=env, cwd=repo)
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("plugin:distpar:distpar:"))
    assert "distpar mcp" in line and "Connected" in line, listed.stdout


# The plugin's server as Claude Code names its tools: from --mcp-config, or with the plugin loaded from its
# directory (--plugin-dir, as an installed plugin is loaded).
LOADS = {"mcp-config": (["--mcp-config", str(PLUGIN / ".mcp.json"), "--strict-mcp-config"], "mcp__distpar__"),
         "plugin-dir": (["--plugin-dir", str(PLUGIN)], "mcp__plugin_distpar_distpar__")}


@pytest.mark.parametrize("load", sorted(LOADS))
def test_claude_code_runs_a_plan_through_the_mcp_server(repo: Path, wired: Callable[[str], Agent], standin: StandIn,
                                                        load: str) -> None:
    claude = wired("claude")
    flags, prefix = LOADS[load]
    plan = write_plan(repo.parent / "plan.md", [
        fake_batch(1, writes={"src/one.py": "ONE = 1\n"}, sleep=1),
        fake_batch(2, writes={"src/two.py": "TWO = 2\n"}, sleep=1),
        fake_batch(3, writes={"docs/three.md": "three\n"}, depends_on=[1, 2])], independent=False)
    run_args = json.dumps({"plan": str(plan), "agent": "fake", "workers": 2})
    status_args = json.dumps({"run_id": "$run_id", "wait_seconds": 120})
    prompt = ("Run my plan with distpar and tell me how it went.\n"
              f"@standin call {prefix}run '{run_args}'\n"
              f"@standin call {prefix}status '{status_args}'\n")
    out = subprocess.run(
        [str(claude.path), "-p", prompt, "--output-format", "json", *flags,
         "--allowedTools", f"{prefix}run,{prefix}status", "--max-turns", "6"],
        cwd=repo, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=claude_env(claude))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    answered = [r for r in standin.requests if r.get("answer") == "tool"]
    assert [r["tool"] for r in answered] == [f"{prefix}run", f"{prefix}status"], [
        [t.get("name") for t in r["body"].get("tools") or [] if "mcp" in str(t.get("name"))] for r in standin.requests]
    journal = Journal(Path(os.environ["DISTPAR_HOME"]) / "journal.db")
    runs = journal.runs()
    assert len(runs) == 1, runs
    run_id = runs[0]["id"]
    assert json.loads(answered[1]["input"])["run_id"] == run_id  # status was asked about the run run started
    assert runs[0]["state"] == "ok", runs[0]
    assert [b["state"] for b in journal.units(run_id)] == ["ok", "ok", "ok"]
    assert {"src/one.py", "src/two.py", "docs/three.md"} <= set(tree_files(repo, "main"))
    # the model got the status tool's structured result: the run ended ok
    result = tool_results(standin.requests[-1]["body"])[-1]
    assert json.loads(result)["run"]["run_id"] == run_id and json.loads(result)["run"]["state"] == "ok", result
