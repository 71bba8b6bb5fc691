"""A fake headless coding agent that emulates the CLIs distpar drives, for demos, tests and benchmarks.

    distpar-fake-agent [--emulate claude|codex|gemini|aider] ARGS...

Without ``--emulate`` the interface follows from the arguments: ``exec ...`` is codex, ``--message-file`` or
``--message`` is aider, ``--approval-mode`` is gemini, anything else is claude. Each emulation checks its
arguments as the real CLI does (an unknown option fails), and answers in that CLI's format:

    claude  -p --output-format json|stream-json [--verbose] [--model M] [--max-turns N] [--max-budget-usd X]
            [--permission-mode MODE] [--session-id=UUID] [--json-schema SCHEMA] [--] PROMPT
            one JSON result on stdout (stream-json: JSON lines ending with it); with --json-schema no edits and
            a structured_output ($FAKE_AGENT_STRUCTURED_OUTPUT, else the schema's smallest value); stream-json
            without --verbose, a nested session (CLAUDECODE set) and bypass mode as root without IS_SANDBOX=1
            fail as they do
    codex   exec --json [--sandbox MODE] [--skip-git-repo-check] [-m M] [--] PROMPT
            JSONL events (thread.started, turn.started, item.completed, turn.completed / turn.failed, error)
    gemini  -p PROMPT --output-format json [--approval-mode=MODE] [-m M]
            a JSON result on stdout; on failure an error object on stderr and exit 53 (turn limit), 42 (bad
            input), 41 (auth) or 1
    aider   --message-file F [--yes-always] [--no-stream] ... [--model M]
            plain text with "Tokens: N sent, N received. Cost: $X message, $Y session." lines; exit 0 even when
            the LLM call failed; commits its own edits (unless --no-auto-commits)

It edits files as the prompt tells it, through lines of the form ``@fake COMMAND ARGS...`` (shell-like
quoting, ``\\n`` in text means a newline); other text is ignored. Commands:

    write PATH TEXT       create or replace a file        append PATH TEXT   add a line to a file
    delete PATH           remove a file                   sleep SECONDS      take that long
    copy SRC DST          copy a file (DST holds "<missing>" when SRC is absent)
    fail [CODE] [MSG]     finish with an error (exit CODE, default 1)
    result KIND           finish with an error result: max_turns, budget, rate_limit, overloaded, server_error,
                          usage_limit, usage_limit_new, bad_input, auth
    crash                 die without any result          hang               never finish
    commit MESSAGE        commit its own changes          spawn-child        leave a sleeping child behind
    cost USD | tokens IN OUT | turns N    the values it reports (claude, aider: cost; all: tokens)
    print-env NAME        print NAME=value on stdout and stderr and put it in the result text
    say TEXT              print TEXT on stdout (at once: what the agent says as it works)
    sh COMMAND            run COMMAND with /bin/sh -c (tests only); a non-zero exit fails the task
    fail-once KEY RESULT  the first invocation with KEY in $FAKE_AGENT_STATE fails with RESULT (a result kind, or
                          crash), later ones go on
    resolve-union         resolve the merge conflicts in the working tree by taking both sides' lines

In a worktree where a merge stopped with conflicts (distpar's ``--on-conflict resolve`` step), a prompt with no
command resolves them as ``$FAKE_AGENT_RESOLVE`` says: ``union`` (the default), ``markers`` (leaves the
markers) or ``fail``; ``$FAKE_AGENT_RESOLVE_SLEEP`` seconds first (see ``distpar.testing.fake_resolve``).

With no command it writes the prompt to ``fake-agent/<hash>.md``. ``FAKE_AGENT_LOG`` names a JSON-lines file
where every invocation is recorded (emulation, argv, working directory, batch id).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from distpar.testing import fake_resolve

VERSIONS = {
    "claude": "2.1.0 (Claude Code)",
    "codex": "codex-cli 0.58.0",
    "gemini": "0.20.0",
    "aider": "aider 0.86.1",
}
KINDS = ("max_turns", "budget", "rate_limit", "overloaded", "server_error", "usage_limit", "usage_limit_new",
         "bad_input", "auth")


class ArgError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


@dataclass
class State:
    cost: float = 0.01
    tokens_in: int = 1000
    tokens_out: int = 200
    turns: int = 1
    text: str = "done"
    code: int = 0
    kind: str | None = None  # None: success; "error" (fail) or one of KINDS
    edits: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)


# --- the prompt's commands (the same for every emulation) ------------------------------------------------

def prompt_commands(prompt: str, prefix: str = "@fake ") -> list[list[str]]:
    """The prompt's command lines (``@fake write PATH TEXT``), split like a shell would, ``\\n`` a newline. The
    tests' stand-in model servers read the same lines, so a prompt means the same to the fake and a real CLI."""
    out = []
    for ln in prompt.splitlines():
        if ln.strip().startswith(prefix):
            try:
                words = shlex.split(ln.strip()[len(prefix):])
            except ValueError:
                continue
            if words:
                out.append([w.replace("\\n", "\n") for w in words])
    return out


