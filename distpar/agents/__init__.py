"""Agent presets and templates: a batch -> the argv and environment of one headless agent invocation, and the
agent's output -> an ``AgentOutcome``.

The prompt is always one argv element (or a file): nothing here ever goes through a shell. Each preset's argv
follows its CLI's documentation (cited next to its builder); ``tests/agents/test_presets.py`` checks them.

Which program runs a preset: ``AgentConfig.executable`` if set, else ``$DISTPAR_AGENT_<PRESET>_BIN`` on the
machine that runs the agent, else the preset's own command (``claude``, ``codex``, ``gemini``, ``aider``). Both
overrides are split like a shell would (no shell runs them), so ``python -m distpar.testing.fake_agent --emulate codex``
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

from distpar.core.errors import PlanError, UsageError
from distpar.core.model import AgentConfig, AgentOutcome
from distpar.core.plan import Plan

log = logging.getLogger(__name__)

GUARD_VAR = "DISTPAR_SUBPROCESS"
# Set for agents too, like GUARD_VAR: tools that refuse to nest inside an agent look for it (issue 15).
GUARD_VARS = (GUARD_VAR, "CAST_SUBPROCESS")
ENTRY_POINT_GROUP = "distpar.agents"
# One argv element holds at most MAX_ARG_STRLEN (128 KiB on Linux) bytes: a longer prompt goes on stdin (claude,
# codex, gemini) or in a file (aider --message-file, a template's {prompt_file}).
ARGV_PROMPT_MAX = 100_000
# "stream": the old name of "worker", deprecated (existing templates use it)
PLACEHOLDERS = ("prompt", "prompt_file", "batch_id", "workdir", "run_id", "worker", "stream")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
BIN_VAR = "DISTPAR_AGENT_{}_BIN"
VERSION_TIMEOUT = 20.0  # node CLIs start slowly on a loaded machine (gemini: several seconds)

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
    worker: int  # 0-based
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))  # fresh for every try
    resume: bool = False  # continue the agent's session ``session_id`` (an interrupted batch, resumed)
    subagent_type: str | None = None  # the plan's agents[].subagent_type (claude: --agent NAME when defined)

    @property
    def prompt_on_stdin(self) -> bool:
        """Whether the prompt is too long for one argument (it then goes on stdin, from ``prompt_file``)."""
        return len(self.prompt.encode()) > ARGV_PROMPT_MAX

    def fresh_session(self) -> Context:
        """This context in a new session: what to run after the agent answered that ``--resume``'s session
        does not exist (``AgentOutcome.session_missing``). The restored work stays in the worktree."""
        return replace(self, session_id=str(uuid.uuid4()), resume=False)


@dataclass(frozen=True, slots=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    parse: Parser
    secrets: tuple[str, ...] = ()  # values to mask in everything distpar writes
    notes: tuple[str, ...] = ()  # limits the preset cannot apply, for the batch log
    stdin: Path | None = None  # a file the agent reads on stdin (a prompt too long for argv); else /dev/null
    refused: str = ""  # why this agent must not be started at all (then nothing runs; the batch fails)
    stall_timeout: float | None = None  # stop the agent after this many seconds without output (``stalled``)


@dataclass(frozen=True)
class Preset:
    """An agent CLI: how to call it and how to read what it printed. A plugin is an instance (or a subclass
    that overrides ``argv`` / ``refuse``) registered under the ``distpar.agents`` entry-point group, or, for a
    preset defined in the user's own code, passed by value (``custom_agent``)."""

    name: str
    executable: str  # the program's name on PATH (what `distpar agents` and the SSH host check look for)
    description: str
    build: Callable[[AgentConfig, Context], list[str]]  # the arguments after the command
    parse: Parser
    key_vars: tuple[str, ...] = ()  # API key variables the CLI reads (documentation, `distpar agents`)
    supports: frozenset[str] = frozenset()  # of "model", "max_turns", "max_budget_usd", "stream", "resume"
    reports_cost: bool = False
    env: Callable[[], dict[str, str]] = dict
    unset: tuple[str, ...] = ()
    command: tuple[str, ...] = ()  # default argv prefix; () means (executable,)
    prompt_stdin: bool = False  # reads the prompt on stdin when ``build`` leaves it out (Context.prompt_on_stdin)
    prompt_in_file: bool = False  # always reads the prompt from ``Context.prompt_file`` (any size)
    check: Callable[[AgentConfig, Mapping[str, str]], str] | None = None  # why not to start it ("" = fine)

    def default_command(self) -> list[str]:
        return list(self.command or (self.executable,))

    def argv(self, cfg: AgentConfig, ctx: Context, env: Mapping[str, str]) -> list[str]:
        return [*command(cfg, env), *self.build(cfg, ctx)]

    def refuse(self, cfg: AgentConfig, ctx: Context, env: Mapping[str, str]) -> str:
        if "\0" in ctx.prompt:
            return "the prompt contains a NUL byte, which no argument or agent can be given"
        if ctx.prompt_on_stdin and not (self.prompt_stdin or self.prompt_in_file):
            return (f"the prompt ({len(ctx.prompt.encode())} bytes) is too long for one argument and the "
                    f"{self.name} agent cannot read it on stdin")
        return self.check(cfg, env) if self.check else ""


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
    r"|servers are down|temporarily unavailable|api error"
    # the connection to the model server broke (gemini: "fetch failed"; node: ECONNRESET; litellm/codex)
    r"|fetch failed|econnreset|econnrefused|socket hang up|connection (?:reset|refused|dropped|closed|error)"
    r"|apiconnectionerror|stream error",
    re.IGNORECASE,
)


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor sequences (gemini colours its errors even on a pipe)."""
    return _ANSI.sub("", text)


def classify_status(status: int) -> tuple[str, bool]:
    """(result class, transient) of a provider's HTTP status: 429, 529 and 5xx are worth another try; any other
    4xx (bad request, authentication, permission) is not."""
    if status == 429 or status >= 500:
        return "api_error", True
    return "error", False


def _usage_reset(text: str) -> float | None:
    """The epoch in "Claude AI usage limit reached|<epoch>"."""
    m = re.search(r"usage limit reached\|(\d{9,11})", text, re.IGNORECASE)
    return float(m.group(1)) if m else None


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
    lines = [ln.strip() for ln in strip_ansi(text).strip().splitlines() if ln.strip()]
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
    agent = _claude_agent(ctx)
    if agent:
        args += ["--agent", agent]
    # A prompt too long for one argument goes on stdin: `claude -p` reads it there when no prompt is given.
    return [*args, *cfg.extra_args, *([] if ctx.prompt_on_stdin else ["--", ctx.prompt])]


_AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _claude_agent(ctx: Context) -> str | None:
    """The plan's subagent_type when Claude Code has an agent of that name: ``.claude/agents/NAME.md`` in the
    worktree or in ``~/.claude/agents`` (``claude --help``: ``--agent <agent>``). ``main`` and the built-in
    ``general-purpose`` are the default agent, so no flag."""
    name = ctx.subagent_type
    if not name or name in ("main", "general-purpose") or not _AGENT_NAME.match(name):
        return None
    for root in (ctx.workdir, Path.home()):
        if (root / ".claude" / "agents" / f"{name}.md").is_file():
            return name
    return None


def subagent_how(cfg: AgentConfig, repo_root: str | Path | None) -> Callable[[str], str]:
    """For ``distpar plan`` / ``--dry-run``: how each subagent_type will reach the agent, by the same rule the
    claude preset applies in a worktree (a worktree has the repository's ``.claude/agents``)."""
    def how(name: str) -> str:
        if name in ("main", "general-purpose"):
            return "the agent's default agent (no flag)"
        if cfg.preset != "claude" or cfg.preset_pickle:
            return f"stays in the prompt (only claude selects an agent by name; this run uses {cfg.preset})"
        ctx = Context("", Path(), "", Path(repo_root or "."), "", 0, subagent_type=name)
        if _claude_agent(ctx):
            return f"claude --agent {name} (defined in .claude/agents/{name}.md)"
        return f"stays in the prompt (no .claude/agents/{name}.md for the repository or the user)"

    return how


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
    limit = _claude_rate_limit(stdout)
    if data is None:
        both = stdout + "\n" + stderr
        if USAGE_LIMIT.search(both):  # 1.0.x in text mode prints only "Claude AI usage limit reached|<epoch>"
            return AgentOutcome("usage_limit", False, _last_line(both), rate_limited=True,
                                resets_at=_usage_reset(both) or limit.get("resets_at"))
        if _NO_SESSION.search(both):
            # --resume of a session Claude Code never saved (interrupted in its first second): the worker runs
            # the same try again in a fresh session (Context.fresh_session), the restored work in the tree.
            return AgentOutcome("error", False, _last_line(_NO_SESSION.search(both).group(0)),  # type: ignore[union-attr]
                                session_missing=True)
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
        # A failed API call arrives as subtype "success" with is_error true, the text in `result` ("API Error:
        # ..." whatever the status), and on 2.x `api_error_status`, which decides: 400/401/403 are permanent,
        # 429/529/5xx transient. Older CLIs give only the text, with the status after "API Error:".
        status = data.get("api_error_status")
        if not isinstance(status, int):
            m = _API_STATUS.search(text)
            status = int(m.group(1)) if m else None
        if USAGE_LIMIT.search(text) or (is_error and limit.get("rejected")):
            cls = "usage_limit"
        elif status is not None:
            cls, transient = classify_status(status)
        elif TRANSIENT.search(text):
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
        rate_limited=cls == "usage_limit" or (cls == "api_error" and _RATE_TEXT.search(text) is not None),
        resets_at=_usage_reset(text) or limit.get("resets_at"),
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


_NO_SESSION = re.compile(r"No conversation found with session ID:?\s*\S*", re.IGNORECASE)
_API_STATUS = re.compile(r"API Error:\s*(\d{3})\b")
_RATE_TEXT = re.compile(r"\b(?:429|529)\b|rate.?limit|overloaded|too many requests", re.IGNORECASE)


def _claude_rate_limit(stdout: str) -> dict[str, Any]:
    """From stream-json's last ``rate_limit_event``: ``{"rejected": bool, "resets_at": epoch}``
    (``{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1767225600,...}}``)."""
    for o in _json_lines(stdout, reverse=True):
        if o.get("type") == "rate_limit_event":
            info = o.get("rate_limit_info") or {}
            resets = _num(info.get("resetsAt"))
            if resets is not None and resets > 1e11:  # milliseconds
                resets /= 1000
            return {"rejected": info.get("status") == "rejected", "resets_at": resets}
    return {}


# --- codex -----------------------------------------------------------------------------------------------

def _codex_args(cfg: AgentConfig, ctx: Context) -> list[str]:
    # `codex exec [OPTIONS] [PROMPT]`, https://developers.openai.com/codex/noninteractive and openai/codex
    # docs/exec.md, codex-rs/exec/src/cli.rs: `--json` prints JSONL events; `--sandbox workspace-write` lets it
    # edit the worktree (the exec default is read-only; `--full-auto` is deprecated for this); a worktree is a
    # git repository but `--skip-git-repo-check` keeps exec from refusing one it does not trust; `-m` the
    # model. The prompt is positional (`-p` is a config *profile* in codex), after `--`. stdin is /dev/null
    # (process.run_process): exec reads piped stdin and would wait for its end. No turn or budget limit exists.
    # A prompt too long for one argument goes on stdin: the positional prompt `-` makes exec read it there.
    args = ["exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check"]
    if cfg.model:
        args += ["-m", cfg.model]
    return [*args, *cfg.extra_args, "--", "-" if ctx.prompt_on_stdin else ctx.prompt]


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
    # A prompt too long for one argument goes on stdin, which gemini reads before the -p text ("Appended to
    # input on stdin"). The workspace is trusted through GEMINI_CLI_TRUST_WORKSPACE=true (_gemini_env): a fresh
    # worktree is untrusted and gemini 0.61 exits 55 there; older CLIs ignore the variable.
    if ctx.prompt_on_stdin:
        prompt = ["-p", "(the task is above)"]
    else:
        prompt = ["-p", ctx.prompt] if not ctx.prompt.startswith("-") else [f"--prompt={ctx.prompt}"]
    args = [*prompt, "--output-format", "stream-json" if cfg.stream else "json", "--approval-mode=yolo"]
    if cfg.model:
        args += ["-m", cfg.model]
    return [*args, *cfg.extra_args]


def _gemini_env() -> dict[str, str]:
    return {"GEMINI_CLI_TRUST_WORKSPACE": "true"}


# Exit codes of packages/core/src/utils/errors.ts (headless.md; FatalError subclasses in 0.61): 41 auth, 42 bad
# input, 44 sandbox, 52 config, 53 turn limit, 54 tool execution, 55 untrusted workspace, 130 cancelled; 1 any
# other error; a failed API call exits with its HTTP status & 0xff (400 -> 144, 429 -> 173, 500 -> 244).
# All but 53 are permanent; an HTTP status decides by itself (classify_status).
_GEMINI_EXIT = {41: "authentication failed", 42: "bad input", 44: "sandbox error", 52: "configuration error",
                54: "tool execution failed", 130: "cancelled",
                55: "the workspace is not trusted (GEMINI_CLI_TRUST_WORKSPACE=true or --skip-trust)"}
_HTTP_EXIT = {s & 0xFF: s for s in (400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504, 529)}


def parse_gemini(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
    """Classify ``gemini --output-format json``: the result object on stdout, or on failure the error object
    ``{"session_id", "error": {"type", "message", "code"}}`` that gemini writes to stderr, indented over many
    lines, after its log lines and stack traces; and its exit code."""
    stdout, stderr = strip_ansi(stdout), strip_ansi(stderr)
    objects = _json_objects(stdout)
    data = next((o for o in reversed(objects) if "type" not in o and ("response" in o or "stats" in o
                                                                     or "error" in o)), None)
    events = [] if data is not None else _json_lines(stdout)
    result_ev = next((e for e in reversed(events) if e.get("type") == "result"), None)  # stream-json
    err_obj: dict[str, Any] = {}
    for src in (data or {}, result_ev or {}, *reversed(_json_objects(stderr))):
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
            model=_gemini_main_model(models),
        )
    elif result_ev and isinstance(result_ev.get("stats"), dict):
        st = result_ev["stats"]
        common.update(input_tokens=_int(st.get("input_tokens")), output_tokens=_int(st.get("output_tokens")),
                      cache_read_tokens=_int(st.get("cached")))
    etype, emsg = str(err_obj.get("type", "")), _gemini_message(err_obj.get("message", ""))
    code = _int(err_obj.get("code"))
    status = code if code is not None and 400 <= code < 600 else _HTTP_EXIT.get(exit_code or 0)
    if exit_code == 53 or etype == "FatalTurnLimitedError":
        return AgentOutcome("max_turns", False, emsg or "reached maxSessionTurns", **common)
    if exit_code in (0, None) and not err_obj and (data is not None or result_ev is not None):
        if result_ev is not None and result_ev.get("status") == "error":
            return AgentOutcome("error", False, str(result_ev.get("error") or "error"), **common)
        return AgentOutcome("success", True, str((data or {}).get("response", ""))[-2000:], **common)
    if etype == "TerminalQuotaError" or USAGE_LIMIT.search(emsg):
        return AgentOutcome("usage_limit", False, emsg or etype, rate_limited=True, **common)
    if exit_code in _GEMINI_EXIT:
        return AgentOutcome("error", False, emsg or _GEMINI_EXIT[exit_code], **common)
    if etype == "RetryableQuotaError":
        return AgentOutcome("api_error", False, emsg, transient=True, rate_limited=True,
                            retry_after=_gemini_retry_after(stderr), **common)
    if status is not None:
        cls, transient = classify_status(status)
        text = emsg or f"HTTP {status}"
        return AgentOutcome(cls, False, text[-2000:], transient=transient, **common, rate_limited=status in (429, 529),
                            retry_after=_gemini_retry_after(stderr) if transient else None)
    if err_obj:
        cls, transient = classify_text(f"{etype}: {emsg}")
        return AgentOutcome(cls, False, (emsg or etype)[-2000:], transient=transient, **common)
    return _crash(exit_code, stderr, "no JSON result")


def _gemini_main_model(models: dict[str, Any]) -> str:
    """``stats.models`` has the router's model first (role ``utility_router``); the main model has role
    ``main``, else the most requests among the non-utility ones."""
    def roles(m: Any) -> dict[str, Any]:
        return (m.get("roles") or {}) if isinstance(m, dict) else {}

    for name, m in models.items():
        if "main" in roles(m):
            return name
    rest = {n: m for n, m in models.items() if not all(r.startswith("utility") for r in roles(m) or {"": 0})}
    pool = rest or models
    return max(pool, key=lambda n: _int(((pool[n] or {}).get("api") or {}).get("totalRequests")) or 0)


def _gemini_message(message: Any) -> str:
    """The error's message; an API error's JSON body in it (``{"error":{"code","message","status"}}``) shortened
    to "CODE STATUS: message"."""
    text = str(message or "")
    body = _json_dict(text.strip())
    inner = (body or {}).get("error")
    if isinstance(inner, dict):
        return f"{inner.get('code', '')} {inner.get('status', '')}: {inner.get('message', '')}".strip(": ")
    return text


def _gemini_retry_after(stderr: str) -> float | None:
    m = re.search(r"retryDelayMs:\s*(\d+)", stderr) or re.search(r"retry in ([\d.]+)\s*s", stderr, re.IGNORECASE)
    if not m:
        return None
    value = float(m.group(1))
    return value / 1000 if "retryDelayMs" in m.group(0) else value


# --- aider -----------------------------------------------------------------------------------------------

def _aider_args(cfg: AgentConfig, ctx: Context) -> list[str]:
    # aider scripting, https://aider.chat/docs/scripting.html and https://aider.chat/docs/config/options.html:
    # `--message-file F` sends one message and exits; `--yes-always` answers every confirmation; `--no-stream`
    # and `--no-pretty` give plain, complete output to parse; `--no-check-update`, `--no-show-model-warnings` and
    # `--analytics-disable` keep it from asking or phoning home; `--model M`. Aider commits its own edits
    # (--auto-commits is on by default): the worker records every commit since the batch started. No turn or
    # budget limit and no JSON output exist; cost and tokens come from its "Tokens: ... Cost: ..." lines.
    # aider adds ".aider*" to the repository's .gitignore (the same line in every unit branch, so the branches merge
    # cleanly); with --no-gitignore its chat history and tags cache would be committed and conflict instead
    # (seen with aider 0.86.2).
    args = ["--message-file", str(ctx.prompt_file), "--yes-always", "--no-stream", "--no-pretty",
            "--no-check-update", "--no-show-model-warnings", "--analytics-disable"]
    if cfg.model:
        args += ["--model", cfg.model]
    return [*args, *cfg.extra_args]


AIDER_KEY_VARS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY", "OPENROUTER_API_KEY",
                  "GROQ_API_KEY", "MISTRAL_API_KEY", "XAI_API_KEY")


