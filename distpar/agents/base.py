"""What every preset shares: the ``Preset`` type, the ``Context`` of one invocation and the ``Invocation`` it
becomes, and the classification of an agent's answer (usage limits, transient failures, crashes) with the JSON
helpers the dialects' parsers use."""

from __future__ import annotations

import json
import re
import shlex
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distpar.core.model import AgentConfig, AgentOutcome

GUARD_VAR = "DISTPAR_SUBPROCESS"
# Set for agents too, like GUARD_VAR: tools that refuse to nest inside an agent look for it (issue 15).
GUARD_VARS = (GUARD_VAR, "CAST_SUBPROCESS")
# One argv element holds at most MAX_ARG_STRLEN (128 KiB on Linux) bytes: a longer prompt goes on stdin (claude,
# codex, gemini) or in a file (aider --message-file, a template's {prompt_file}).
ARGV_PROMPT_MAX = 100_000
BIN_VAR = "DISTPAR_AGENT_{}_BIN"

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

    def command_line(self, cfg: AgentConfig, env: Mapping[str, str]) -> list[str]:
        """The argv prefix that runs this preset on this machine: ``cfg.executable``, else
        ``$DISTPAR_AGENT_<NAME>_BIN`` from ``env``, else the preset's own command. An override is split like a
        shell would split it (no shell runs it)."""
        override = cfg.executable or env.get(BIN_VAR.format(self.name.upper().replace("-", "_")))
        if override:
            argv = shlex.split(override)
            if argv:
                return argv
        return self.default_command()

    def argv(self, cfg: AgentConfig, ctx: Context, env: Mapping[str, str]) -> list[str]:
        return [*self.command_line(cfg, env), *self.build(cfg, ctx)]

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
    # a status alone, not part of a path or a name ("/tmp/pytest-500/x" is no server error)
    r"(?<![\w./-])(?:429|500|502|503|504|529)(?![\w/-])|rate.?limit|overloaded|too many requests|resource_exhausted"
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


def usage_reset(text: str) -> float | None:
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


def crash(exit_code: int | None, stderr: str, what: str = "no result") -> AgentOutcome:
    # No structured result: the CLI died, was killed, or never started properly. The worker retries it only
    # when the agent changed nothing (see worker._run_batch).
    tail = last_line(stderr)
    return AgentOutcome("crash", False, f"{what} (exit code {exit_code})" + (f": {tail}" if tail else ""),
                        transient=True)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in strip_ansi(text).strip().splitlines() if ln.strip()]
    return lines[-1][-500:] if lines else ""


# A transient failure that is a rate limit (the worker then waits out the provider's window, core.ratelimit).
RATE_TEXT = re.compile(r"\b(?:429|529)\b|rate.?limit|overloaded|too many requests", re.IGNORECASE)


# --- JSON helpers ----------------------------------------------------------------------------------------

def json_dict(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def json_objects(text: str) -> list[dict[str, Any]]:
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


def json_lines(text: str, reverse: bool = False) -> list[dict[str, Any]]:
    lines = text.splitlines()
    out = []
    for line in reversed(lines) if reverse else lines:
        obj = json_dict(line.strip())
        if obj is not None:
            out.append(obj)
    return out


def as_float(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def as_int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