def run_prompt(prompt: str, state: State, allow_writes: bool = True) -> None:
    commands = prompt_commands(prompt)
    for words in commands:
        cmd, rest = words[0], words[1:]
        if cmd in ("write", "append", "delete", "copy") and not allow_writes:
            state.kind, state.code, state.text = "error", 1, f"cannot {cmd} {rest[0]}: the sandbox is read-only"
            return
        if cmd == "write":
            p = Path(rest[0])
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(rest[1] if len(rest) > 1 else "")
            state.edits.append(rest[0])
        elif cmd == "append":
            p = Path(rest[0])
            p.parent.mkdir(parents=True, exist_ok=True)
            with p.open("a") as f:
                f.write((rest[1] if len(rest) > 1 else "") + "\n")
            state.edits.append(rest[0])
        elif cmd == "delete":
            Path(rest[0]).unlink(missing_ok=True)
            state.edits.append(rest[0])
        elif cmd == "copy":  # what a file holds when the agent runs: "copy SRC DST" (DST gets "<missing>" if none)
            src = Path(rest[0])
            Path(rest[1]).write_text(src.read_text() if src.exists() else "<missing>")
            state.edits.append(rest[1])
        elif cmd == "sleep":
            time.sleep(float(rest[0]))
        elif cmd == "hang":
            while True:
                time.sleep(3600)
        elif cmd == "crash":
            raise Crash
        elif cmd == "fail":
            state.kind, state.code = "error", int(rest[0]) if rest else 1
            state.text = " ".join(rest[1:]) or "the task failed"
            return
        elif cmd == "result":
            _set_kind(state, rest[0])
            return
        elif cmd == "fail-once":
            marker = Path(os.environ.get("FAKE_AGENT_STATE", "/tmp")) / f"fake-agent-{rest[0]}"
            if not marker.exists():
                marker.touch()
                if rest[1:2] == ["crash"]:
                    raise Crash
                _set_kind(state, rest[1] if len(rest) > 1 else "rate_limit")
                return
        elif cmd == "commit":
            subprocess.run(["git", "add", "-A"], check=True)
            subprocess.run(["git", "commit", "-q", "-m", rest[0] if rest else "agent commit"], check=True)
        elif cmd == "sh":  # tests of what a misbehaving agent does (checkout, setsid, writes outside, ...)
            code = subprocess.run(["/bin/sh", "-c", rest[0]], check=False).returncode
            if code:
                state.kind, state.code, state.text = "error", 1, f"sh: {rest[0]!r} exited with {code}"
                return
        elif cmd == "resolve-union":
            state.edits += fake_resolve.resolve_union()
        elif cmd == "spawn-child":
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        elif cmd == "cost":
            state.cost = float(rest[0])
        elif cmd == "tokens":
            state.tokens_in, state.tokens_out = int(rest[0]), int(rest[1])
        elif cmd == "turns":
            state.turns = int(rest[0])
        elif cmd == "unsaved-session":
            pass  # read by the claude emulation: the session is never saved (see FAKE_AGENT_SESSIONS)
        elif cmd == "say":
            print(" ".join(rest), flush=True)
        elif cmd == "print-env":
            line_out = f"{rest[0]}={os.environ.get(rest[0], '')}"
            print(line_out, flush=True)
            print(line_out, file=sys.stderr, flush=True)
            state.text = f"{state.text}; {line_out}"
        else:
            print(f"fake agent: unknown command {cmd!r}", file=sys.stderr)
            sys.exit(2)
    if not commands and fake_resolve.merging():  # distpar's resolve step (--on-conflict resolve)
        error, edited = fake_resolve.act()
        state.edits += edited
        if error:
            state.kind, state.code, state.text = "error", 1, error
        return
    if not commands:
        p = Path("fake-agent") / (hashlib.sha1(prompt.encode()).hexdigest()[:12] + ".md")
        p.parent.mkdir(exist_ok=True)
        p.write_text(prompt + "\n")
        state.edits.append(str(p))


