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

# This docstring is the fake agent's reference page (docs/hooks/reference.py). The modules: directives (the
# @fake commands), args (option parsing, versions), one per emulated CLI; __main__ runs main.

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from distpar.testing.fake_agent.aider import aider
from distpar.testing.fake_agent.args import VERSIONS, ArgError, parse_options
from distpar.testing.fake_agent.claude import claude
from distpar.testing.fake_agent.codex import codex
from distpar.testing.fake_agent.directives import KINDS, State, prompt_commands, run_prompt
from distpar.testing.fake_agent.gemini import gemini

__all__ = ["EMULATIONS", "KINDS", "VERSIONS", "ArgError", "State", "detect", "main", "parse_options", "prompt_commands",
           "run_prompt"]


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

