"""Each preset's argv and environment against its CLI's documented flags (no subprocesses)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from distpar import agents
from distpar.core.errors import UsageError
from distpar.core.model import AgentConfig
from distpar.core.plan import parse_plan
from distpar.testing.builders import fake_batch, plan_text

CTX = agents.Context("Fix the bug; don't touch $HOME", Path("/logs/b1.prompt.md"), "b1", Path("/wt/s1"), "run-1", 0,
                     session_id="0e639165-79b1-4bd4-bb0f-4cb4c15115d4")
FULL = AgentConfig(model="M", max_turns=7, max_budget_usd=1.5)


def argv(preset: str, cfg: AgentConfig = FULL, ctx: agents.Context = CTX) -> list[str]:
    inv = agents.invocation(AgentConfig(**{**cfg.to_dict(), "preset": preset}), ctx, {"PATH": "/bin"}, {})
    return inv.argv


def test_claude_argv_matches_the_docs() -> None:
    # https://docs.anthropic.com/en/docs/claude-code/sdk/sdk-headless (-p, --output-format json|stream-json),
    # https://docs.anthropic.com/en/docs/claude-code/cli-reference (--permission-mode, --model, --max-turns,
    # --max-budget-usd, --session-id), claude-agent-sdk-python _build_command (`--session-id=<id>`, `--` prompt).
    assert argv("claude") == [
        "claude", "-p", "--output-format", "json", "--permission-mode", "bypassPermissions", "--model", "M",
        "--max-turns", "7", "--max-budget-usd", "1.5", "--session-id=0e639165-79b1-4bd4-bb0f-4cb4c15115d4",
        "--", CTX.prompt,
    ]
    # stream-json needs --verbose with -p, or the CLI exits 1.
    streaming = argv("claude", AgentConfig(stream=True))
    assert streaming[1:5] == ["-p", "--output-format", "stream-json", "--verbose"]


def test_codex_argv_matches_the_docs() -> None:
    # openai/codex docs/exec.md and codex-rs/exec/src/cli.rs: `codex exec --json`, `--sandbox workspace-write`
    # (read-only is the exec default), `--skip-git-repo-check`, `-m MODEL`; the prompt is positional (-p is a
    # profile). It has no turn or budget flag.
    assert argv("codex") == ["codex", "exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check",
                             "-m", "M", "--", CTX.prompt]
    assert "-p" not in argv("codex")


def test_gemini_argv_matches_the_docs() -> None:
    # google-gemini/gemini-cli docs/cli/headless.md and docs/cli/cli-reference.md: `-p PROMPT`,
    # `--output-format json`, `--approval-mode=yolo` (-y/--yolo is deprecated), `-m MODEL`; no turn flag
    # (maxSessionTurns in settings.json, exit 53).
    assert argv("gemini") == ["gemini", "-p", CTX.prompt, "--output-format", "json", "--approval-mode=yolo",
                              "-m", "M"]
    dash = agents.Context("-x starts with a dash", CTX.prompt_file, "b1", CTX.workdir, "r", 0)
    assert argv("gemini", AgentConfig(), dash)[1] == "--prompt=-x starts with a dash"


def test_aider_argv_matches_the_docs() -> None:
    # https://aider.chat/docs/scripting.html and https://aider.chat/docs/config/options.html: --message-file,
    # --yes-always, --no-stream, --no-pretty, --no-check-update, --no-show-model-warnings, --analytics-disable,
    # --model. The prompt goes in the file, never on the command line.
    assert argv("aider") == ["aider", "--message-file", "/logs/b1.prompt.md", "--yes-always", "--no-stream",
                             "--no-pretty", "--no-check-update", "--no-show-model-warnings", "--analytics-disable",
                             "--model", "M"]
    assert CTX.prompt not in argv("aider")


def test_every_try_gets_a_fresh_session_id() -> None:
    a, b = (agents.Context("p", CTX.prompt_file, "b", CTX.workdir, "r", 0) for _ in range(2))
    assert a.session_id != b.session_id and uuid.UUID(a.session_id)


@pytest.mark.parametrize("preset", ["claude", "codex", "gemini", "aider"])
def test_the_prompt_is_one_argument_or_a_file(preset: str) -> None:
    evil = "$(rm -rf /); `x` 'q' \"d\" | cat\nline two"
    ctx = agents.Context(evil, CTX.prompt_file, "b", CTX.workdir, "r", 0)
    args = argv(preset, AgentConfig(model="m"), ctx)
    assert evil in args or (preset == "aider" and str(CTX.prompt_file) in args)


def test_claude_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    inv = agents.invocation(AgentConfig("claude"), CTX, {"CLAUDECODE": "1", "CLAUDE_CODE_ENTRYPOINT": "cli",
                                                         "KEEP": "x"}, {"FWD": "v"})
    assert "CLAUDECODE" not in inv.env and "CLAUDE_CODE_ENTRYPOINT" not in inv.env
    assert inv.env["KEEP"] == "x" and inv.env["FWD"] == "v" and inv.env[agents.GUARD_VAR] == "1"
    # bypassPermissions refuses root unless IS_SANDBOX=1
    assert (inv.env.get("IS_SANDBOX") == "1") == (os.geteuid() == 0)


def test_executable_override_precedence() -> None:
    env = {"DISTPAR_AGENT_CODEX_BIN": "/opt/codex/bin/codex --profile ci"}
    assert agents.command(AgentConfig("codex"), env) == ["/opt/codex/bin/codex", "--profile", "ci"]
    assert agents.command(AgentConfig("codex", executable="my codex"), env) == ["my", "codex"]
    assert agents.command(AgentConfig("codex"), {}) == ["codex"]
    assert agents.command(AgentConfig("gemini"), env) == ["gemini"]


def test_secrets_are_the_forwarded_values_and_every_key_variable_set() -> None:
    env = {"ANTHROPIC_API_KEY": "sk-ant-123456", "GEMINI_API_KEY": "", "PATH": "/usr/bin", "OPENAI_API_KEY": "abc"}
    assert set(agents.secret_values(env, {"TOKEN": "tok-987654"})) == {"sk-ant-123456", "tok-987654"}
    assert {"ANTHROPIC_API_KEY", "CODEX_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY"} <= set(agents.KEY_VARS)


def test_limits_a_preset_cannot_apply_are_reported() -> None:
    assert agents.unsupported(AgentConfig("claude", max_turns=3, max_budget_usd=1.0)) == []
    assert agents.unsupported(AgentConfig("codex", max_turns=3)) == [
        "the codex agent has no --max-turns: 3 is not applied"]
    assert "--max-budget-usd" in agents.unsupported(AgentConfig("gemini", max_budget_usd=2.0))[0]
    inv = agents.invocation(AgentConfig("aider", max_turns=5), CTX, {}, {})
    assert inv.notes == ("the aider agent has no --max-turns: 5 is not applied",)


def test_plan_check_warns_about_limits_and_an_uncountable_budget() -> None:
    plan = parse_plan(plan_text([fake_batch(1), fake_batch(2, agent="gemini")]), "p.md")
    warnings = agents.check_plan_agents(plan, AgentConfig("claude", max_turns=4), budget_usd=5.0)
    assert "the gemini agent has no --max-turns: 4 is not applied" in warnings
    assert any("gemini agent reports no cost" in w for w in warnings)
    assert not any("claude" in w for w in warnings)


def test_agent_config_keeps_the_run_options() -> None:
    base = AgentConfig("claude", model="m", max_turns=3, stream=True, executable="x")
    assert agents.agent_config("codex", base) == AgentConfig("codex", model="m", max_turns=3, stream=True,
                                                             executable="x")
    tmpl = agents.agent_config("tool {prompt}", base)
    assert tmpl.preset == "template" and tmpl.executable is None and tmpl.model == "m"
    with pytest.raises(UsageError, match="unknown agent 'gpt'"):
        agents.agent_config("gpt", base)
    assert AgentConfig.from_dict(base.to_dict()) == base


def test_a_template_names_the_worker_and_the_old_stream_placeholder_still_works() -> None:
    ctx = agents.Context("p", CTX.prompt_file, "b", CTX.workdir, "r", 2)
    inv = agents.invocation(AgentConfig("template", template="run --worker={worker} --old={stream}"), ctx,
                            {"PATH": "/bin"}, {})
    assert inv.argv == ["run", "--worker=3", "--old=3"]
    assert inv.env["DISTPAR_WORKER"] == inv.env["DISTPAR_STREAM"] == "3"
