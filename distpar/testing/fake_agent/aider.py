"""aider emulation: ``--message-file F ...``, plain text with aider's "Tokens: ... Cost: ..." lines, exit 0 even
when the LLM call failed; commits its own edits."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

from distpar.testing.fake_agent.args import VERSIONS, ArgError, alias, fail_args, parse_options
from distpar.testing.fake_agent.directives import Crash, State, run_prompt

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
        return fail_args(exc)
    message_file = alias(opts, "--message-file", "-f")
    if message_file is not None:
        try:
            prompt = Path(message_file).read_text()
        except OSError:
            print(f"Message file not found: {message_file}")
            return 1
    else:
        prompt = alias(opts, "--message", "--msg", "-m") or ""
    if not prompt:
        return fail_args(ArgError("the fake agent runs aider only with --message or --message-file", 1))
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


