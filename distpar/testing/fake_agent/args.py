"""What the emulations share as CLIs: the version each reports, and argument parsing (each checks its options as
its CLI does: an unknown one fails)."""

from __future__ import annotations

import sys
from collections.abc import Callable

VERSIONS = {
    "claude": "2.1.0 (Claude Code)",
    "codex": "codex-cli 0.58.0",
    "gemini": "0.20.0",
    "aider": "aider 0.86.1",
}


class ArgError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


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


def alias(opts: dict[str, str], *names: str) -> str | None:
    return next((opts[n] for n in names if n in opts), None)


def fail_args(exc: ArgError) -> int:
    print(exc.message, file=sys.stderr)
    return exc.code
