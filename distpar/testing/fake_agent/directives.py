"""The ``@fake COMMAND ARGS...`` lines of a prompt and what they do: the same for every emulation (the list is
in the package's docstring). ``State`` gathers what the emulation then reports."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distpar.testing import fake_resolve

KINDS = ("max_turns", "budget", "rate_limit", "overloaded", "server_error", "usage_limit", "usage_limit_new",
         "bad_input", "auth")


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
            set_kind(state, rest[0])
            return
        elif cmd == "fail-once":
            marker = Path(os.environ.get("FAKE_AGENT_STATE", "/tmp")) / f"fake-agent-{rest[0]}"
            if not marker.exists():
                marker.touch()
                if rest[1:2] == ["crash"]:
                    raise Crash
                set_kind(state, rest[1] if len(rest) > 1 else "rate_limit")
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


def set_kind(state: State, kind: str) -> None:
    if kind not in KINDS:
        print(f"fake agent: unknown result kind {kind!r}", file=sys.stderr)
        sys.exit(2)
    state.kind, state.code = kind, 1