def _aider_check(cfg: AgentConfig, env: Mapping[str, str]) -> str:
    # aider/onboarding.py select_default_model: with no --model and no key in the environment, aider offers an
    # OpenRouter login, which --yes-always accepts, and then waits 5 minutes for a browser on localhost:8484.
    # A model (flag, --extra-args) or any provider key avoids it; aider's own .env and .aider.conf.yml files
    # are read too, so their presence is left to aider.
    if cfg.model or any(a == "--model" or a.startswith(("--model=", "--api-key", "--openai-api-key",
                                                        "--anthropic-api-key")) for a in cfg.extra_args):
        return ""
    if any(env.get(k) for k in AIDER_KEY_VARS):
        return ""
    home = Path(env.get("HOME") or Path.home())
    if any((d / f).is_file() for d in (home, Path.cwd()) for f in (".env", ".aider.conf.yml")):
        return ""
    return ("aider has no model and no API key here: set one of " + ", ".join(AIDER_KEY_VARS[:3])
            + ", ... or pass --model (without them aider would wait 5 minutes for an interactive OpenRouter login)")


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
        cls, transient = _aider_class(context)
        return AgentOutcome(cls, False, context[-2000:], transient=transient, **common)
    if exit_code not in (0, None):
        if "Traceback (most recent call last)" in stderr:
            return _crash(exit_code, stderr, "aider crashed")
        return AgentOutcome("error", False, f"exit code {exit_code}: {_last_line(stderr or stdout)}", **common)
    return AgentOutcome("success", True, _last_line(stdout), **common)


