"""Gemini CLI, headless (``gemini -p``): its arguments, its JSON result and its error objects and exit codes."""

from __future__ import annotations

import re
from typing import Any

from distpar.agents.base import (
    USAGE_LIMIT,
    Context,
    Preset,
    as_int,
    classify_status,
    classify_text,
    crash,
    json_dict,
    json_lines,
    json_objects,
    strip_ansi,
)
from distpar.core.model import AgentConfig, AgentOutcome


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
    objects = json_objects(stdout)
    data = next((o for o in reversed(objects) if "type" not in o and ("response" in o or "stats" in o
                                                                     or "error" in o)), None)
    events = [] if data is not None else json_lines(stdout)
    result_ev = next((e for e in reversed(events) if e.get("type") == "result"), None)  # stream-json
    err_obj: dict[str, Any] = {}
    for src in (data or {}, result_ev or {}, *reversed(json_objects(stderr))):
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
            input_tokens=sum(as_int(t.get("input")) or 0 for t in tok),
            output_tokens=sum((as_int(t.get("candidates")) or 0) + (as_int(t.get("thoughts")) or 0) for t in tok),
            cache_read_tokens=sum(as_int(t.get("cached")) or 0 for t in tok),
            model=_gemini_main_model(models),
        )
    elif result_ev and isinstance(result_ev.get("stats"), dict):
        st = result_ev["stats"]
        common.update(input_tokens=as_int(st.get("input_tokens")), output_tokens=as_int(st.get("output_tokens")),
                      cache_read_tokens=as_int(st.get("cached")))
    etype, emsg = str(err_obj.get("type", "")), _gemini_message(err_obj.get("message", ""))
    code = as_int(err_obj.get("code"))
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
    return crash(exit_code, stderr, "no JSON result")


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
    return max(pool, key=lambda n: as_int(((pool[n] or {}).get("api") or {}).get("totalRequests")) or 0)


def _gemini_message(message: Any) -> str:
    """The error's message; an API error's JSON body in it (``{"error":{"code","message","status"}}``) shortened
    to "CODE STATUS: message"."""
    text = str(message or "")
    body = json_dict(text.strip())
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


GEMINI = Preset(
    "gemini", "gemini", "Gemini CLI, headless (gemini -p, JSON result)", _gemini_args, parse_gemini,
    key_vars=("GEMINI_API_KEY", "GOOGLE_API_KEY"),  # https://geminicli.com/docs/get-started/authentication
    supports=frozenset({"model", "stream"}), env=_gemini_env, prompt_stdin=True,
)
