"""Claude Code emulation: ``-p --output-format json|stream-json ...``, one JSON result (stream-json: JSON lines
ending with it); ``--json-schema`` answers with a structured_output."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from distpar.testing.fake_agent.args import ArgError, alias, fail_args, parse_options
from distpar.testing.fake_agent.directives import Crash, State, prompt_commands, run_prompt

CLAUDE_FLAGS = {"-p", "--print", "--verbose", "--dangerously-skip-permissions", "--continue", "-c",
                "--include-partial-messages", "--no-session-persistence", "--fork-session"}
CLAUDE_VALUED = {"--output-format", "--model", "--max-turns", "--max-budget-usd", "--permission-mode",
                 "--session-id", "--resume", "-r", "--allowedTools", "--allowed-tools", "--disallowedTools",
                 "--append-system-prompt", "--system-prompt", "--input-format", "--fallback-model", "--json-schema"}
CLAUDE_KINDS: dict[str, dict[str, Any]] = {
    "max_turns": {"subtype": "error_max_turns", "text": "", "errors": ["Reached maximum number of turns"],
                  "terminal_reason": "max_turns"},
    "budget": {"subtype": "error_max_budget_usd", "text": "", "is_error": False},  # seen with is_error false
    "rate_limit": {"subtype": "success", "text": 'API Error: 429 {"type":"rate_limit_error"}', "status": 429},
    "overloaded": {"subtype": "success", "text": 'API Error: 529 {"type":"overloaded_error"}', "status": 529},
    "server_error": {"subtype": "success", "text": "API Error: 500 Internal server error", "status": 500},
    "usage_limit": {"subtype": "success", "text": "Claude AI usage limit reached|1767225600"},
    "usage_limit_new": {"subtype": "success", "text": "You've hit your limit \u00b7 resets 6pm (UTC)"},
    "bad_input": {"subtype": "error_during_execution", "text": "invalid request"},
    "auth": {"subtype": "success", "text": "Invalid API key \u00b7 Please run /login"},
}


def claude(argv: list[str], state: State) -> int:
    try:
        opts, positional = parse_options(argv, CLAUDE_FLAGS, CLAUDE_VALUED,
                                         lambda a: ArgError(f"error: unknown option '{a}'", 1))
    except ArgError as exc:
        return fail_args(exc)
    fmt = opts.get("--output-format", "text")
    if "-p" not in opts and "--print" not in opts:
        return fail_args(ArgError("error: the fake agent only runs headless: pass -p", 1))
    if fmt == "stream-json" and "--verbose" not in opts:
        return fail_args(ArgError("Error: When using --print, --output-format=stream-json requires --verbose", 1))
    if os.environ.get("CLAUDECODE"):
        return fail_args(ArgError("Error: Claude Code cannot be launched inside another Claude Code session.", 1))
    bypass = opts.get("--permission-mode") == "bypassPermissions" or "--dangerously-skip-permissions" in opts
    if bypass and hasattr(os, "geteuid") and os.geteuid() == 0 and os.environ.get("IS_SANDBOX") != "1":
        return fail_args(ArgError("--dangerously-skip-permissions cannot be used with root/sudo privileges for "
                                   "security reasons", 1))
    session = opts.get("--session-id")
    if session is not None:
        try:
            uuid.UUID(session)
        except ValueError:
            return fail_args(ArgError("Error: Invalid session ID. Must be a valid UUID.", 1))
    schema = _json_schema(opts)
    if isinstance(schema, ArgError):
        return fail_args(schema)
    prompt = " ".join(positional) if positional else ("" if sys.stdin.isatty() else sys.stdin.read())
    if not prompt:
        return fail_args(ArgError("Error: Input must be provided either through stdin or as a prompt argument "
                                   "when using --print", 1))
    model = opts.get("--model", "fake-model-1")
    resumed = alias(opts, "--resume", "-r")
    store = os.environ.get("FAKE_AGENT_SESSIONS")
    if store and resumed and not (Path(store) / resumed).exists():
        # Claude Code saves a session about 0.6 s in; --resume of one it never saved fails like this
        print(f"No conversation found with session ID: {resumed}", file=sys.stderr)
        return 1
    session = session or resumed or str(uuid.uuid4())
    if store and not any(w[:1] == ["unsaved-session"] for w in prompt_commands(prompt)):
        Path(store).mkdir(parents=True, exist_ok=True)
        (Path(store) / session).touch()
    if fmt == "stream-json":
        print(json.dumps({"type": "system", "subtype": "init", "session_id": session, "model": model}), flush=True)
    try:
        if schema is None:  # a structured-output call only answers (distpar asks it read-only)
            run_prompt(prompt, state)
    except Crash:
        print("fake agent crashed", file=sys.stderr)
        return 1
    subtype, is_error, text = "success", False, state.text
    extra: dict[str, Any] = {}
    if state.kind == "error":
        subtype, is_error = "error_during_execution", True
    elif state.kind:
        row = CLAUDE_KINDS[state.kind]
        subtype, text = row["subtype"], row["text"]
        is_error = row.get("is_error", True)
        extra = {k: row[k] for k in ("errors", "terminal_reason") if k in row}
        if "status" in row:
            extra["api_error_status"] = row["status"]
    elif opts.get("--max-turns") and state.turns > int(opts["--max-turns"]):
        subtype, is_error, text = "error_max_turns", True, ""
        extra = {"errors": [f"Reached maximum number of turns ({opts['--max-turns']})"],
                 "terminal_reason": "max_turns"}
        state.code = 1
    elif opts.get("--max-budget-usd") and state.cost > float(opts["--max-budget-usd"]):
        subtype, is_error, text = "error_max_budget_usd", False, ""
        state.code = 1
    result = {
        "type": "result",
        "subtype": subtype,
        "is_error": is_error,
        "duration_ms": int((time.time() - state.started) * 1000),
        "duration_api_ms": int((time.time() - state.started) * 500),
        "num_turns": state.turns,
        "result": text,
        "session_id": session,
        "total_cost_usd": state.cost,
        "usage": {"input_tokens": state.tokens_in, "output_tokens": state.tokens_out,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        "modelUsage": {model: {"inputTokens": state.tokens_in, "outputTokens": state.tokens_out,
                               "costUSD": state.cost}},
        **extra,
    }
    if schema is not None and not state.kind:
        result["structured_output"] = _structured_output(schema)
    if fmt in ("json", "stream-json"):
        print(json.dumps(result))
    else:
        print(text)
    return state.code


def _json_schema(opts: dict[str, str]) -> dict[str, Any] | ArgError | None:
    """``--json-schema SCHEMA`` (structured output): SCHEMA must be a JSON object."""
    if "--json-schema" not in opts:
        return None
    try:
        schema = json.loads(opts["--json-schema"])
    except ValueError:
        schema = None
    return schema if isinstance(schema, dict) else ArgError("Error: --json-schema must be a JSON Schema object", 1)


def _structured_output(schema: dict[str, Any]) -> Any:
    """The answer: ``$FAKE_AGENT_STRUCTURED_OUTPUT`` (JSON) when set, else the smallest value of the schema."""
    if os.environ.get("FAKE_AGENT_STRUCTURED_OUTPUT"):
        return json.loads(os.environ["FAKE_AGENT_STRUCTURED_OUTPUT"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _structured_output(props.get(k, {})) for k in schema.get("required", [])}
    return {"array": [], "string": "", "number": 0, "integer": 0, "boolean": False}.get(str(kind))


