"""aider (``--message-file``): its arguments, the check that keeps it from waiting for a login, and its plain
text output."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distpar.agents.base import USAGE_LIMIT, Context, Preset, classify_status, classify_text, crash, last_line
from distpar.core.model import AgentConfig, AgentOutcome


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
        return crash(exit_code, stderr, "killed by a signal")
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
            return crash(exit_code, stderr, "aider crashed")
        return AgentOutcome("error", False, f"exit code {exit_code}: {last_line(stderr or stdout)}", **common)
    return AgentOutcome("success", True, last_line(stdout), **common)


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


AIDER = Preset(
    "aider", "aider", "aider (--message-file, commits its own edits, text output)", _aider_args, parse_aider,
    # https://aider.chat/docs/llms.html: the provider's own variable (litellm names).
    key_vars=AIDER_KEY_VARS, supports=frozenset({"model"}), reports_cost=True, check=_aider_check,
    prompt_in_file=True,
)
