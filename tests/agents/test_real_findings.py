"""What the real CLIs showed (tests/realagents), pinned down on their recorded output: gemini's exit codes and
multi-line error objects, claude's api_error_status and lost sessions, the version line, prompts of any size,
presets as plugins and by value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from distpar import agents
from distpar.agents import Preset, parse_claude, parse_gemini, version_line
from distpar.core.errors import ExitCode, PlanError
from distpar.core.model import AgentConfig, AgentOutcome, UnitStatus
from distpar.core.plan import parse_plan
from distpar.testing.builders import fake_batch, make_repo, plan_text, tree_files
from tests.integration.conftest import run_plan

CTX = agents.Context("p", Path("/logs/b.prompt.md"), "b", Path("/wt"), "r", 0)

# gemini-cli 0.61 on a 429 (abridged): log lines, a stack trace, then the object indented over many lines.
GEMINI_429 = """\x1b[33mAttempt 1 failed: stand-in 429 RESOURCE_EXHAUSTED. Max attempts reached\x1b[0m
Error when talking to Gemini API Full report available at: /tmp/gemini-client-error.json RetryableQuotaError: x
    at classifyGoogleError (file:///bundle/chunk-JDPZ4CE3.js:307333:14) {
  cause: {
    code: 429,
  },
  retryDelayMs: 7000,
  status: 429
}
{
  "session_id": "d6770c8f",
  "error": {
    "type": "Error",
    "message": "stand-in 429 RESOURCE_EXHAUSTED",
    "code": 429
  }
}
"""


def gemini_error(code: int, message: str = "m", etype: str = "Error") -> str:
    return "some log line\n" + json.dumps({"session_id": "s", "error": {"type": etype, "message": message,
                                                                       "code": code}}, indent=2) + "\n"


@pytest.mark.parametrize(("stderr", "code", "cls", "transient"), [
    (GEMINI_429, 173, "api_error", True),
    (gemini_error(400, '{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}'), 144, "error", False),
    (gemini_error(401), 145, "error", False),
    (gemini_error(403), 147, "error", False),
    (gemini_error(500), 244, "api_error", True),
    (gemini_error(503), 247, "api_error", True),
    ("\x1b[31mGemini CLI is not running in a trusted directory.\x1b[0m\n", 55, "error", False),
    ("", 41, "error", False), ("", 42, "error", False), ("", 44, "error", False), ("", 52, "error", False),
    ("", 54, "error", False), ("", 130, "error", False), ("", 53, "max_turns", False),
    ("", 244, "api_error", True),  # no object at all: the exit code is the HTTP status & 0xff
])
def test_gemini_exit_codes_and_multiline_errors(stderr: str, code: int, cls: str, transient: bool) -> None:
    o = parse_gemini("", stderr, code)
    assert (o.result_class, o.transient) == (cls, transient), o.message
    assert "\x1b" not in o.message
    if code == 55:
        assert "trusted" in o.message
    if stderr == GEMINI_429:
        assert o.retry_after == 7.0 and o.rate_limited and o.message == "stand-in 429 RESOURCE_EXHAUSTED"


def test_gemini_reports_the_main_model_not_the_router() -> None:
    tokens = {"input": 10, "candidates": 2, "cached": 0, "thoughts": 0}
    out = json.dumps({"session_id": "s", "response": "done", "stats": {"models": {
        "gemini-3.5-flash-lite": {"api": {"totalRequests": 1}, "tokens": tokens, "roles": {"utility_router": {}}},
        "gemini-3.8-flash": {"api": {"totalRequests": 2}, "tokens": tokens, "roles": {"main": {}}}}}}, indent=2)
    o = parse_gemini(out, "", 0)
    assert (o.result_class, o.model, o.input_tokens) == ("success", "gemini-3.8-flash", 20)


def claude_result(status: int | None, text: str) -> str:
    return json.dumps({"type": "result", "subtype": "success", "is_error": True, "api_error_status": status,
                       "result": text, "session_id": "s"})


@pytest.mark.parametrize(("status", "text", "cls", "transient"), [
    (400, "API Error: 400 invalid_request_error", "error", False),
    (401, "Failed to authenticate. API Error: 401 authentication_error", "error", False),
    (403, "Failed to authenticate. API Error: 403 permission_error", "error", False),
    (429, "API Error: Request rejected (429) · rate_limit_error", "api_error", True),
    (529, "API Error: 529 overloaded_error", "api_error", True),
    (500, "API Error: 500 api_error", "api_error", True),
    (None, "API Error: 400 old CLI without api_error_status", "error", False),
    (None, "API Error: Connection dropped (ECONNRESET).", "api_error", True),
])
def test_claude_api_error_status_decides_before_the_text(status: int | None, text: str, cls: str,
                                                         transient: bool) -> None:
    o = parse_claude(claude_result(status, text), "", 1)
    assert (o.result_class, o.transient) == (cls, transient)


def test_claude_missing_session_and_rate_limit_event() -> None:
    o = parse_claude("", "No conversation found with session ID: bdd9c688-583e\n", 1)
    assert o.session_missing and o.result_class == "error"
    assert agents.Context("p", CTX.prompt_file, "b", CTX.workdir, "r", 0, resume=True).fresh_session().resume is False
    event = json.dumps({"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": 1767225600}})
    o = parse_claude(event + "\n" + claude_result(429, "You've hit your limit"), "", 1)
    assert (o.result_class, o.resets_at) == ("usage_limit", 1767225600.0)
    o = agents.invocation(AgentConfig("fake"), CTX, {}, {}).parse(
        claude_result(None, "Claude AI usage limit reached|1767225600"), "", 1)
    assert (o.result_class, o.rate_limited, o.resets_at) == ("usage_limit", True, 1767225600.0)


def test_version_line_skips_warnings() -> None:
    assert version_line("codex-cli 0.171.0\n", "WARNING: proceeding, even though we could not create PATH "
                                               "aliases: 1.2\n") == "codex-cli 0.171.0"
    assert version_line("WARNING: x\n2.1.332 (Claude Code)\n", "") == "2.1.332 (Claude Code)"


@pytest.mark.parametrize("preset", ["claude", "codex", "gemini", "aider"])
def test_a_prompt_too_long_for_argv_goes_on_stdin(preset: str) -> None:
    big = "x" * (agents.ARGV_PROMPT_MAX + 1)
    inv = agents.invocation(AgentConfig(preset, model="m"), replace(CTX, prompt=big), {}, {})
    assert not inv.refused
    assert inv.stdin == (None if preset == "aider" else CTX.prompt_file)  # aider reads --message-file
    assert all(len(a) < agents.ARGV_PROMPT_MAX for a in inv.argv)
    assert inv.env["CAST_SUBPROCESS"] == "1" and inv.env["DISTPAR_SUBPROCESS"] == "1"


def test_nul_bytes_and_oversized_template_prompts_are_refused() -> None:
    inv = agents.invocation(AgentConfig("claude"), replace(CTX, prompt="a\0b"), {}, {})
    assert "NUL" in inv.refused and "a\0b" not in inv.argv
    cfg = agents.agent_config("tool {prompt}", AgentConfig())
    inv = agents.invocation(cfg, replace(CTX, prompt="x" * 200_000), {}, {})
    assert "{prompt_file}" in inv.refused
    text = plan_text([fake_batch(1, writes={"a": "b"}, extra=["nul \0 here"])])
    with pytest.raises(PlanError, match="NUL"):
        agents.check_plan_agents(parse_plan(text, "plan.md"), AgentConfig("fake"))


@pytest.mark.integration  # real git and the fake agent
def test_aider_without_model_or_key_is_not_started(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPSEEK_API_KEY")
    report, _ = run_plan(repo, [fake_batch(1, writes={"a.txt": "a"})], agent=AgentConfig("aider"))
    r = report.results[0]
    assert r.status is UnitStatus.FAILED and r.tries == 1 and "OpenRouter login" in r.error
    assert r.duration < 30


@pytest.mark.integration  # real git and the fake agent
def test_gemini_runs_in_an_untrusted_worktree(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gemini 0.61 (and the fake emulating it) exits 55 in a folder it was never told to trust, as every fresh
    worktree is; the preset trusts the worktree itself, so the agent runs there and its work lands."""
    log = tmp_path / "inv.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(log))
    monkeypatch.delenv("GEMINI_CLI_TRUST_WORKSPACE", raising=False)
    assert not (Path.home() / ".gemini").exists()  # nothing trusted beforehand
    report, _ = run_plan(repo, [fake_batch(1, writes={"g.txt": "g"})], agent=AgentConfig("gemini"))
    assert report.exit_code == ExitCode.OK, report.results[0].error
    assert report.results[0].outcome and report.results[0].outcome.result_class == "success"
    assert "g.txt" in tree_files(repo, "main")
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["emulate"] == "gemini" and "--skip-trust" not in call["argv"]
    assert Path(call["cwd"]) != repo and repo not in Path(call["cwd"]).parents  # a worktree of its own
    # The premise: the very same command, in a fresh checkout, without what the preset adds, is refused.
    fresh = make_repo(tmp_path / "fresh")
    refused = subprocess.run([sys.executable, "-m", "distpar.testing.fake_agent", *call["argv"]], cwd=fresh,
                             capture_output=True,
                             text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "FAKE_AGENT_LOG"})
    assert refused.returncode == 55 and "not running in a trusted directory" in refused.stderr


def test_claude_gets_agent_only_when_defined(tmp_path: Path) -> None:
    (tmp_path / ".claude" / "agents").mkdir(parents=True)
    (tmp_path / ".claude" / "agents" / "reviewer.md").write_text("---\nname: reviewer\n---\nReview.\n")
    for name, flag in (("reviewer", True), ("main", False), ("general-purpose", False), ("nobody", False)):
        ctx = agents.Context("p", CTX.prompt_file, "b", tmp_path, "r", 0, subagent_type=name)
        argv = agents.invocation(AgentConfig("claude"), ctx, {}, {}).argv
        assert (["--agent", name] == argv[argv.index("--agent"):argv.index("--agent") + 2]) if flag else \
            "--agent" not in argv


# --- plugins -------------------------------------------------------------------------------------------------

def _my_args(cfg: AgentConfig, ctx: agents.Context) -> list[str]:
    return ["-m", "distpar.testing.fake_agent", "-p", "--output-format", "json", "--", ctx.prompt]


def _my_parse(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    out = agents.parse_claude(stdout, stderr, exit_code)
    return replace(out, message="parsed by a user-defined preset")


def test_the_registry_lists_builtins_through_entry_points() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=agents.ENTRY_POINT_GROUP)}
    assert {"claude", "codex", "gemini", "aider", "fake", "template"} <= names
    assert agents.PRESETS["template"] is agents.TEMPLATE and "template" not in agents.preset_names()


