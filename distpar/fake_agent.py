"""A fake headless coding agent with Claude Code's CLI shape, for demos, tests and benchmarks.

    distpar-fake-agent -p "PROMPT" --output-format json [--model M] [--max-turns N] ...

It edits files as the prompt tells it, through lines of the form ``@fake COMMAND ARGS...`` (shell-like
quoting, ``\\n`` in text means a newline); other text is ignored. Commands:

    write PATH TEXT       create or replace a file        append PATH TEXT   add a line to a file
    delete PATH           remove a file                   sleep SECONDS      take that long
    fail [CODE] [MSG]     exit with CODE (default 1) and an error result
    result KIND           finish with an error result: max_turns, budget, rate_limit, overloaded, usage_limit
    crash                 exit 1 without any JSON         hang               never finish
    commit MESSAGE        commit its own changes          spawn-child        leave a sleeping child behind
    cost USD | tokens IN OUT | turns N | print-env NAME   (report values; print a variable to stderr)
    fail-once KEY RESULT  the first invocation with KEY in a state dir fails with RESULT, later ones succeed

With no command it writes the prompt to ``fake-agent/<hash>.md``. ``FAKE_AGENT_LOG`` names a JSON-lines file
where every invocation is recorded (argv, working directory, batch id).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

OPTIONS_WITH_VALUE = {
    "--output-format", "--model", "--max-turns", "--max-budget-usd", "--permission-mode", "--session-id",
    "--resume", "--allowedTools", "--allowed-tools", "--append-system-prompt", "--input-format",
}
FLAGS = {"-p", "--print", "--verbose", "--dangerously-skip-permissions", "--continue", "-c"}


def parse_args(argv: list[str]) -> tuple[str, dict[str, str]]:
    opts: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            positional += argv[i + 1 :]
            break
        if a in FLAGS:
            opts[a] = "1"
        elif a in OPTIONS_WITH_VALUE:
            if i + 1 >= len(argv):
                raise SystemExit(f"error: option '{a}' argument missing")
            opts[a] = argv[i + 1]
            i += 1
        elif a.startswith("-") and a != "-":
            raise SystemExit(f"error: unknown option '{a}'")
        else:
            positional.append(a)
        i += 1
    if "-p" not in opts and "--print" not in opts:
        raise SystemExit("error: the fake agent only runs headless: pass -p")
    return " ".join(positional), opts


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        prompt, opts = parse_args(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    fmt = opts.get("--output-format", "text")
    _record(args, prompt)
    started = time.time()
    state = {"cost": 0.01, "in": 1000, "out": 200, "turns": 1, "text": "done", "code": 0, "subtype": "success"}
    edits = 0
    for line in prompt.splitlines():
        line = line.strip()
        if not line.startswith("@fake "):
            continue
        words = [w.replace("\\n", "\n") for w in shlex.split(line[6:])]
        if not words:
            continue
        cmd, rest = words[0], words[1:]
        if cmd == "write":
            p = Path(rest[0])
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(rest[1] if len(rest) > 1 else "")
            edits += 1
        elif cmd == "append":
            p = Path(rest[0])
            p.parent.mkdir(parents=True, exist_ok=True)
            with p.open("a") as f:
                f.write((rest[1] if len(rest) > 1 else "") + "\n")
            edits += 1
        elif cmd == "delete":
            Path(rest[0]).unlink(missing_ok=True)
            edits += 1
        elif cmd == "sleep":
            time.sleep(float(rest[0]))
        elif cmd == "hang":
            while True:
                time.sleep(3600)
        elif cmd == "crash":
            print("fake agent crashed", file=sys.stderr)
            sys.exit(1)
        elif cmd == "fail":
            state["code"] = int(rest[0]) if rest else 1
            state["subtype"] = "error_during_execution"
            state["text"] = " ".join(rest[1:]) or "the task failed"
            break
        elif cmd == "result":
            state.update(_error_result(rest[0]))
            break
        elif cmd == "fail-once":
            marker = Path(os.environ.get("FAKE_AGENT_STATE", "/tmp")) / f"fake-agent-{rest[0]}"
            if not marker.exists():
                marker.touch()
                state.update(_error_result(rest[1] if len(rest) > 1 else "rate_limit"))
                break
        elif cmd == "commit":
            subprocess.run(["git", "add", "-A"], check=True)
            subprocess.run(["git", "commit", "-q", "-m", rest[0] if rest else "agent commit"], check=True)
        elif cmd == "spawn-child":
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        elif cmd == "cost":
            state["cost"] = float(rest[0])
        elif cmd == "tokens":
            state["in"], state["out"] = int(rest[0]), int(rest[1])
        elif cmd == "turns":
            state["turns"] = int(rest[0])
        elif cmd == "print-env":
            print(f"{rest[0]}={os.environ.get(rest[0], '')}", file=sys.stderr)
        else:
            print(f"fake agent: unknown command {cmd!r}", file=sys.stderr)
            sys.exit(2)
    else:
        if edits == 0 and not any(line.strip().startswith("@fake ") for line in prompt.splitlines()):
            p = Path("fake-agent") / (hashlib.sha1(prompt.encode()).hexdigest()[:12] + ".md")
            p.parent.mkdir(exist_ok=True)
            p.write_text(prompt + "\n")
    _emit(fmt, state, opts, started)
    sys.exit(int(state["code"]))


def _error_result(kind: str) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {
        "max_turns": {"subtype": "error_max_turns", "text": "", "code": 1},
        "budget": {"subtype": "error_max_budget_usd", "text": "", "code": 1},
        "rate_limit": {"subtype": "success", "text": 'API Error: 429 {"type":"rate_limit_error"}', "code": 1},
        "overloaded": {"subtype": "success", "text": "API Error: 529 Overloaded", "code": 1},
        "usage_limit": {"subtype": "success", "text": "Claude AI usage limit reached|1767225600", "code": 1},
    }
    if kind not in table:
        print(f"fake agent: unknown result kind {kind!r}", file=sys.stderr)
        sys.exit(2)
    return {**table[kind], "is_error": True}


def _emit(fmt: str, state: dict[str, Any], opts: dict[str, str], started: float) -> None:
    is_error = bool(state.get("is_error")) or state["subtype"] != "success" or state["code"] != 0
    model = opts.get("--model", "fake-model-1")
    result = {
        "type": "result",
        "subtype": state["subtype"],
        "is_error": is_error,
        "duration_ms": int((time.time() - started) * 1000),
        "duration_api_ms": int((time.time() - started) * 500),
        "num_turns": state["turns"],
        "result": state["text"],
        "session_id": opts.get("--session-id") or opts.get("--resume") or str(uuid.uuid4()),
        "total_cost_usd": state["cost"],
        "usage": {
            "input_tokens": state["in"],
            "output_tokens": state["out"],
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
        "modelUsage": {model: {"inputTokens": state["in"], "outputTokens": state["out"], "costUSD": state["cost"]}},
    }
    if fmt == "json":
        print(json.dumps(result))
    elif fmt == "stream-json":
        print(json.dumps({"type": "system", "subtype": "init", "session_id": result["session_id"], "model": model}))
        print(json.dumps(result))
    else:
        print(state["text"])


def _record(args: list[str], prompt: str) -> None:
    log = os.environ.get("FAKE_AGENT_LOG")
    if not log:
        return
    entry = {
        "argv": args,
        "cwd": os.getcwd(),
        "batch": os.environ.get("DISTPAR_BATCH_ID"),
        "run": os.environ.get("DISTPAR_RUN_ID"),
        "time": time.time(),
        "pid": os.getpid(),
    }
    with open(log, "a") as f:
        f.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
