"""Result classification from each CLI's documented output shapes (literal samples, no subprocesses)."""

from __future__ import annotations

import json

import pytest

from distpar.agents import classify_text, parse_aider, parse_claude, parse_codex, parse_exit_code, parse_gemini

# --- claude: `claude -p --output-format json` -------------------------------------------------------------

CLAUDE_OK = ('{"type":"result","subtype":"success","is_error":false,"duration_ms":1998,"duration_api_ms":1976,'
             '"num_turns":1,"result":"Hello CLI Test","stop_reason":"end_turn",'
             '"session_id":"0e639165-79b1-4bd4-bb0f-4cb4c15115d4","total_cost_usd":0.0079825,'
             '"usage":{"input_tokens":3,"cache_read_input_tokens":15635,"output_tokens":6}}')


def claude(**fields: object) -> str:
    base = {"type": "result", "subtype": "success", "is_error": False, "result": "", "total_cost_usd": 0.5,
            "num_turns": 2, "session_id": "s", "usage": {"input_tokens": 10, "output_tokens": 5}}
    return json.dumps({**base, **fields})


def test_claude_success() -> None:
    o = parse_claude(CLAUDE_OK, "", 0)
    assert (o.result_class, o.ok, o.cost_usd, o.input_tokens, o.output_tokens, o.cache_read_tokens, o.turns) == \
        ("success", True, 0.0079825, 3, 6, 15635, 1)
    assert o.session_id == "0e639165-79b1-4bd4-bb0f-4cb4c15115d4" and o.duration_api_ms == 1976


@pytest.mark.parametrize(
    ("fields", "exit_code", "cls", "transient"),
    [
        ({"subtype": "error_max_turns", "is_error": True, "errors": ["Reached maximum number of turns (1)"]}, 1,
         "max_turns", False),
        ({"subtype": "success", "is_error": True, "terminal_reason": "max_turns"}, 1, "max_turns", False),
        # a budget stop has been reported with is_error false: the subtype decides
        ({"subtype": "error_max_budget_usd", "is_error": False}, 0, "budget_exceeded", False),
        ({"subtype": "error_during_execution", "is_error": True, "result": "tool failed"}, 1, "error", False),
        # API errors arrive as subtype success with is_error true
        ({"is_error": True, "result": "API Error: 429 rate_limit_error", "api_error_status": 429}, 1, "api_error",
         True),
        ({"is_error": True, "result": "something broke", "api_error_status": 529}, 1, "api_error", True),
        ({"is_error": True, "result": "API Error: 500 {\"type\":\"api_error\"}"}, 1, "api_error", True),
        ({"is_error": True, "result": "Claude AI usage limit reached|1762952400"}, 1, "usage_limit", False),
        ({"is_error": True, "result": "You\u2019ve hit your limit \u00b7 resets 6pm (America/Toronto)"}, 1,
         "usage_limit", False),
        ({"is_error": True, "result": "You've hit your limit · resets 6pm"}, 1, "usage_limit", False),
        ({"is_error": True, "result": "Invalid API key · Please run /login"}, 1, "error", False),
    ],
)
def test_claude_classes(fields: dict[str, object], exit_code: int, cls: str, transient: bool) -> None:
    o = parse_claude(claude(**fields), "", exit_code)
    assert (o.result_class, o.transient, o.ok) == (cls, transient, False)
    assert o.cost_usd == 0.5 and o.message


def test_claude_stream_json_takes_the_final_result_and_a_rejected_limit() -> None:
    lines = [json.dumps({"type": "system", "subtype": "init", "session_id": "s"}),
             json.dumps({"type": "assistant", "message": {"content": []}}),
             claude(result="all good")]
    assert parse_claude("\n".join(lines), "", 0).result_class == "success"
    rejected = json.dumps({"type": "rate_limit_event", "rate_limit_info": {"status": "rejected",
                                                                           "rateLimitType": "five_hour"}})
    o = parse_claude("\n".join([lines[0], rejected, claude(is_error=True, result="stopped")]), "", 1)
    assert o.result_class == "usage_limit"


def test_claude_without_a_result() -> None:
    crash = parse_claude('{"type":"system","subtype":"init"}\n', "Segmentation fault", -11)
    assert (crash.result_class, crash.transient) == ("crash", True) and "Segmentation fault" in crash.message
    nested = parse_claude("", "Error: Claude Code cannot be launched inside another Claude Code session.", 1)
    assert (nested.result_class, nested.transient) == ("error", False)
    verbose = parse_claude("", "Error: When using --print, --output-format=stream-json requires --verbose", 1)
    assert verbose.result_class == "error"
    text_mode = parse_claude("Claude AI usage limit reached|1762952400\n", "", 1)
    assert text_mode.result_class == "usage_limit"


# --- codex: `codex exec --json` ---------------------------------------------------------------------------