@pytest.mark.integration  # real git and the fake agent
def test_a_preset_defined_here_travels_by_value(repo: Path) -> None:
    mine = Preset("mine", sys.executable, "a preset defined in a test module", _my_args, _my_parse,
                  command=(sys.executable,))
    cfg = agents.custom_agent(mine)
    # a fresh interpreter that cannot import this test module still loads and builds it
    code = ("import json,sys; from distpar import agents; from distpar.core.model import AgentConfig; "
            "cfg = AgentConfig.from_dict(json.loads(sys.stdin.read())); p = agents.preset_of(cfg); "
            "print(p.name, p.build.__module__)")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(cfg.to_dict()), capture_output=True,
                         text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "mine"
    # the local backend resolves it from the JSON round trip of the spec, as SSH and Ray workers do
    rt = AgentConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    report, _ = run_plan(repo, [fake_batch(1, writes={"mine.txt": "m"})], agent=rt)
    r = report.results[0]
    assert report.exit_code == ExitCode.OK, r.error
    assert r.outcome and r.outcome.message == "parsed by a user-defined preset"
    assert "mine.txt" in tree_files(repo, "main")


@pytest.mark.parametrize(("line", "cls", "transient"), [
    ("litellm.APIError: APIError: OpenAIException - stand-in 403 permission_error", "error", False),
    ("litellm.APIError: APIError: OpenAIException - stand-in 529 server_error", "api_error", True),
    ("litellm.BadRequestError: OpenAIException - stand-in 401 invalid_request_error", "error", False),
    ("litellm.InternalServerError: InternalServerError: OpenAIException - Connection error.", "api_error", True),
    ("litellm.RateLimitError: RateLimitError: OpenAIException - stand-in 429 requests", "api_error", True),
])
def test_aider_litellm_errors_by_class_then_status(line: str, cls: str, transient: bool) -> None:
    # aider 0.86.2 retries all of these itself for about two minutes, then prints the last one and exits 0
    o = agents.parse_aider(f"Aider v0.86.2\n{line}\nRetrying in 32.0 seconds...\n{line}\n", "", 0)
    assert (o.result_class, o.transient) == (cls, transient)


