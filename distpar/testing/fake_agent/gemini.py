"""Gemini CLI emulation: ``-p PROMPT --output-format json ...``, a JSON result on stdout; on failure an error
object on stderr and gemini's exit codes."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

from distpar.testing.fake_agent.args import ArgError, alias, parse_options
from distpar.testing.fake_agent.directives import Crash, State, run_prompt

GEMINI_FLAGS = {"-y", "--yolo", "-s", "--sandbox", "-d", "--debug", "--skip-trust"}
GEMINI_VALUED = {"-p", "--prompt", "-o", "--output-format", "--approval-mode", "-m", "--model", "-r", "--resume"}
GEMINI_ERRORS: dict[str, tuple[str, str, int]] = {  # kind: (error class, message, exit code)
    "max_turns": ("FatalTurnLimitedError", "Reached max session turns for this session. Increase the number of "
                  "turns by specifying maxSessionTurns in settings.json.", 53),
    "bad_input": ("FatalInputError", "Invalid input", 42),
    "auth": ("FatalAuthenticationError", "Please set an Auth method", 41),
    "rate_limit": ("RetryableQuotaError", "Attempt 10 failed with status 429. RESOURCE_EXHAUSTED", 1),
    "overloaded": ("Error", "Attempt 10 failed with status 503. The model is overloaded.", 1),
    "server_error": ("Error", "Attempt 10 failed with status 500. Internal error.", 1),
    "usage_limit": ("TerminalQuotaError", "You have exhausted your daily quota on this model.", 1),
    "usage_limit_new": ("TerminalQuotaError", "You have exhausted your daily quota on this model.", 1),
    "budget": ("Error", "the fake agent has no budget in gemini mode", 1),
}


def gemini(argv: list[str], state: State) -> int:
    fmt = "text"

    def bad(a: str) -> ArgError:
        return ArgError(f"Unknown argument: {a}", 42)

    try:
        opts, positional = parse_options(argv, GEMINI_FLAGS, GEMINI_VALUED, bad)
        fmt = alias(opts, "--output-format", "-o") or "text"
        mode = opts.get("--approval-mode", "yolo" if ("-y" in opts or "--yolo" in opts) else "default")
        if mode not in ("default", "auto_edit", "yolo", "plan"):
            raise ArgError(f"Invalid values: Argument: approval-mode, Given: \"{mode}\"", 42)
        if fmt not in ("text", "json", "stream-json"):
            raise ArgError(f"Invalid values: Argument: output-format, Given: \"{fmt}\"", 42)
    except ArgError as exc:
        return _gemini_error(fmt, "FatalInputError", exc.message, exc.code, "")
    if "-y" in opts or "--yolo" in opts:
        print("Warning: --yolo is deprecated; use --approval-mode=yolo", file=sys.stderr)
    if "--skip-trust" not in opts and os.environ.get("GEMINI_CLI_TRUST_WORKSPACE") != "true":
        # gemini-cli 0.61: a folder not trusted before refuses headless runs, in red, exit 55
        print("\x1b[31mGemini CLI is not running in a trusted directory. To proceed, either use `--skip-trust`, set "
              "the `GEMINI_CLI_TRUST_WORKSPACE=true` environment variable, or trust this directory in interactive "
              "mode.\x1b[0m", file=sys.stderr)
        return 55
    prompt = alias(opts, "--prompt", "-p") or " ".join(positional)
    session = str(uuid.uuid4())
    model = alias(opts, "--model", "-m") or "gemini-2.5-pro"
    if fmt == "stream-json":
        print(json.dumps({"type": "init", "timestamp": _now(), "session_id": session, "model": model}), flush=True)
    try:
        run_prompt(prompt, state, allow_writes=mode in ("auto_edit", "yolo"))
    except Crash:
        print("fake agent crashed", file=sys.stderr)
        return 1
    if state.kind:
        etype, message, code = (("Error", state.text, state.code) if state.kind == "error"
                                else GEMINI_ERRORS[state.kind])
        return _gemini_error(fmt, etype, message, code, session)
    tokens = {"input": state.tokens_in, "prompt": state.tokens_in, "candidates": state.tokens_out,
              "total": state.tokens_in + state.tokens_out, "cached": 0, "thoughts": 0, "tool": 0}
    if fmt == "json":
        print(json.dumps({
            "session_id": session,
            "response": state.text,
            "stats": {
                "models": {model: {"api": {"totalRequests": state.turns, "totalErrors": 0, "totalLatencyMs": 10},
                                   "tokens": tokens}},
                "tools": {"totalCalls": len(state.edits), "totalSuccess": len(state.edits), "totalFail": 0},
                "files": {"totalLinesAdded": len(state.edits), "totalLinesRemoved": 0},
            },
        }))
    elif fmt == "stream-json":
        print(json.dumps({"type": "message", "timestamp": _now(), "role": "assistant", "content": state.text}))
        print(json.dumps({"type": "result", "timestamp": _now(), "status": "success", "stats": {
            "total_tokens": tokens["total"], "input_tokens": state.tokens_in, "output_tokens": state.tokens_out,
            "cached": 0, "input": state.tokens_in, "duration_ms": 10, "tool_calls": len(state.edits)}}))
    else:
        print(state.text)
    return 0


def _gemini_error(fmt: str, etype: str, message: str, code: int, session: str) -> int:
    # packages/cli/src/utils/errors.ts: in JSON modes the error object goes to stderr, then exit(code).
    if fmt == "json":
        # as gemini-cli 0.61 does: log lines and a stack trace first, then the object indented over many lines
        print(f"Error when talking to Gemini API Full report available at: /tmp/gemini-client-error.json "
              f"{etype}: {message}\n    at retryWithBackoff (file:///bundle/chunk.js:1:1) {{\n  status: {code}\n}}",
              file=sys.stderr)
        print(json.dumps({"session_id": session, "error": {"type": etype, "message": message, "code": code}},
                         indent=2), file=sys.stderr)
    elif fmt == "stream-json":
        print(json.dumps({"type": "result", "timestamp": _now(), "status": "error",
                          "error": {"type": etype, "message": message}, "stats": {}}))
    else:
        print(message, file=sys.stderr)
    return code


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


