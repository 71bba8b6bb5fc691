"""Agent presets and templates: a batch -> the argv and environment of one headless agent invocation, and the
agent's output -> an ``AgentOutcome``.

The prompt is always one argv element (or a file): nothing here ever goes through a shell. Each preset's argv
follows its CLI's documentation (cited next to its builder); ``tests/agents/test_presets.py`` checks them.

Which program runs a preset: ``AgentConfig.executable`` if set, else ``$DISTPAR_AGENT_<PRESET>_BIN`` on the
machine that runs the agent, else the preset's own command (``claude``, ``codex``, ``gemini``, ``aider``). Both
overrides are split like a shell would (no shell runs them), so ``python -m distpar.fake_agent --emulate codex``
points the codex preset at the bundled fake agent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distpar.errors import PlanError, UsageError
from distpar.model import AgentConfig, AgentOutcome
from distpar.plan import Plan

log = logging.getLogger(__name__)

GUARD_VAR = "DISTPAR_SUBPROCESS"
PLACEHOLDERS = ("prompt", "prompt_file", "batch_id", "workdir", "run_id", "stream")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
BIN_VAR = "DISTPAR_AGENT_{}_BIN"
VERSION_TIMEOUT = 10.0

# (stdout, stderr, exit code) -> outcome. Every preset gets both streams: gemini writes its error object to
# stderr, codex and aider print some failures only there.
Parser = Callable[[str, str, int | None], AgentOutcome]


@dataclass(frozen=True, slots=True)
class Context:
    prompt: str
    prompt_file: Path
    batch_id: str
    workdir: Path
    run_id: str
    stream: int
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))  # fresh for every try
    resume: bool = False  # continue the agent's session ``session_id`` (an interrupted batch, resumed)


@dataclass(frozen=True, slots=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    parse: Parser
    secrets: tuple[str, ...] = ()  # values to mask in everything distpar writes
    notes: tuple[str, ...] = ()  # limits the preset cannot apply, for the batch log


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    executable: str  # the program's name on PATH (what `distpar agents` and the SSH host check look for)
    description: str
    build: Callable[[AgentConfig, Context], list[str]]  # the arguments after the command
    parse: Parser
    key_vars: tuple[str, ...] = ()  # API key variables the CLI reads (documentation, `distpar agents`)
    supports: frozenset[str] = frozenset()  # of "model", "max_turns", "max_budget_usd", "stream"
    reports_cost: bool = False
    env: Callable[[], dict[str, str]] = dict
    unset: tuple[str, ...] = ()
    command: tuple[str, ...] = ()  # default argv prefix; () means (executable,)

    def default_command(self) -> list[str]:
        return list(self.command or (self.executable,))


# --- classification shared by the presets --------------------------------------------------------------

# Subscription or account limits: waiting minutes does not help, so these are never retried.
USAGE_LIMIT = re.compile(
    r"usage limit reached"  # Claude Code 1.0.x: "Claude AI usage limit reached|<epoch>"
    r"|you(?:'|\u2019)ve hit your (?:usage )?limit|you have hit your (?:usage )?limit"  # Claude 2.1.x, Codex
    r"|usage_limit_reached|quota exceeded|exhausted your daily quota|terminalquotaerror"  # Codex, Gemini
    r"|exceeded your current quota|insufficient_quota|credit balance is too low",  # OpenAI / Anthropic via aider
    re.IGNORECASE,
)
# Rate limits and server-side failures: worth another try after a pause.
TRANSIENT = re.compile(
    r"\b(?:429|500|502|503|504|529)\b|rate.?limit|overloaded|too many requests|resource_exhausted"
    r"|retryablequotaerror|stream disconnected|high demand|service unavailable|internal server error"
    r"|servers are down|temporarily unavailable|api error",
    re.IGNORECASE,
)


def classify_text(text: str) -> tuple[str, bool]:
    """(result class, transient) of an error message."""
    if USAGE_LIMIT.search(text):
        return "usage_limit", False
    if TRANSIENT.search(text):
        return "api_error", True
    return "error", False


def _crash(exit_code: int | None, stderr: str, what: str = "no result") -> AgentOutcome:
    # No structured result: the CLI died, was killed, or never started properly. The worker retries it only
    # when the agent changed nothing (see worker._run_batch).
    tail = _last_line(stderr)
    return AgentOutcome("crash", False, f"{what} (exit code {exit_code})" + (f": {tail}" if tail else ""),
                        transient=True)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][-500:] if lines else ""


# --- claude ----------------------------------------------------------------------------------------------

def _claude_args(cfg: AgentConfig, ctx: Context) -> list[str]:
    # Claude Code headless mode, https://docs.anthropic.com/en/docs/claude-code/sdk/sdk-headless and
    # https://docs.anthropic.com/en/docs/claude-code/cli-reference: `-p` (print), `--output-format json`
    # (`stream-json` only together with `--verbose`, else the CLI exits 1), `--permission-mode
    # bypassPermissions` (edit and run commands without asking; there is no --headless flag), `--model`,
    # `--max-turns`, `--max-budget-usd` (print mode only, checked between turns). `--session-id=<uuid>` in the
    # `=` form, as the official claude-agent-sdk-python (_build_command) emits it, so that a later
    # `--resume=<id>` of the same batch parses the same way. The prompt comes after `--`, as the SDK does, so a
    # prompt that starts with '-' is never read as an option.
    args = ["-p", "--output-format", "stream-json" if cfg.stream else "json"]
    if cfg.stream:
        args.append("--verbose")
    args += ["--permission-mode", "bypassPermissions"]
    if cfg.model:
        args += ["--model", cfg.model]
    if cfg.max_turns:
        args += ["--max-turns", str(cfg.max_turns)]
    if cfg.max_budget_usd:
        args += ["--max-budget-usd", f"{cfg.max_budget_usd:g}"]
    args.append(f"--resume={ctx.session_id}" if ctx.resume else f"--session-id={ctx.session_id}")
    return [*args, *cfg.extra_args, "--", ctx.prompt]


def _claude_env() -> dict[str, str]:
    # As root, bypassPermissions refuses to start ("cannot be used with root/sudo privileges") unless
    # IS_SANDBOX=1 (https://github.com/anthropics/claude-code/issues/3490). distpar runs agents in worktrees,
    # usually in containers when root; README "Agents" documents this.
    return {"IS_SANDBOX": "1"} if hasattr(os, "geteuid") and os.geteuid() == 0 else {}


# Startup failures that another try cannot fix.
_CLAUDE_FATAL = re.compile(
    r"cannot be launched inside another claude code session|cannot be used with root/sudo|requires --verbose"
    r"|unknown option|error: option|invalid api key|please run /login|no conversation found",
    re.IGNORECASE,
)


def parse_claude(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    """Classify a Claude Code ``json`` / ``stream-json`` result on ``subtype`` (not the exit code, and not
    ``is_error`` for a budget stop: a run stopped by --max-budget-usd has been seen with is_error false)."""
    data = _claude_result(stdout)
    if data is None:
        both = stdout + "\n" + stderr
        if USAGE_LIMIT.search(both):  # 1.0.x in text mode prints only "Claude AI usage limit reached|<epoch>"
            return AgentOutcome("usage_limit", False, _last_line(both))
        if _CLAUDE_FATAL.search(stderr):
            return AgentOutcome("error", False, _last_line(stderr))
        return _crash(exit_code, stderr, "no JSON result on stdout")
    usage = data.get("usage") or {}
    model = next(iter(data.get("modelUsage") or {}), None)
    subtype = str(data.get("subtype", ""))
    errors = [str(e) for e in data.get("errors") or [] if e]
    text = "\n".join([str(data.get("result", "") or data.get("error", "") or ""), *errors]).strip()
    is_error = data.get("is_error") is True
    cls, transient = "success", False
    if subtype == "error_max_turns" or data.get("terminal_reason") == "max_turns":
        cls, text = "max_turns", text or "reached the turn limit (--max-turns)"
    elif subtype == "error_max_budget_usd" or "budget" in subtype:
        cls, text = "budget_exceeded", text or "reached the batch budget (--max-budget-usd)"
    elif subtype in ("", "success") and not is_error and exit_code in (0, None):
        pass
    else:
        # A failed API call arrives as subtype "success" with is_error true, the text in `result`, and on
        # newer CLIs `api_error_status`.
        status = data.get("api_error_status")
        if USAGE_LIMIT.search(text) or (is_error and _claude_rejected(stdout)):
            cls = "usage_limit"
        elif (isinstance(status, int) and (status == 429 or status >= 500)) or TRANSIENT.search(text):
            cls, transient = "api_error", True
        else:
            cls = "error"
            text = text or f"{subtype or 'error'} (exit code {exit_code})"
    return AgentOutcome(
        result_class=cls,
        ok=cls == "success",
        message=text[-2000:],
        cost_usd=_num(data.get("total_cost_usd", data.get("cost_usd"))),
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_creation_tokens=_int(usage.get("cache_creation_input_tokens")),
        turns=_int(data.get("num_turns")),
        duration_api_ms=_int(data.get("duration_api_ms")),
        session_id=data.get("session_id"),
        model=model,
        transient=transient,
    )


def _claude_result(stdout: str) -> dict[str, Any] | None:
    """The final ``result`` object: the whole of stdout (json) or its last result line (stream-json)."""
    whole = _json_dict(stdout.strip())
    if whole is not None and whole.get("type", "result") == "result":
        return whole
    for obj in _json_lines(stdout, reverse=True):
        if obj.get("type") == "result":
            return obj
    return None


def _claude_rejected(stdout: str) -> bool:
    # stream-json: {"type":"rate_limit_event","rate_limit_info":{"status":"rejected","rateLimitType":...}}
    return any(o.get("type") == "rate_limit_event" and (o.get("rate_limit_info") or {}).get("status") == "rejected"
               for o in _json_lines(stdout))


# --- codex -----------------------------------------------------------------------------------------------

def _codex_args(cfg: AgentConfig, ctx: Context) -> list[str]:
    # `codex exec [OPTIONS] [PROMPT]`, https://developers.openai.com/codex/noninteractive and openai/codex
    # docs/exec.md, codex-rs/exec/src/cli.rs: `--json` prints JSONL events; `--sandbox workspace-write` lets it
    # edit the worktree (the exec default is read-only; `--full-auto` is deprecated for this); a worktree is a
    # git repository but `--skip-git-repo-check` keeps exec from refusing one it does not trust; `-m` the
    # model. The prompt is positional (`-p` is a config *profile* in codex), after `--`. stdin is /dev/null
    # (process.run_process): exec reads piped stdin and would wait for its end. No turn or budget limit exists.
    args = ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check"]
    if cfg.model:
        args += ["-m", cfg.model]
    return [*args, *cfg.extra_args, "--", ctx.prompt]


def parse_codex(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    """Classify ``codex exec --json`` JSONL events (codex-rs/exec/src/exec_events.rs)."""
    thread_id = message = failed = None
    usage: dict[str, Any] = {}
    turns = 0
    errors: list[str] = []
    for ev in _json_lines(stdout):
        kind = ev.get("type")
        if kind == "thread.started":
            thread_id = ev.get("thread_id")
        elif kind == "turn.completed":
            turns += 1
            # The usage of turn.completed is the thread's running total (event_processor_with_jsonl_output.rs,
            # usage_from_last_total); exec runs one turn, so its last value is the sum over the run.
            usage = ev.get("usage") or {}
        elif kind == "turn.failed":
            failed = str((ev.get("error") or {}).get("message") or "turn failed")
        elif kind == "error":  # emitted also for errors codex retries itself; fatal only if nothing follows
            errors.append(str(ev.get("message", "")))
        elif kind == "item.completed":
            item = ev.get("item") or {}
            if item.get("type") == "agent_message":
                message = str(item.get("text", ""))
    common: dict[str, Any] = {
        "input_tokens": _int(usage.get("input_tokens")),
        "output_tokens": _int(usage.get("output_tokens")),
        "cache_read_tokens": _int(usage.get("cached_input_tokens")),
        "turns": turns or None,
        "session_id": thread_id,
    }
    if not turns and failed is None and not errors:  # it died before the turn ended (or never started one)
        both = stdout + "\n" + stderr
        if USAGE_LIMIT.search(both):  # a usage limit can end exec before any event, with only stderr text
            return AgentOutcome("usage_limit", False, _last_line(both))
        if exit_code == 2 or re.search(r"^error: ", stderr, re.MULTILINE):  # clap: bad arguments
            return AgentOutcome("error", False, _last_line(stderr))
        return _crash(exit_code, stderr, "no JSON events on stdout")
    failure = failed if failed is not None else (errors[-1] if errors and exit_code not in (0, None) else None)
    if failure is not None:
        cls, transient = classify_text("\n".join([failure, *errors[-3:]]))
        return AgentOutcome(cls, False, failure[-2000:], transient=transient, **common)
    if turns and exit_code in (0, None):
        return AgentOutcome("success", True, (message or "")[-2000:], **common)
    if exit_code not in (0, None):
        return AgentOutcome("error", False, f"exit code {exit_code}: {_last_line(stderr)}".rstrip(": "), **common)
    return _crash(exit_code, stderr, "no turn.completed event")


# --- gemini ----------------------------------------------------------------------------------------------

def _gemini_args(cfg: AgentConfig, ctx: Context) -> list[str]:
    # Gemini CLI headless mode, google-gemini/gemini-cli docs/cli/headless.md and docs/cli/cli-reference.md
    # (https://geminicli.com/docs/cli/headless/): `-p PROMPT` (always pass it: a positional prompt on a TTY
    # starts interactive mode), `--output-format json` (or `stream-json`), `--approval-mode=yolo` (`-y/--yolo`
    # is deprecated) so tools run without asking, `-m` the model. The turn limit is `maxSessionTurns` in
    # settings.json (no flag); exceeding it exits 53. A prompt that starts with '-' goes in the `--prompt=`
    # form, which yargs cannot mistake for an option.
    prompt = ["-p", ctx.prompt] if not ctx.prompt.startswith("-") else [f"--prompt={ctx.prompt}"]
    args = [*prompt, "--output-format", "stream-json" if cfg.stream else "json", "--approval-mode=yolo"]
    if cfg.model:
        args += ["-m", cfg.model]
    return [*args, *cfg.extra_args]


# Exit codes of packages/core/src/utils/errors.ts (headless.md): 41 auth, 42 bad input, 44 sandbox, 52 config,
# 53 turn limit, 54 tool execution, 130 cancelled. All but 53 are permanent.
_GEMINI_EXIT = {41: "authentication failed", 42: "bad input", 44: "sandbox error", 52: "configuration error",
                54: "tool execution failed", 130: "cancelled"}


def parse_gemini(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    """Classify ``gemini --output-format json``: the result object on stdout, or on failure the error object
    ``{"error": {"type", "message", "code"}}`` on stderr and a specific exit code."""
    data = _json_dict(stdout.strip())
    events = [] if data is not None else _json_lines(stdout)
    result_ev = next((e for e in reversed(events) if e.get("type") == "result"), None)  # stream-json
    err_obj: dict[str, Any] = {}
    for src in (data or {}, result_ev or {}, _json_dict(stderr.strip()) or {},
                *_json_lines(stderr, reverse=True)):
        if isinstance(src.get("error"), dict):
            err_obj = src["error"]
            break
    common: dict[str, Any] = {"session_id": (data or {}).get("session_id") or next(
        (e.get("session_id") for e in events if e.get("type") == "init"), None)}
    models = ((data or {}).get("stats") or {}).get("models") or {}
    if models:
        tok = [m.get("tokens") or {} for m in models.values()]
        # tokens.input is the uncached part of tokens.prompt (uiTelemetry.ts); thoughts are billed as output.
        common.update(
            input_tokens=sum(_int(t.get("input")) or 0 for t in tok),
            output_tokens=sum((_int(t.get("candidates")) or 0) + (_int(t.get("thoughts")) or 0) for t in tok),
            cache_read_tokens=sum(_int(t.get("cached")) or 0 for t in tok),
            model=next(iter(models)),
        )
    elif result_ev and isinstance(result_ev.get("stats"), dict):
        st = result_ev["stats"]
        common.update(input_tokens=_int(st.get("input_tokens")), output_tokens=_int(st.get("output_tokens")),
                      cache_read_tokens=_int(st.get("cached")))
    etype, emsg = str(err_obj.get("type", "")), str(err_obj.get("message", ""))
    if exit_code == 53 or etype == "FatalTurnLimitedError":
        return AgentOutcome("max_turns", False, emsg or "reached maxSessionTurns", **common)
    if exit_code in (0, None) and not err_obj and (data is not None or result_ev is not None):
        if result_ev is not None and result_ev.get("status") == "error":
            return AgentOutcome("error", False, str(result_ev.get("error") or "error"), **common)
        return AgentOutcome("success", True, str((data or {}).get("response", ""))[-2000:], **common)
    if exit_code in _GEMINI_EXIT:
        return AgentOutcome("error", False, emsg or _GEMINI_EXIT[exit_code], **common)
    if err_obj:
        if etype == "TerminalQuotaError":
            return AgentOutcome("usage_limit", False, emsg, **common)
        if etype == "RetryableQuotaError":
            return AgentOutcome("api_error", False, emsg, transient=True, **common)
        cls, transient = classify_text(f"{etype}: {emsg}")
        return AgentOutcome(cls, False, (emsg or etype)[-2000:], transient=transient, **common)
    return _crash(exit_code, stderr, "no JSON result")


# --- aider -----------------------------------------------------------------------------------------------

def _aider_args(cfg: AgentConfig, ctx: Context) -> list[str]:
    # aider scripting, https://aider.chat/docs/scripting.html and https://aider.chat/docs/config/options.html:
    # `--message-file F` sends one message and exits; `--yes-always` answers every confirmation; `--no-stream`
    # and `--no-pretty` give plain, complete output to parse; `--no-check-update`, `--no-show-model-warnings` and
    # `--analytics-disable` keep it from asking or phoning home; `--model M`. Aider commits its own edits
    # (--auto-commits is on by default): the worker records every commit since the batch started. No turn or
    # budget limit and no JSON output exist; cost and tokens come from its "Tokens: ... Cost: ..." lines.
    args = ["--message-file", str(ctx.prompt_file), "--yes-always", "--no-stream", "--no-pretty",
            "--no-check-update", "--no-show-model-warnings", "--analytics-disable"]
    if cfg.model:
        args += ["--model", cfg.model]
    return [*args, *cfg.extra_args]


# aider/coders/base_coder.py: "Tokens: 2.1k sent, 150 received. Cost: $0.0012 message, $0.0034 session."
# (older releases: "... $0.01 request, $0.02 session."; with caching ", N cache write, N cache hit" and the
# cost part on its own line).
_AIDER_TOKENS = re.compile(r"Tokens: ([\d.,]+[kKmM]?) sent, (?:([\d.,]+[kKmM]?) cache write, )?"
                           r"(?:([\d.,]+[kKmM]?) cache hit, )?([\d.,]+[kKmM]?) received")
_AIDER_COST = re.compile(r"Cost: \$([\d.]+) (?:message|request), \$([\d.]+) session")
# aider/exceptions.py: the hints it prints for litellm errors; exit status stays 0 after --message.
_AIDER_FAILURES = re.compile(
    r"The API provider has rate limited you|servers are down or overloaded|not able to authenticate you"
    r"|exceeded your current quota|insufficient_quota|credit balance is too low|has hit a token limit"
    r"|context window|Message file not found|litellm\.\w+Error",
    re.IGNORECASE,
)


def parse_aider(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    """Classify aider's plain output: it reports no structured result and exits 0 even when the LLM call failed,
    so a failure is an error text after which no reply ("Tokens: ...") followed."""
    tokens = list(_AIDER_TOKENS.finditer(stdout))
    costs = list(_AIDER_COST.finditer(stdout))
    common: dict[str, Any] = {
        "input_tokens": sum(_count(m.group(1)) for m in tokens) if tokens else None,
        "output_tokens": sum(_count(m.group(4)) for m in tokens) if tokens else None,
        "cache_creation_tokens": sum(_count(m.group(2)) for m in tokens if m.group(2)) if tokens else None,
        "cache_read_tokens": sum(_count(m.group(3)) for m in tokens if m.group(3)) if tokens else None,
        "cost_usd": float(costs[-1].group(2)) if costs else None,  # the session total of this invocation
        "turns": len(tokens) or None,
    }
    if exit_code is not None and exit_code < 0:
        return _crash(exit_code, stderr, "killed by a signal")
    # An error is final when no reply came after it (aider retries rate limits itself and then goes on);
    # errors only on stderr count when there was no reply at all.
    last_reply = tokens[-1].end() if tokens else -1
    final = [ln for m in _AIDER_FAILURES.finditer(stdout) if m.start() > last_reply
             for ln in [_line_at(stdout, m.start())]]
    if not tokens:
        final += [_line_at(stderr, m.start()) for m in _AIDER_FAILURES.finditer(stderr)]
    if final:
        context = "\n".join(dict.fromkeys(final))
        cls, transient = classify_text(context)
        return AgentOutcome(cls, False, context[-2000:], transient=transient, **common)
    if exit_code not in (0, None):
        if "Traceback (most recent call last)" in stderr:
            return _crash(exit_code, stderr, "aider crashed")
        return AgentOutcome("error", False, f"exit code {exit_code}: {_last_line(stderr or stdout)}", **common)
    return AgentOutcome("success", True, _last_line(stdout), **common)


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start : end if end >= 0 else len(text)].strip()


def _count(text: str) -> int:
    """aider's format_tokens: 950, 1.2k, 12k, 1.5M (commas in older releases)."""
    text = text.replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    return round(float(text[:-1] if scale > 1 else text) * scale)