# litellm's exception classes, as aider prints them ("litellm.RateLimitError: ..."): what each means.
_LITELLM_PERMANENT = {"BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
                      "UnprocessableEntityError", "ContextWindowExceededError", "ContentPolicyViolationError"}
_LITELLM_TRANSIENT = {"RateLimitError", "InternalServerError", "ServiceUnavailableError", "APIConnectionError",
                      "Timeout", "BadGatewayError"}


def _aider_class(context: str) -> tuple[str, bool]:
    """A usage limit by its text; else litellm's exception class; its generic ``APIError`` (which litellm gives
    a 403 and a 529 alike) by the HTTP status in the provider's message when there is one."""
    if USAGE_LIMIT.search(context):
        return "usage_limit", False
    names = re.findall(r"litellm\.(\w+)", context)
    if names:
        last = names[-1]
        if last in _LITELLM_PERMANENT:
            return "error", False
        if last in _LITELLM_TRANSIENT:
            return "api_error", True
        m = re.search(r"Exception - .*?\b([45]\d\d)\b", context)
        if m:
            return classify_status(int(m.group(1)))
    return classify_text(context)


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

@dataclass(frozen=True)
class TemplatePreset(Preset):
    """``--agent-cmd 'TEMPLATE'``: any command. The template is split into arguments first, then the
    placeholders are substituted inside them, so a prompt is always one argument."""

    def argv(self, cfg: AgentConfig, ctx: Context, env: Mapping[str, str]) -> list[str]:
        if cfg.template is None:
            raise UsageError("the template agent needs a command template (--agent-cmd)")
        values = {
            "prompt": ctx.prompt,
            "prompt_file": str(ctx.prompt_file),
            "batch_id": ctx.batch_id,
            "workdir": str(ctx.workdir),
            "run_id": ctx.run_id,
            "worker": str(ctx.worker + 1),
            "stream": str(ctx.worker + 1),  # the old name of {worker}, kept for existing templates
        }
        return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in validate_template(cfg.template)]

    def refuse(self, cfg: AgentConfig, ctx: Context, env: Mapping[str, str]) -> str:
        if "\0" in ctx.prompt:
            return "the prompt contains a NUL byte, which no argument or agent can be given"
        if ctx.prompt_on_stdin and cfg.template and "{prompt}" in cfg.template:
            return (f"the prompt ({len(ctx.prompt.encode())} bytes) is too long for one argument: use "
                    "{prompt_file} in the agent command template")
        return ""