class Crash(Exception):
    """``@fake crash``: the emulation prints what its CLI would have printed so far, then dies."""


def _set_kind(state: State, kind: str) -> None:
    if kind not in KINDS:
        print(f"fake agent: unknown result kind {kind!r}", file=sys.stderr)
        sys.exit(2)
    state.kind, state.code = kind, 1


# --- argument parsing shared by the emulations -----------------------------------------------------------

def parse_options(argv: list[str], flags: set[str], valued: set[str], unknown: Callable[[str], ArgError],
                  ) -> tuple[dict[str, str], list[str]]:
    """``--opt value`` and ``--opt=value`` for ``valued``, bare ``flags``, positionals; ``--`` ends options."""
    opts: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            positional += argv[i + 1 :]
            break
        name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
        if name in valued:
            if not eq:
                if i + 1 >= len(argv):
                    raise unknown(f"option '{a}' argument missing")
                value = argv[i + 1]
                i += 1
            opts[name] = value
        elif a in flags:
            opts[a] = "1"
        elif a.startswith("-") and a != "-":
            raise unknown(a)
        else:
            positional.append(a)
        i += 1
    return opts, positional


def _alias(opts: dict[str, str], *names: str) -> str | None:
    return next((opts[n] for n in names if n in opts), None)


# --- claude ----------------------------------------------------------------------------------------------

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
        return _fail_args(exc)
    fmt = opts.get("--output-format", "text")
    if "-p" not in opts and "--print" not in opts:
        return _fail_args(ArgError("error: the fake agent only runs headless: pass -p", 1))
    if fmt == "stream-json" and "--verbose" not in opts:
        return _fail_args(ArgError("Error: When using --print, --output-format=stream-json requires --verbose", 1))
    if os.environ.get("CLAUDECODE"):
        return _fail_args(ArgError("Error: Claude Code cannot be launched inside another Claude Code session.", 1))
    bypass = opts.get("--permission-mode") == "bypassPermissions" or "--dangerously-skip-permissions" in opts
    if bypass and hasattr(os, "geteuid") and os.geteuid() == 0 and os.environ.get("IS_SANDBOX") != "1":
        return _fail_args(ArgError("--dangerously-skip-permissions cannot be used with root/sudo privileges for "
                                   "security reasons", 1))
    session = opts.get("--session-id")
    if session is not None:
        try:
            uuid.UUID(session)
        except ValueError:
            return _fail_args(ArgError("Error: Invalid session ID. Must be a valid UUID.", 1))
    schema = _json_schema(opts)
    if isinstance(schema, ArgError):
        return _fail_args(schema)
    prompt = " ".join(positional) if positional else ("" if sys.stdin.isatty() else sys.stdin.read())
    if not prompt:
        return _fail_args(ArgError("Error: Input must be provided either through stdin or as a prompt argument "
                                   "when using --print", 1))
    model = opts.get("--model", "fake-model-1")
    resumed = _alias(opts, "--resume", "-r")
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


# --- codex -----------------------------------------------------------------------------------------------

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
        return _fail_args(ArgError("error: the fake agent emulates only `codex exec`", 2))
    try:
        opts, positional = parse_options(argv[1:], CODEX_FLAGS, CODEX_VALUED,
                                         lambda a: ArgError(f"error: unexpected argument '{a}' found", 2))
    except ArgError as exc:
        return _fail_args(exc)
    if len(positional) > 1:
        return _fail_args(ArgError(f"error: unexpected argument '{positional[1]}' found", 2))
    sandbox = _alias(opts, "--sandbox", "-s") or "read-only"
    if sandbox not in ("read-only", "workspace-write", "danger-full-access"):
        return _fail_args(ArgError(f"error: invalid value '{sandbox}' for '--sandbox <SANDBOX_MODE>'", 2))
    if "--full-auto" in opts:
        print("warning: --full-auto is deprecated; use --sandbox workspace-write instead.", file=sys.stderr)
        sandbox = "workspace-write"
    if "--dangerously-bypass-approvals-and-sandbox" in opts or "--yolo" in opts:
        sandbox = "danger-full-access"
    prompt = positional[0] if positional and positional[0] != "-" else sys.stdin.read()
    if not prompt.strip():
        return _fail_args(ArgError("No prompt provided via stdin.", 1))
    in_repo = subprocess.run(["git", "rev-parse", "--git-dir"], capture_output=True).returncode == 0
    if "--skip-git-repo-check" not in opts and not in_repo:
        return _fail_args(ArgError("Not inside a trusted directory and --skip-git-repo-check was not specified.", 1))
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
    last = _alias(opts, "--output-last-message", "-o")
    if last:
        Path(last).write_text(state.text)
    if not as_json:
        print(state.text)
    return 0