CODEX_OK = "\n".join([
    '{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}',
    '{"type":"turn.started"}',
    '{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls",'
    '"aggregated_output":"","status":"in_progress"}}',
    '{"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"Yep, there is a README.md"}}',
    '{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122}}',
])


def codex_failed(message: str, *errors: str) -> str:
    lines = ['{"type":"thread.started","thread_id":"t"}', '{"type":"turn.started"}']
    lines += [json.dumps({"type": "error", "message": e}) for e in errors]
    lines.append(json.dumps({"type": "turn.failed", "error": {"message": message}}))
    return "\n".join(lines)


def test_codex_success_sums_usage() -> None:
    o = parse_codex(CODEX_OK, "", 0)
    assert (o.result_class, o.input_tokens, o.cache_read_tokens, o.output_tokens, o.turns, o.cost_usd) == \
        ("success", 24763, 24448, 122, 1, None)
    assert o.session_id == "0199a213-81c0-7800-8aa1-bbab2a035a53" and o.message == "Yep, there is a README.md"


@pytest.mark.parametrize(
    ("stdout", "stderr", "cls", "transient"),
    [
        (codex_failed("exceeded retry limit, last status: 429 Too Many Requests", "Reconnecting... 1/5"), "",
         "api_error", True),
        (codex_failed("stream disconnected before completion: error sending request"), "", "api_error", True),
        (codex_failed("You've hit your usage limit. Upgrade to Pro or try again at 3:00 PM."), "", "usage_limit",
         False),
        (codex_failed("exceeded retry limit, last status: 401 Unauthorized"), "", "error", False),
        # a usage limit can end exec before any event: stdout empty, the message on stderr
        ("", "ERROR: You've hit your usage limit. Try again later.", "usage_limit", False),
        ("", "error: unexpected argument '--bogus' found", "error", False),
        ('{"type":"thread.started","thread_id":"t"}\n{"type":"turn.started"}', "", "crash", True),
    ],
)
def test_codex_failures(stdout: str, stderr: str, cls: str, transient: bool) -> None:
    o = parse_codex(stdout, stderr, 1 if "unexpected" not in stderr else 2)
    assert (o.result_class, o.transient, o.ok) == (cls, transient, False)


def test_codex_errors_it_retried_itself_do_not_fail_the_turn() -> None:
    retried = CODEX_OK.replace('{"type":"turn.started"}',
                               '{"type":"turn.started"}\n{"type":"error","message":"Reconnecting... 1/5"}')
    assert parse_codex(retried, "", 0).result_class == "success"


# --- gemini: `gemini -p --output-format json` -------------------------------------------------------------

GEMINI_OK = json.dumps({
    "session_id": "g1", "response": "final answer",
    "stats": {"models": {"gemini-2.5-pro": {
        "api": {"totalRequests": 2, "totalErrors": 0, "totalLatencyMs": 5400, "errorsByType": {}},
        "tokens": {"input": 900, "prompt": 1200, "candidates": 300, "total": 1550, "cached": 300, "thoughts": 50,
                   "tool": 0}}},
        "tools": {"totalCalls": 1}, "files": {"totalLinesAdded": 3, "totalLinesRemoved": 1}},
})


def gemini_error(etype: str, message: str, code: int) -> str:
    return json.dumps({"session_id": "g1", "error": {"type": etype, "message": message, "code": code}})


def test_gemini_success() -> None:
    o = parse_gemini(GEMINI_OK, "", 0)
    assert (o.result_class, o.input_tokens, o.output_tokens, o.cache_read_tokens, o.model, o.session_id) == \
        ("success", 900, 350, 300, "gemini-2.5-pro", "g1")


@pytest.mark.parametrize(
    ("stderr", "code", "cls", "transient"),
    [
        (gemini_error("FatalTurnLimitedError", "Reached max session turns for this session.", 53), 53,
         "max_turns", False),
        (gemini_error("FatalInputError", "Invalid input", 42), 42, "error", False),
        (gemini_error("FatalAuthenticationError", "Please set an Auth method", 41), 41, "error", False),
        (gemini_error("RetryableQuotaError", "Attempt 10 failed with status 429.", 1), 1, "api_error", True),
        (gemini_error("TerminalQuotaError", "You have exhausted your daily quota on this model.", 1), 1,
         "usage_limit", False),
        (gemini_error("Error", "Attempt 3 failed with status 503. Service Unavailable", 1), 1, "api_error", True),
        ("", 53, "max_turns", False),
        ("TypeError: cannot read properties of undefined", 1, "crash", True),
    ],
)
def test_gemini_failures(stderr: str, code: int, cls: str, transient: bool) -> None:
    o = parse_gemini("", stderr, code)
    assert (o.result_class, o.transient, o.ok) == (cls, transient, False)