def _no_args(cfg: AgentConfig, ctx: Context) -> list[str]:
    return []


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


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object that starts at the beginning of a line, on one line or indented over many."""
    decoder = json.JSONDecoder()
    out = []
    for m in re.finditer(r"^\{", text, re.MULTILINE):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


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

BUILTIN_PRESETS: dict[str, Preset] = {
    "claude": Preset(
        "claude", "claude", "Claude Code, headless (claude -p, JSON result)", _claude_args, parse_claude,
        key_vars=("ANTHROPIC_API_KEY",),  # https://code.claude.com/docs/en/env-vars ; else its saved login
        supports=frozenset({"model", "max_turns", "max_budget_usd", "stream", "resume"}), reports_cost=True,
        env=_claude_env, unset=("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"), prompt_stdin=True,
    ),
    "codex": Preset(
        "codex", "codex", "OpenAI Codex CLI (codex exec --json, JSONL events)", _codex_args, parse_codex,
        # CODEX_API_KEY is read by `codex exec` only (docs/exec.md); OPENAI_API_KEY after `codex login`.
        key_vars=("CODEX_API_KEY", "OPENAI_API_KEY"), supports=frozenset({"model"}), prompt_stdin=True,
    ),
    "gemini": Preset(
        "gemini", "gemini", "Gemini CLI, headless (gemini -p, JSON result)", _gemini_args, parse_gemini,
        key_vars=("GEMINI_API_KEY", "GOOGLE_API_KEY"),  # https://geminicli.com/docs/get-started/authentication
        supports=frozenset({"model", "stream"}), env=_gemini_env, prompt_stdin=True,
    ),
    "aider": Preset(
        "aider", "aider", "aider (--message-file, commits its own edits, text output)", _aider_args, parse_aider,
        # https://aider.chat/docs/llms.html: the provider's own variable (litellm names).
        key_vars=AIDER_KEY_VARS, supports=frozenset({"model"}), reports_cost=True, check=_aider_check,
        prompt_in_file=True,
    ),
    "fake": Preset(
        "fake", "distpar-fake-agent",
        "distpar's bundled fake agent (claude-like CLI, for demos and tests; needs no API key)",
        _claude_args, parse_claude,
        supports=frozenset({"model", "max_turns", "max_budget_usd", "stream", "resume"}),
        reports_cost=True, env=_claude_env, unset=("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"),
        command=(sys.executable, "-m", "distpar.testing.fake_agent"), prompt_stdin=True,
    ),
    "template": TemplatePreset(
        "template", "", "any command (--agent-cmd TEMPLATE; placeholders " + ", ".join("{" + p + "}" for p in
                                                                                    PLACEHOLDERS) + ")",
        _no_args, parse_exit_code,
    ),
}
# The built-ins are registered under the entry-point group too (pyproject.toml), as a plugin's preset would be.
CLAUDE, CODEX, GEMINI, AIDER, FAKE, TEMPLATE = (BUILTIN_PRESETS[n] for n in
                                                ("claude", "codex", "gemini", "aider", "fake", "template"))


def load_plugins() -> dict[str, Preset]:
    """The presets installed here: every ``distpar.agents`` entry point (an instance of Preset, or a Preset
    subclass that takes no arguments), the built-ins first. A plugin that fails to load is logged and left out."""
    from importlib.metadata import entry_points

    found = dict(BUILTIN_PRESETS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name] is BUILTIN_PRESETS.get(ep.name):
            continue  # a built-in, already here
        try:
            obj = ep.load()
            preset = obj() if isinstance(obj, type) else obj
        except Exception as exc:  # a broken plugin must not break distpar
            log.warning("agent plugin %s (%s) cannot be loaded: %s", ep.name, ep.value, exc)
            continue
        if not isinstance(preset, Preset):
            log.warning("agent plugin %s (%s) is not a distpar.agents.Preset", ep.name, ep.value)
            continue
        found[ep.name] = preset
    return found


PRESETS: dict[str, Preset] = load_plugins()
# The names --agent takes: the presets, less "template" (that one is --agent-cmd).

# Every preset's key variables: their values are masked whichever agent runs (an agent may print any of them).
KEY_VARS: tuple[str, ...] = tuple(dict.fromkeys(v for p in PRESETS.values() for v in p.key_vars))
_LIMITS = (("model", "--model"), ("max_turns", "--max-turns"), ("max_budget_usd", "--max-budget-usd"))


def preset_of(cfg: AgentConfig) -> Preset:
    """The preset that runs ``cfg``: a user-defined one carried by value (``cfg.preset_pickle``), else the one
    installed here under ``cfg.preset``. SSH and Ray workers resolve it this way from the JSON of the spec."""
    if cfg.preset_pickle:
        return _unpickle_preset(cfg.preset_pickle)
    preset = PRESETS.get(cfg.preset)
    if preset is None:
        raise UsageError(f"unknown agent preset {cfg.preset!r} (installed here: {', '.join(PRESETS)})")
    return preset


_unpickled: dict[str, Preset] = {}


def _unpickle_preset(data: str) -> Preset:
    if data not in _unpickled:
        import base64

        import cloudpickle

        try:
            preset = cloudpickle.loads(base64.b64decode(data))
        except Exception as exc:
            raise UsageError(f"the agent preset passed by value cannot be loaded here: {exc}") from None
        if not isinstance(preset, Preset):
            raise UsageError("the agent preset passed by value is not a distpar.agents.Preset")
        _unpickled[data] = preset
    return _unpickled[data]


def custom_agent(preset: Preset, base: AgentConfig | None = None) -> AgentConfig:
    """An AgentConfig that runs ``preset``, a Preset defined in the user's own code: it travels by value
    (cloudpickle, with its module pickled by value too), so workers that cannot import that module run it."""
    import base64
    import inspect

    import cloudpickle

    modules = {m for m in (inspect.getmodule(type(preset)), inspect.getmodule(preset.build),
                           inspect.getmodule(preset.parse)) if m is not None
               and m.__name__ != "__main__" and not m.__name__.startswith("distpar")}
    for m in modules:
        cloudpickle.register_pickle_by_value(m)
    try:
        data = base64.b64encode(cloudpickle.dumps(preset)).decode()
    finally:
        for m in modules:
            cloudpickle.unregister_pickle_by_value(m)
    return replace(base or AgentConfig(), preset=preset.name, template=None, preset_pickle=data)


def can_resume(cfg: AgentConfig) -> bool:
    """Whether the agent can continue an interrupted session it was started with (``--session-id``)."""
    try:
        return "resume" in preset_of(cfg).supports
    except UsageError:
        return False


def unsupported(cfg: AgentConfig) -> list[str]:
    """Options set in ``cfg`` that its preset cannot apply, as sentences."""
    try:
        preset = preset_of(cfg)
    except UsageError:
        return []
    if cfg.preset == "template":
        return []
    out = [f"the {preset.name} agent has no {flag}: {getattr(cfg, attr)} is not applied"
           for attr, flag in _LIMITS if getattr(cfg, attr) and attr not in preset.supports]
    if cfg.stream and "stream" not in preset.supports:
        out.append(f"the {preset.name} agent has no JSON event stream option: output is logged as it comes")
    return out


def command(cfg: AgentConfig, env: Mapping[str, str]) -> list[str]:
    """The argv prefix that runs ``cfg``'s preset on this machine (see the module docstring)."""
    preset = preset_of(cfg)
    override = cfg.executable or env.get(BIN_VAR.format(preset.name.upper().replace("-", "_")))
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
    if value in PRESETS and value != "template":
        return replace(base, preset=value, template=None)
    if " " in value.strip() or "{" in value:
        validate_template(value)
        return replace(base, preset="template", template=value, extra_args=(), executable=None)
    raise UsageError(
        f"unknown agent {value!r}: use a preset ({', '.join(preset_names())}) or a command template such as "
        "'mytool --prompt-file {prompt_file}'"
    )