# --- templates -------------------------------------------------------------------------------------------

def parse_exit_code(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    """For templates: a claude-shaped JSON result if there is one, else the exit code."""
    if _claude_result(stdout) is not None:
        return parse_claude(stdout, stderr, exit_code)
    if exit_code == 0:
        return AgentOutcome("success", True)
    if exit_code is not None and exit_code < 0:
        return _crash(exit_code, stderr, "killed by a signal")
    return AgentOutcome("error", False, f"exit code {exit_code}" + (f": {_last_line(stderr)}" if stderr else ""))


# --- JSON helpers ----------------------------------------------------------------------------------------

def _json_dict(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _json_lines(text: str, reverse: bool = False) -> list[dict[str, Any]]:
    lines = text.splitlines()
    out = []
    for line in reversed(lines) if reverse else lines:
        obj = _json_dict(line.strip())
        if obj is not None:
            out.append(obj)
    return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


# --- the presets -----------------------------------------------------------------------------------------

PRESETS: dict[str, Preset] = {
    "claude": Preset(
        "claude", "claude", "Claude Code, headless (claude -p, JSON result)", _claude_args, parse_claude,
        key_vars=("ANTHROPIC_API_KEY",),  # https://code.claude.com/docs/en/env-vars ; else its saved login
        supports=frozenset({"model", "max_turns", "max_budget_usd", "stream", "resume"}), reports_cost=True,
        env=_claude_env, unset=("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"),
    ),
    "codex": Preset(
        "codex", "codex", "OpenAI Codex CLI (codex exec --json, JSONL events)", _codex_args, parse_codex,
        # CODEX_API_KEY is read by `codex exec` only (docs/exec.md); OPENAI_API_KEY after `codex login`.
        key_vars=("CODEX_API_KEY", "OPENAI_API_KEY"), supports=frozenset({"model"}),
    ),
    "gemini": Preset(
        "gemini", "gemini", "Gemini CLI, headless (gemini -p, JSON result)", _gemini_args, parse_gemini,
        key_vars=("GEMINI_API_KEY", "GOOGLE_API_KEY"),  # https://geminicli.com/docs/get-started/authentication
        supports=frozenset({"model", "stream"}),
    ),
    "aider": Preset(
        "aider", "aider", "aider (--message-file, commits its own edits, text output)", _aider_args, parse_aider,
        # https://aider.chat/docs/llms.html: the provider's own variable (litellm names).
        key_vars=("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY",
                  "OPENROUTER_API_KEY", "GROQ_API_KEY", "MISTRAL_API_KEY", "XAI_API_KEY"),
        supports=frozenset({"model"}), reports_cost=True,
    ),
    "fake": Preset(
        "fake", "distpar-fake-agent",
        "distpar's bundled fake agent (claude-like CLI, for demos and tests; needs no API key)",
        _claude_args, parse_claude,
        supports=frozenset({"model", "max_turns", "max_budget_usd", "stream", "resume"}),
        reports_cost=True, env=_claude_env, unset=("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"),
        command=(sys.executable, "-m", "distpar.fake_agent"),
    ),
}

# Every preset's key variables: their values are masked whichever agent runs (an agent may print any of them).
KEY_VARS: tuple[str, ...] = tuple(dict.fromkeys(v for p in PRESETS.values() for v in p.key_vars))
_LIMITS = (("model", "--model"), ("max_turns", "--max-turns"), ("max_budget_usd", "--max-budget-usd"))


def can_resume(cfg: AgentConfig) -> bool:
    """Whether the agent can continue an interrupted session it was started with (``--session-id``)."""
    preset = PRESETS.get(cfg.preset)
    return preset is not None and "resume" in preset.supports


def unsupported(cfg: AgentConfig) -> list[str]:
    """Options set in ``cfg`` that its preset cannot apply, as sentences."""
    preset = PRESETS.get(cfg.preset)
    if preset is None:
        return []
    out = [f"the {preset.name} agent has no {flag}: {getattr(cfg, attr)} is not applied"
           for attr, flag in _LIMITS if getattr(cfg, attr) and attr not in preset.supports]
    if cfg.stream and "stream" not in preset.supports:
        out.append(f"the {preset.name} agent has no JSON event stream option: output is logged as it comes")
    return out


def command(cfg: AgentConfig, env: Mapping[str, str]) -> list[str]:
    """The argv prefix that runs ``cfg``'s preset on this machine (see the module docstring)."""
    preset = PRESETS[cfg.preset]
    override = cfg.executable or env.get(BIN_VAR.format(preset.name.upper()))
    if override:
        argv = shlex.split(override)
        if argv:
            return argv
    return preset.default_command()


def secret_values(env: Mapping[str, str], forwarded: Mapping[str, str]) -> tuple[str, ...]:
    """Values to mask: the forwarded variables and every known API key variable that is set."""
    values = [*forwarded.values(), *(env[k] for k in KEY_VARS if env.get(k))]
    return tuple(sorted({v for v in values if len(v) >= 4}, key=len, reverse=True))


def mask(text: str, secrets: Iterable[str]) -> str:
    for value in secrets:
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def agent_config(value: str | None, base: AgentConfig) -> AgentConfig:
    """A plan's or a flag's agent value (preset name or command template) on top of the run's options."""
    if not value:
        return base
    if value in PRESETS:
        return replace(base, preset=value, template=None)
    if " " in value.strip() or "{" in value:
        validate_template(value)
        return replace(base, preset="template", template=value, extra_args=(), executable=None)
    raise UsageError(
        f"unknown agent {value!r}: use a preset ({', '.join(PRESETS)}) or a command template such as "
        "'mytool --prompt-file {prompt_file}'"
    )


def check_plan_agents(plan: Plan, base: AgentConfig, budget_usd: float | None = None) -> list[str]:
    """Refuse a plan whose per-batch ``agent`` is neither a preset nor a valid template, pointing at it.
    Returns warnings (the CLI prints them): limits an agent cannot apply, a run budget an agent cannot count."""
    configs = {base.preset: base}
    for i, b in enumerate(plan.batches):
        if b.agent:
            try:
                cfg = agent_config(b.agent, base)
            except UsageError as exc:
                raise PlanError(f"batches[{i}].agent: {exc.message}", where=f"{plan.source}:{b.line}") from None
            configs.setdefault(cfg.preset, cfg)
    warnings = [w for cfg in configs.values() for w in unsupported(cfg)]
    if budget_usd is not None:
        warnings += [f"--budget-usd: the {name} agent reports no cost, so its batches do not count against it"
                     for name, cfg in configs.items()
                     if name == "template" or (name in PRESETS and not PRESETS[name].reports_cost)]
    return warnings


def validate_template(template: str) -> list[str]:
    try:
        argv = shlex.split(template)
    except ValueError as exc:
        raise UsageError(f"agent command template cannot be split into arguments: {exc}") from None
    if not argv:
        raise UsageError("agent command template is empty")
    unknown = {m for m in re.findall(r"\{(\w+)\}", template) if m not in PLACEHOLDERS}
    if unknown:
        raise UsageError(
            f"agent command template has unknown placeholder(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
        )
    return argv


def invocation(cfg: AgentConfig, ctx: Context, base_env: Mapping[str, str], extra_env: Mapping[str, str],
               forwarded: Mapping[str, str] | None = None) -> Invocation:
    """The argv, environment, result parser and secrets of one agent run. ``forwarded``: the ``--forward-env``
    variables (part of ``extra_env``), whose values are masked."""
    notes: tuple[str, ...] = ()
    if cfg.preset == "template":
        assert cfg.template is not None
        values = {
            "prompt": ctx.prompt,
            "prompt_file": str(ctx.prompt_file),
            "batch_id": ctx.batch_id,
            "workdir": str(ctx.workdir),
            "run_id": ctx.run_id,
            "stream": str(ctx.stream + 1),
        }
        # Split first, substitute after: a prompt full of quotes and semicolons stays one argument.
        argv = [_PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in validate_template(cfg.template)]
        parse: Parser = parse_exit_code
        preset_env: dict[str, str] = {}
        unset: tuple[str, ...] = ()
    else:
        preset = PRESETS.get(cfg.preset)
        if preset is None:
            raise UsageError(f"unknown agent preset {cfg.preset!r} (known: {', '.join(PRESETS)})")
        argv = [*command(cfg, base_env), *preset.build(cfg, ctx)]
        parse, preset_env, unset = preset.parse, preset.env(), preset.unset
        notes = tuple(unsupported(cfg))
    env = {k: v for k, v in base_env.items() if k not in unset}
    env.update(preset_env)
    env.update(extra_env)
    env.update(
        {
            GUARD_VAR: "1",
            "DISTPAR_RUN_ID": ctx.run_id,
            "DISTPAR_BATCH_ID": ctx.batch_id,
            "DISTPAR_STREAM": str(ctx.stream + 1),
            "DISTPAR_WORKTREE": str(ctx.workdir),
            "DISTPAR_PROMPT_FILE": str(ctx.prompt_file),
        }
    )
    return Invocation(argv, env, parse, secret_values(env, forwarded or {}), notes)


# --- `distpar agents` ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    description: str
    command: list[str]
    path: str | None  # where the command was found, None when it is not installed
    version: str | None
    error: str
    key_vars: tuple[str, ...]
    keys_set: tuple[str, ...]  # names only, never values

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def probe(name: str, env: Mapping[str, str] | None = None, timeout: float = VERSION_TIMEOUT) -> Probe:
    """Whether preset ``name``'s CLI is installed here, and its ``--version`` (bounded by ``timeout``)."""
    import shutil

    env = dict(os.environ if env is None else env)
    preset = PRESETS[name]
    argv = command(AgentConfig(preset=name), env)
    path = shutil.which(argv[0], path=env.get("PATH"))
    keys_set = tuple(k for k in preset.key_vars if env.get(k))
    version, error = None, ""
    if path is None:
        error = f"{argv[0]} not found on PATH"
    else:
        for k in preset.unset:
            env.pop(k, None)
        try:
            proc = subprocess.Popen([path, *argv[1:], "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:
            error = f"cannot run {argv[0]}: {exc.strerror or exc}"
        else:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid)
                proc.communicate()
                error = f"{argv[0]} --version did not answer within {timeout:g}s"
            else:
                lines = [ln.strip() for ln in out.decode("utf-8", "replace").splitlines() if ln.strip()]
                first = lines[0][:200] if lines else ""
                if proc.returncode == 0 and first:
                    version = first
                else:
                    error = f"{argv[0]} --version exited with {proc.returncode}" + (f": {first}" if first else "")
            finally:
                _killpg(proc.pid)  # nothing it started outlives the probe
    return Probe(name, preset.description, argv, path, version, error, preset.key_vars, keys_set)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
