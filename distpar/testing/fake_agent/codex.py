"""Codex emulation: ``exec --json ...``, JSONL events (thread.started, turn.completed / turn.failed, error)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from distpar.testing.fake_agent.args import ArgError, alias, fail_args, parse_options
from distpar.testing.fake_agent.directives import Crash, State, run_prompt

CODEX_FLAGS = {"--json", "--experimental-json", "--skip-git-repo-check", "--full-auto", "--ephemeral",
               "--dangerously-bypass-approvals-and-sandbox", "--yolo"}
CODEX_VALUED = {"--sandbox", "-s", "--model", "-m", "--profile", "-p", "--cd", "-C", "--output-last-message",
                "-o", "--config", "-c"}
CODEX_FAILURES = {
    "rate_limit": "exceeded retry limit, last status: 429 Too Many Requests",
    "overloaded": "We're currently experiencing high demand, which may cause temporary errors.",
    "server_error": "exceeded retry limit, last status: 500 Internal Server Error",
    "usage_limit": "You've hit your usage limit. Upgrade to Pro or try again at 3:00 PM.",
    "usage_limit_new": "You've hit your usage limit. Try again later.",
    "auth": "exceeded retry limit, last status: 401 Unauthorized",
}


def codex(argv: list[str], state: State) -> int:
    if argv[:1] != ["exec"]:
        return fail_args(ArgError("error: the fake agent emulates only `codex exec`", 2))
    try:
        opts, positional = parse_options(argv[1:], CODEX_FLAGS, CODEX_VALUED,
                                         lambda a: ArgError(f"error: unexpected argument '{a}' found", 2))
    except ArgError as exc:
        return fail_args(exc)
    if len(positional) > 1:
        return fail_args(ArgError(f"error: unexpected argument '{positional[1]}' found", 2))
    sandbox = alias(opts, "--sandbox", "-s") or "read-only"
    if sandbox not in ("read-only", "workspace-write", "danger-full-access"):
        return fail_args(ArgError(f"error: invalid value '{sandbox}' for '--sandbox <SANDBOX_MODE>'", 2))
    if "--full-auto" in opts:
        print("warning: --full-auto is deprecated; use --sandbox workspace-write instead.", file=sys.stderr)
        sandbox = "workspace-write"
    if "--dangerously-bypass-approvals-and-sandbox" in opts or "--yolo" in opts:
        sandbox = "danger-full-access"
    prompt = positional[0] if positional and positional[0] != "-" else sys.stdin.read()
    if not prompt.strip():
        return fail_args(ArgError("No prompt provided via stdin.", 1))
    in_repo = subprocess.run(["git", "rev-parse", "--git-dir"], capture_output=True).returncode == 0
    if "--skip-git-repo-check" not in opts and not in_repo:
        return fail_args(ArgError("Not inside a trusted directory and --skip-git-repo-check was not specified.", 1))
    as_json = "--json" in opts or "--experimental-json" in opts

    def emit(event: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(event), flush=True)

    emit({"type": "thread.started", "thread_id": str(uuid.uuid4())})
    emit({"type": "turn.started"})
    try:
        run_prompt(prompt, state, allow_writes=sandbox != "read-only")
    except Crash:
        print("fake agent crashed", file=sys.stderr)
        return 1
    if state.edits:
        emit({"type": "item.completed", "item": {"id": "item_0", "type": "file_change", "status": "completed",
                                                 "changes": [{"path": p, "kind": "update"} for p in state.edits]}})
    if state.kind:
        message = state.text if state.kind == "error" else CODEX_FAILURES.get(state.kind, "turn failed")
        if state.kind in ("rate_limit", "server_error", "overloaded"):
            for n in range(1, 3):  # codex reports the errors it retries, too
                emit({"type": "error", "message": f"Reconnecting... {n}/5"})
        emit({"type": "error", "message": message})
        emit({"type": "turn.failed", "error": {"message": message}})
        if not as_json:
            print(f"ERROR: {message}", file=sys.stderr)
        return state.code or 1
    emit({"type": "item.completed", "item": {"id": "item_1", "type": "agent_message", "text": state.text}})
    emit({"type": "turn.completed", "usage": {"input_tokens": state.tokens_in, "cached_input_tokens": 0,
                                              "output_tokens": state.tokens_out}})
    last = alias(opts, "--output-last-message", "-o")
    if last:
        Path(last).write_text(state.text)
    if not as_json:
        print(state.text)
    return 0