def check_plan_agents(plan: Plan, base: AgentConfig, budget_usd: float | None = None) -> list[str]:
    """Refuse a plan whose per-batch ``agent`` is neither a preset nor a valid template, pointing at it.
    Returns warnings (the CLI prints them): limits an agent cannot apply, a run budget an agent cannot count."""
    configs = {base.preset: base}
    for i, b in enumerate(plan.batches):
        for task in getattr(b, "agents", ()) or ():
            if "\0" in str(getattr(task, "prompt", "")):
                raise PlanError(f"batches[{i}]: the prompt contains a NUL byte, which no agent can be given",
                                where=f"{plan.source}:{b.line}")
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
                     if name == "template" or not _reports_cost(cfg)]
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


def preset_names() -> list[str]:
    """What ``--agent`` takes: the installed presets but "template" (that one is ``--agent-cmd``)."""
    return [n for n in PRESETS if n != "template"]


def _reports_cost(cfg: AgentConfig) -> bool:
    try:
        return preset_of(cfg).reports_cost
    except UsageError:
        return False


def invocation(cfg: AgentConfig, ctx: Context, base_env: Mapping[str, str], extra_env: Mapping[str, str],
               forwarded: Mapping[str, str] | None = None) -> Invocation:
    """The argv, environment, result parser and secrets of one agent run. ``forwarded``: the ``--forward-env``
    variables (part of ``extra_env``), whose values are masked."""
    preset = preset_of(cfg)
    env = {k: v for k, v in base_env.items() if k not in preset.unset}
    env.update(preset.env())
    env.update(extra_env)
    env.update({var: "1" for var in GUARD_VARS})
    env.update(
        {
            "DISTPAR_RUN_ID": ctx.run_id,
            "DISTPAR_BATCH_ID": ctx.batch_id,
            "DISTPAR_WORKER": str(ctx.worker + 1),
            "DISTPAR_STREAM": str(ctx.worker + 1),  # the old name of DISTPAR_WORKER, kept for existing scripts
            "DISTPAR_WORKTREE": str(ctx.workdir),
            "DISTPAR_PROMPT_FILE": str(ctx.prompt_file),
        }
    )
    refused = preset.refuse(cfg, ctx, env)
    argv = [f"({preset.name}: not started)"] if refused else preset.argv(cfg, ctx, base_env)
    parse = _cleaned(preset.parse)
    notes = tuple(unsupported(cfg))
    stdin = ctx.prompt_file if ctx.prompt_on_stdin and preset.prompt_stdin else None
    return Invocation(argv, env, parse, secret_values(env, forwarded or {}), notes, stdin=stdin, refused=refused,
                      stall_timeout=cfg.stall_timeout)