def test_gemini_stream_json() -> None:
    lines = [json.dumps({"type": "init", "session_id": "g2", "model": "m"}),
             json.dumps({"type": "result", "status": "success",
                         "stats": {"input_tokens": 7, "output_tokens": 3, "cached": 1}})]
    o = parse_gemini("\n".join(lines), "", 0)
    assert (o.result_class, o.input_tokens, o.output_tokens, o.session_id) == ("success", 7, 3, "g2")


# --- aider: plain text --------------------------------------------------------------------------------------

AIDER_OK = """Aider v0.86.1
Main model: anthropic/claude-sonnet-4 with diff edit format
Tokens: 2.1k sent, 150 received. Cost: $0.0012 message, $0.0012 session.
Applied edit to app.py
Tokens: 12k sent, 1,234 received. Cost: $0.02 message, $0.0212 session.
Commit 1a2b3c4 feat: add app
"""


def test_aider_cost_and_tokens() -> None:
    o = parse_aider(AIDER_OK, "", 0)
    assert (o.result_class, o.cost_usd, o.input_tokens, o.output_tokens, o.turns) == \
        ("success", 0.0212, 14100, 1384, 2)
    old = parse_aider("Tokens: 1,234 sent, 56 received. Cost: $0.01 request, $0.02 session.\n", "", 0)
    assert (old.cost_usd, old.input_tokens, old.output_tokens) == (0.02, 1234, 56)
    cached = parse_aider("Tokens: 5.0k sent, 1.0k cache write, 3.0k cache hit, 200 received.\n"
                         "Cost: $0.03 message, $0.03 session.\n", "", 0)
    assert (cached.input_tokens, cached.cache_creation_tokens, cached.cache_read_tokens, cached.cost_usd) == \
        (5000, 1000, 3000, 0.03)


@pytest.mark.parametrize(
    ("stdout", "cls", "transient"),
    [
        ("litellm.RateLimitError: rate_limit_error\nThe API provider has rate limited you. Try again later or "
         "check your quotas.\n", "api_error", True),
        ("litellm.InternalServerError: Overloaded\nThe API provider's servers are down or overloaded.\n",
         "api_error", True),
        ("litellm.RateLimitError: You exceeded your current quota, please check your plan and billing details.\n"
         "The API provider has rate limited you. Try again later or check your quotas.\n", "usage_limit", False),
        ("litellm.AuthenticationError: invalid x-api-key\nThe API provider is not able to authenticate you. "
         "Check your API key.\n", "error", False),
        # exit 0 is no proof: a failure after the last reply is final
        (AIDER_OK + "The API provider has rate limited you. Try again later or check your quotas.\n", "api_error",
         True),
    ],
)
def test_aider_failures_with_exit_0(stdout: str, cls: str, transient: bool) -> None:
    o = parse_aider(stdout, "", 0)
    assert (o.result_class, o.transient, o.ok) == (cls, transient, False)


def test_aider_rate_limit_it_recovered_from_is_a_success() -> None:
    text = ("The API provider has rate limited you. Try again later or check your quotas.\n"
            "Retrying in 0.2 seconds...\n" + AIDER_OK)
    assert parse_aider(text, "", 0).result_class == "success"


def test_aider_startup_failures() -> None:
    assert parse_aider("Message file not found: /x\n", "", 1).result_class == "error"
    crash = parse_aider("", "Traceback (most recent call last):\n  ...\nRuntimeError: boom", 1)
    assert (crash.result_class, crash.transient) == ("crash", True)


# --- templates and the shared text classes --------------------------------------------------------------------

def test_template_results() -> None:
    assert parse_exit_code("", "", 0).result_class == "success"
    assert parse_exit_code("", "oops", 3).message == "exit code 3: oops"
    assert parse_exit_code(claude(subtype="error_max_turns", is_error=True), "", 1).result_class == "max_turns"
    assert parse_exit_code("", "", -9).result_class == "crash"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("429 Too Many Requests", ("api_error", True)),
        ("Overloaded", ("api_error", True)),
        ("usage limit reached|1762952400", ("usage_limit", False)),
        ("Quota exceeded. Check your plan and billing details.", ("usage_limit", False)),
        ("syntax error in file", ("error", False)),
    ],
)
def test_classify_text(text: str, expected: tuple[str, bool]) -> None:
    assert classify_text(text) == expected


def test_a_status_number_inside_a_path_is_not_a_server_error() -> None:
    """A deterministic failure naming a path that holds 500 (pytest's /tmp/pytest-of-root/pytest-500/...) was
    taken for an HTTP 500 and retried with backoff."""
    from distpar.agents import classify_text

    assert classify_text("sh: 'test -e /tmp/pytest-of-root/pytest-500/t0/fixed' exited with 1") == ("error", False)
    assert classify_text("no such file: build-503.log") == ("error", False)
    assert classify_text("API Error: 500 Internal Server Error") == ("api_error", True)
    assert classify_text("HTTP 529: overloaded") == ("api_error", True)
    assert classify_text("upstream returned (503)") == ("api_error", True)