@pytest.mark.integration  # real git and the fake agent
def test_a_resumed_session_claude_never_saved_continues_in_a_fresh_one(repo: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from distpar.coordinator.journal import Journal
    from distpar.testing.builders import write_plan
    from tests.conftest import run_and_interrupt, run_distpar

    log = tmp_path / "inv.jsonl"
    monkeypatch.setenv("FAKE_AGENT_LOG", str(log))
    monkeypatch.setenv("FAKE_AGENT_SESSIONS", str(tmp_path / "sessions"))
    plan = write_plan(tmp_path / "plan.md", [
        fake_batch(1, extra=["@fake unsaved-session", "@fake append notes.txt 'first half'", "@fake sleep 60"])])
    run_and_interrupt(plan, repo, "worktrees/*/*/w1/notes.txt")
    home = Path(os.environ["DISTPAR_HOME"])
    run_id = Journal(home / "journal.db").runs()[0]["id"]
    plan.write_text(plan.read_text().replace("@fake sleep 60", "@fake sleep 0"))
    res = run_distpar("resume", run_id, cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    argvs = [json.loads(line)["argv"] for line in log.read_text().splitlines()]
    assert len(argvs) == 3
    assert any(a.startswith("--resume=") for a in argvs[1])  # refused: never saved
    assert any(a.startswith("--session-id=") for a in argvs[2])  # the same try in a fresh session
    assert "previous session on this task was interrupted" in argvs[2][-1]
    assert (repo / "notes.txt").read_text() == "first half\nfirst half\n"  # the restored work was kept
    batch_log = Path(Journal(home / "journal.db").unit(run_id, "1")["log_path"]).read_text()
    assert "No conversation found" in batch_log and "continuing in a fresh session" in batch_log


@pytest.mark.integration  # real git and the fake agent
def test_an_agent_that_prints_nothing_is_stopped_as_stalled(repo: Path) -> None:
    batch = fake_batch(1, extra=["@fake write half.txt x", "@fake hang"])
    report, _ = run_plan(repo, [batch], agent=AgentConfig("fake", stall_timeout=1.0), agent_retries=1)
    r = report.results[0]
    assert r.try_classes == ("stalled", "stalled")  # transient: tried again from the batch's start commit
    assert r.status is UnitStatus.FAILED and r.duration < 30