def _cleaned(parse: Parser) -> Parser:
    """``parse`` on the text without terminal escapes; a rate-limit answer flagged as such (ratelimit.py)."""
    def run(stdout: str, stderr: str, exit_code: int | None) -> AgentOutcome:
        out = parse(strip_ansi(stdout), strip_ansi(stderr), exit_code)
        limited = out.rate_limited or out.result_class == "usage_limit" or (
            out.result_class == "api_error" and _RATE_TEXT.search(out.message) is not None)
        if out.result_class == "usage_limit" and out.resets_at is None:
            out = replace(out, resets_at=_usage_reset(out.message))
        return replace(out, rate_limited=limited) if limited != out.rate_limited else out

    return run


def stalled(inv: Invocation, stdout: str, stderr: str) -> AgentOutcome:
    """The outcome of an agent stopped after ``inv.stall_timeout`` seconds without output: transient (a model
    server that stopped answering; codex printing "Reconnecting..." and then waiting for ever)."""
    lines = [ln for ln in strip_ansi(stdout + "\n" + stderr).splitlines() if "reconnecting" in ln.lower()]
    why = f"; last: {lines[-1].strip()[-300:]}" if lines else ""
    return AgentOutcome("stalled", False, f"no output for {inv.stall_timeout:g}s: stopped{why}", transient=True)


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
                                    stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            error = f"cannot run {argv[0]}: {exc.strerror or exc}"
        else:
            try:
                out, errs = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid)
                proc.communicate()
                error = f"{argv[0]} --version did not answer within {timeout:g}s"
            else:
                line = version_line(out.decode("utf-8", "replace"), errs.decode("utf-8", "replace"))
                if proc.returncode == 0 and line:
                    version = line
                else:
                    error = f"{argv[0]} --version exited with {proc.returncode}" + (f": {line}" if line else "")
            finally:
                _killpg(proc.pid)  # nothing it started outlives the probe
    return Probe(name, preset.description, argv, path, version, error, preset.key_vars, keys_set)


_VERSION = re.compile(r"\d+\.\d+")
_WARNING = re.compile(r"^(?:warn(?:ing)?|error|note|deprecat)", re.IGNORECASE)


def version_line(stdout: str, stderr: str) -> str:
    """The line of ``--version``'s output that names the version: on stdout before stderr, skipping warnings
    (codex prints "WARNING: proceeding, even though ..." first) and lines without a version number."""
    for text in (stdout, stderr):
        for line in strip_ansi(text).splitlines():
            line = line.strip()
            if line and _VERSION.search(line) and not _WARNING.match(line):
                return line[:200]
    lines = [ln.strip() for ln in strip_ansi(stdout + "\n" + stderr).splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
