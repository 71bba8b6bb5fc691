"""One exception tree and the exit codes the CLI maps it to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes. When several apply, the CLI exits with the most severe (highest rank)."""

    OK = 0
    BATCH_FAILED = 1
    USAGE = 2
    CONFLICT = 3
    BACKEND = 4
    GATE_FAILED = 5
    INTERRUPTED = 130

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @property
    def description(self) -> str:
        """What the code means to the user (the docs' exit code reference is generated from it)."""
        return _DESCRIPTION[self]


_DESCRIPTION = {
    ExitCode.OK: "every unit succeeded and the units were merged into the target",
    ExitCode.BATCH_FAILED: "at least one unit failed (or the run's budget ran out): the target is not touched, "
                           "everything is kept",
    ExitCode.USAGE: "bad input or flags (a plan, a setting, a refused repository state): nothing was changed",
    ExitCode.CONFLICT: "a merge conflicted: the target is unchanged, every branch is kept",
    ExitCode.BACKEND: "a backend or infrastructure error (git, a host, a cluster, a journal that cannot be "
                      "written): work done so far is kept",
    ExitCode.GATE_FAILED: "`--verify-merged` failed on the merged tree: the target is unchanged, everything is "
                          "kept (`distpar resume` runs the gate again)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl+C, SIGTERM): agents stopped, their work saved",
}


_SEVERITY = {
    ExitCode.OK: 0,
    ExitCode.BATCH_FAILED: 1,
    ExitCode.CONFLICT: 2,
    ExitCode.GATE_FAILED: 2,
    ExitCode.BACKEND: 3,
    ExitCode.USAGE: 4,
    ExitCode.INTERRUPTED: 5,
}


def most_severe(*codes: ExitCode) -> ExitCode:
    return max(codes, key=lambda c: c.severity, default=ExitCode.OK)


class DistparError(Exception):
    """Base of every error distpar raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code: ExitCode = ExitCode.BACKEND

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(DistparError):
    """Bad flags or arguments."""

    exit_code = ExitCode.USAGE


class PlanError(UsageError):
    """The plan file is malformed or inconsistent. ``where`` is ``file:line`` when known."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.where = where


class RepoError(UsageError):
    """The repository is missing, dirty or in a state distpar refuses to touch."""


class GitError(DistparError):
    """A git command failed unexpectedly."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-3:] if stderr.strip() else []
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(f"git {' '.join(argv)} failed with exit code {returncode}{detail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class BackendError(DistparError):
    """A worker host, cluster or transport failed (not the agent: that is a batch result)."""


class NestedRunError(UsageError):
    """distpar was started by an agent that distpar itself started."""


class Interrupted(DistparError):
    exit_code = ExitCode.INTERRUPTED