# --- gemini ----------------------------------------------------------------------------------------------

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
        fmt = _alias(opts, "--output-format", "-o") or "text"
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
    prompt = _alias(opts, "--prompt", "-p") or " ".join(positional)
    session = str(uuid.uuid4())
    model = _alias(opts, "--model", "-m") or "gemini-2.5-pro"
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


# --- aider -----------------------------------------------------------------------------------------------

AIDER_FLAGS = {"--yes-always", "--yes", "--stream", "--no-stream", "--pretty", "--no-pretty", "--check-update",
               "--no-check-update", "--show-model-warnings", "--no-show-model-warnings", "--analytics-disable",
               "--no-analytics", "--auto-commits", "--no-auto-commits", "--gitignore", "--no-gitignore", "--git",
               "--no-git", "--dry-run"}
AIDER_VALUED = {"--message", "--msg", "-m", "--message-file", "-f", "--model", "--edit-format", "--chat-history-file",
                "--input-history-file", "--llm-history-file", "--openai-api-key", "--anthropic-api-key"}
AIDER_FAILURES = {  # kind: what aider prints (aider/exceptions.py hints after the litellm exception)
    "rate_limit": ["litellm.RateLimitError: AnthropicException - rate_limit_error",
                   "The API provider has rate limited you. Try again later or check your quotas."],
    "overloaded": ["litellm.InternalServerError: AnthropicException - Overloaded",
                   "The API provider's servers are down or overloaded."],
    "server_error": ["litellm.ServiceUnavailableError: OpenAIException - 503 Service Unavailable",
                     "The API provider's servers are down or overloaded."],
    "usage_limit": ["litellm.RateLimitError: OpenAIException - You exceeded your current quota, please check your "
                    "plan and billing details.",
                    "The API provider has rate limited you. Try again later or check your quotas."],
    "usage_limit_new": ["litellm.BadRequestError: AnthropicException - Your credit balance is too low to access "
                        "the Anthropic API."],
    "auth": ["litellm.AuthenticationError: AnthropicException - invalid x-api-key",
             "The API provider is not able to authenticate you. Check your API key."],
    "max_turns": ["Model fake-model-1 has hit a token limit!"],
    "budget": ["Model fake-model-1 has hit a token limit!"],
    "bad_input": ["litellm.BadRequestError: invalid request"],
}


def aider(argv: list[str], state: State) -> int:
    try:
        opts, _files = parse_options(argv, AIDER_FLAGS, AIDER_VALUED,
                                    lambda a: ArgError(f"aider: error: unrecognized arguments: {a}", 2))
    except ArgError as exc:
        return _fail_args(exc)
    message_file = _alias(opts, "--message-file", "-f")
    if message_file is not None:
        try:
            prompt = Path(message_file).read_text()
        except OSError:
            print(f"Message file not found: {message_file}")
            return 1
    else:
        prompt = _alias(opts, "--message", "--msg", "-m") or ""
    if not prompt:
        return _fail_args(ArgError("the fake agent runs aider only with --message or --message-file", 1))
    keys = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY", "OPENROUTER_API_KEY",
            "GROQ_API_KEY", "MISTRAL_API_KEY", "XAI_API_KEY")
    if "--model" not in opts and not any(os.environ.get(k) for k in keys):
        # aider/onboarding.py: no model, no key -> an OpenRouter login that --yes-always accepts, then a wait of
        # 5 minutes for the browser to come back on localhost:8484.
        print("No LLM model was specified and no API keys were provided.\n"
              "OpenRouter provides free and paid access to many LLMs.\n"
              "Login to OpenRouter or create a free account? (Y)es/(N)o [Yes]: y", flush=True)
        time.sleep(300)
        return 1
    model = opts.get("--model", "fake-model-1")
    print(f"Aider v{VERSIONS['aider'].split()[-1]}\nMain model: {model} with diff edit format\n"
          f"Git repo: .git\nRepo-map: using 1024 tokens", flush=True)
    try:
        run_prompt(prompt, state)
    except Crash:
        print("Traceback (most recent call last):\n  ...\nRuntimeError: fake agent crashed", file=sys.stderr)
        return 1
    if state.kind == "error":
        print(state.text, file=sys.stderr)
        return state.code
    if state.kind:
        print("\n".join(AIDER_FAILURES[state.kind]))
        return 0  # aider exits 0 after --message whatever happened
    session = 0.0
    for n in range(state.turns):
        part = state.cost / state.turns
        session = state.cost if n == state.turns - 1 else session + part
        print(f"Tokens: {_format_tokens(state.tokens_in // state.turns)} sent, "
              f"{_format_tokens(state.tokens_out // state.turns)} received. "
              f"Cost: ${_format_cost(part)} message, ${_format_cost(session)} session.")
    for p in state.edits:
        print(f"Applied edit to {p}")
    if state.edits and "--no-auto-commits" not in opts and "--no-git" not in opts and not opts.get("--dry-run"):
        subprocess.run(["git", "add", "-A"], check=True)
        if subprocess.run(["git", "diff", "--cached", "--quiet"]).returncode:
            subprocess.run(["git", "commit", "-q", "-m", "feat: changes by the fake aider"], check=True)
            head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
            print(f"Commit {head.strip()} feat: changes by the fake aider")
    print(state.text)
    return 0


def _format_tokens(count: int) -> str:
    # aider/coders/base_coder.py format_tokens
    if count < 1000:
        return f"{count}"
    if count < 10000:
        return f"{count / 1000:.1f}k"
    return f"{round(count / 1000)}k"


def _format_cost(value: float) -> str:
    # aider/coders/base_coder.py format_cost: two decimals from one cent, more below
    if value == 0:
        return "0.00"
    if abs(value) >= 0.01:
        return f"{value:.2f}"
    return f"{value:.{max(2, 2 - int(math.log10(abs(value))))}f}"


# --- entry point -----------------------------------------------------------------------------------------

EMULATIONS: dict[str, Callable[[list[str], State], int]] = {
    "claude": claude, "codex": codex, "gemini": gemini, "aider": aider,
}


def detect(argv: list[str]) -> tuple[str, list[str]]:
    if argv[:1] == ["--emulate"] and len(argv) > 1:
        return argv[1], argv[2:]
    if argv[:1] == ["exec"]:
        return "codex", argv
    names = {a.partition("=")[0] for a in argv}
    if names & {"--message-file", "--message", "--msg"}:
        return "aider", argv
    if "--approval-mode" in names:
        return "gemini", argv
    return "claude", argv


def _fail_args(exc: ArgError) -> int:
    print(exc.message, file=sys.stderr)
    return exc.code


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    name, rest = detect(args)
    if name not in EMULATIONS:
        print(f"fake agent: unknown emulation {name!r} (known: {', '.join(EMULATIONS)})", file=sys.stderr)
        sys.exit(2)
    if rest == ["--version"] or rest == ["-v"]:
        print(f"{VERSIONS[name]} [distpar fake agent]")
        sys.exit(0)
    _record(name, args)
    code = EMULATIONS[name](rest, State())
    sys.stdout.flush()
    sys.exit(code)


def _record(name: str, args: list[str]) -> None:
    log = os.environ.get("FAKE_AGENT_LOG")
    if not log:
        return
    entry = {
        "emulate": name,
        "argv": args,
        "cwd": os.getcwd(),
        "batch": os.environ.get("DISTPAR_BATCH_ID"),
        "run": os.environ.get("DISTPAR_RUN_ID"),
        "time": time.time(),
        "pid": os.getpid(),
        "ppid": os.getppid(),  # the worker process that started it (on Ray: the node's actor)
    }
    with open(log, "a") as f:
        f.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
