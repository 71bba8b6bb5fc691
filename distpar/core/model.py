"""Data that crosses process and machine boundaries: what a worker is asked to do and what it hands back.

Frozen dataclasses of plain JSON types, serialised with ``distpar.core.serial``, so the same spec travels through a
thread, a Ray task or an SSH channel. ``SPEC_VERSION`` frames the messages and is bumped when their shape changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

from distpar.core.option import opt

SPEC_VERSION = 2  # 2: worker settings sent once, then units (1: a segment spec per unit)
WARN_SIZE = 50 * 1024 * 1024  # bytes: GitHub warns at 50 MB and refuses files over 100 MB


def worker_label(index: int | None) -> str:
    """How a worker is shown: w1, w2, ...; "-" for a unit no worker ran (skipped, blocked)."""
    return f"w{index + 1}" if index is not None and index >= 0 else "-"


class UnitStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"  # the agent succeeded (with or without changes)
    FAILED = "failed"  # the agent failed, crashed or reported an error
    TIMEOUT = "timeout"  # killed by distpar after its time limit
    SKIPPED = "skipped"  # not run: a dependency failed
    BLOCKED = "blocked"  # not run: merging its dependencies into its base conflicted
    INTERRUPTED = "interrupted"  # the run was cancelled while it ran

    def is_terminal(self) -> bool:
        return self not in (UnitStatus.PENDING, UnitStatus.RUNNING)

    @property
    def ok(self) -> bool:
        return self is UnitStatus.OK


@dataclass(frozen=True, slots=True)
class Identity:
    name: str = "distpar"
    email: str = "distpar@localhost"

    def env(self) -> dict[str, str]:
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
        }


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Which agent runs a unit: a preset name (claude, fake, ...) or a command template, plus its options."""

    preset: str = "claude"
    template: str | None = None  # argv template, split with shlex; placeholders {prompt}, {prompt_file}, ...
    model: str | None = None
    max_turns: int | None = None
    max_budget_usd: float | None = None
    extra_args: tuple[str, ...] = ()
    executable: str | None = None  # command that runs the preset instead of its own (split like a shell would)
    stream: bool = False  # ask for a live JSON event stream where the agent has one (claude, gemini)
    stall_timeout: float | None = None  # seconds without any output after which the agent is stopped (stalled)
    # A user-defined preset (a distpar.agents.Preset subclass instance), cloudpickled by value, base64: it
    # reaches SSH and Ray workers that cannot import the module it was defined in (distpar.agents.preset_of).
    preset_pickle: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra_args"] = list(self.extra_args)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentConfig:
        d = dict(d)
        d["extra_args"] = tuple(d.get("extra_args", ()))
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True, slots=True)
class Source:
    """Where the worker gets the code from.

    ``worktree``: ``location`` is a repository on this machine; the worker adds a worktree of it.
    ``bundle``: ``location`` is a git bundle file holding ``base`` (and ``refs``); the worker clones it.
    ``url``: ``location`` is a git remote the worker clones or fetches from (and pushes to, if asked).
    """

    kind: str
    location: str
    increments: tuple[str, ...] = ()  # further bundles fetched after ``location`` (newer bases)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """The run options every worker acts on, declared here (each field's ``Option``: its flag, its
    ``[tool.distpar]`` key, its help); ``RunOptions`` extends them and sends this part once per worker."""

    agent_retries: int = opt(
        2, flag="--agent-retries", kind="int", min=0, config=True,
        help="Times a unit's agent is tried again after a transient failure (rate limit, 5xx, crash before any "
             "edit), with exponential backoff.")

    max_concurrent_agents: int | None = opt(
        flag="--max-concurrent-agents", kind="int", min=1, metavar="N", config=True,
        help="Agents running at once (local backend: the whole run; remote: per worker process/slot).")

    stagger: float = opt(
        0.1, flag="--stagger", kind="float", min=0, metavar="SECONDS", config=True,
        help="Pause between agent starts (providers rate-limit bursts of new sessions).")

    setup: str | None = opt(
        flag="--setup", metavar="CMD", config=True,
        help="Run once in every new workspace before its first unit (e.g. 'npm ci').")

    setup_key: tuple[str, ...] = opt(
        (), flag="--setup-key", kind="list", metavar="PATH", config=True,
        help="With --reuse-workspaces: a file --setup depends on (package-lock.json, say); a reused workspace runs "
             "--setup again only when one of these files or the command changed since it last ran there.")

    reuse_workspaces: bool = opt(
        False, flag="--reuse-workspaces", kind="bool", config=True, negatable=True,
        help="Keep workspaces between runs (a pool per repository on each machine: locally, on every Ray node and "
             "SSH host): a run takes the ones earlier runs left, moves them to its base and keeps their ignored "
             "files (node_modules, build caches); --setup runs again only when it or a --setup-key file changed.")

    pool_size: int = opt(
        16, flag="--pool-size", kind="int", min=1, metavar="N", config=True,
        help="With --reuse-workspaces: at most this many idle workspaces are kept per repository on a machine "
             "(the least recently used go first).")

    pool_max_age: float = opt(
        14 * 86400.0, flag="--pool-max-age", kind="float", min=0, min_open=True, metavar="DAYS", scale=86400,
        config=True, help="With --reuse-workspaces: an idle workspace unused for this long is removed.")

    pool_max_size: int = opt(
        20 * 2**30, flag="--pool-max-size", kind="float", min=0, min_open=True, metavar="GB", scale=2**30,
        config=True, help="With --reuse-workspaces: the idle workspaces of a repository on a machine take at most "
                          "this much disk (the least recently used go first).")

    setup_timeout: float = opt(
        1800.0, flag="--setup-timeout", kind="float", min=0, min_open=True, metavar="SECONDS", config=True,
        help="Stop --setup after this long in a workspace (its workers fail that workspace's units, said).")
    verify: str | None = opt(
        flag="--verify", metavar="CMD", config=True,
        help="Run after each unit in its workspace; a unit whose check fails is failed, its work saved.")

    hooks: bool = opt(
        False, flag="--hooks", kind="bool", config=True, negatable=True,
        help="Run the repository's pre-commit, commit-msg and post-commit hooks on distpar's unit commits (a "
             "failing hook fails that unit, its work saved).")

    warn_size: int | None = opt(
        WARN_SIZE, flag="--warn-size", kind="float", min=0, metavar="MB", scale=2**20, config=True,
        help="Warn about every file over this size a unit commits (0: never).")

    sandbox: bool = opt(
        False, flag="--sandbox", kind="bool", config=True, negatable=True,
        help="Run agents under bubblewrap: writes only to their workspace, their CLI's state directory, a private "
             "/tmp and --sandbox-allow paths; nothing they start outlives them.")

    sandbox_allow: tuple[str, ...] = opt(
        (), flag="--sandbox-allow", kind="list", metavar="PATH",
        help="With --sandbox: a further writable path.")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What one worker is told once, for the whole run: the same for every unit it runs."""

    run_id: str
    workspace: str  # directory the worker works in (created if absent), kept between its units
    log_dir: str
    identity: Identity = field(default_factory=Identity)
    env: dict[str, str] = field(default_factory=dict)  # forwarded variables: never journaled or logged
    return_bundle: bool = False  # hand the new commits back as a bundle (remote workers)
    include: tuple[str, ...] = ()  # ignored files (.worktreeinclude) copied into a new workspace
    include_data: dict[str, str] = field(default_factory=dict)  # their contents, for remote workers that may
    # have them (base64; they often hold secrets: never journaled or logged)
    pool: str = ""  # --reuse-workspaces: where this machine keeps the repository's workspaces between runs (a
    # remote node anchors it in its work directory); empty: a workspace of its own for the run
    plan_text: str = ""  # the plan file: CAST prompts refer to it, so every worker has it (DISTPAR_PLAN_FILE)
    options: WorkerOptions = field(default_factory=WorkerOptions)


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """One unit as a worker is asked to run it: its agent and prompt, on ``branch`` from ``base``."""

    uid: str
    description: str
    prompt: str
    agent: AgentConfig
    timeout: float
    worker: int  # the worker that runs it (0-based; shown as w1, w2, ...)
    dispatch: int  # the run's dispatch counter when it was sent (names its bundles)
    branch: str
    base: str  # commit the branch must start from (contains every dependency's work)
    source: Source
    attempt: int = 1
    session: str | None = None  # an interrupted unit: continue this agent session
    restore: str | None = None  # ... with the work it had left (a saved commit) put back in the worktree first
    node: str | None = None  # where that session lives (agents keep sessions on the machine they ran on)
    subagent_type: str | None = None  # the plan's agents[].subagent_type (claude: --agent NAME where defined)


@dataclass(frozen=True, slots=True)
class AgentOutcome:
    """What one agent invocation reported, parsed from its structured output."""

    result_class: str  # success, max_turns, budget_exceeded, error, api_error, usage_limit, timeout, crash
    ok: bool
    message: str = ""
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None
    turns: int | None = None
    duration_api_ms: int | None = None
    session_id: str | None = None
    model: str | None = None
    transient: bool = False
    # Rate limits (distpar/core/ratelimit.py reads these): the provider said to wait this long, or until then.
    rate_limited: bool = False  # a 429 / overloaded / usage-limit answer: fewer agents at once would help
    retry_after: float | None = None  # seconds, from a retry-after the CLI reported
    resets_at: float | None = None  # epoch seconds when a usage or rate limit resets
    session_missing: bool = False  # --resume named a session the agent does not have: try again without it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentOutcome:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True, slots=True)
class UnitResult:
    unit_id: str
    worker: int
    status: UnitStatus
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    commit: str | None = None  # branch head after the unit
    changed: bool = False  # the unit added at least one commit
    outcome: AgentOutcome | None = None
    log_path: str | None = None
    log_tail: str = ""
    error: str = ""
    node: str = ""
    attempt: int = 1
    tries: int = 1  # agent invocations for this unit (more than one after transient failures)
    try_classes: tuple[str, ...] = ()  # result class of each try, in order
    notes: tuple[str, ...] = ()  # what distpar noticed and did about it (the agent switched branches, a big file)

    @property
    def duration(self) -> float:
        return (self.ended - self.started) if self.started and self.ended else 0.0


@dataclass(frozen=True, slots=True)
class UnitReply:
    """What a worker hands back for one unit: its result, and where its work is."""

    run_id: str
    worker: int
    dispatch: int
    branch: str
    base: str
    head: str  # branch head after the unit
    result: UnitResult
    node: str = ""
    bundle: str | None = None  # path of a bundle with base..head (and the saved ref), when asked for; on a local
    # worker the path of its repository of its own, which the coordinator fetches the same refs from
    saved_ref: str | None = None  # uncommitted work saved on interrupt
    interrupted: bool = False
    setup: dict[str, Any] | None = None  # the workspace's setup, when it ran for this unit (workspace.HookResult)
    workspace: dict[str, Any] | None = None  # with the worker's first unit: how its workspace was made ready
    # (``how``: new, reused or rebuilt; ``reason``; ``seconds``; ``setup``: ran, kept or none; ``path``)
    paths: tuple[str, ...] | None = None  # the paths its commit changed (or more), when the worker knows them
    # without asking git (``git status`` before its commit): the early conflict check needs no merge to see
    # that a unit touches nothing another did

    @property
    def ok(self) -> bool:
        return self.result.status.ok


TAIL_LINES = 40  # a log tail in an event, a result, a summary or a report: at most these many lines,
TAIL_BYTES = 8192  # ... these many bytes of UTF-8,
TAIL_LINE_CHARS = 2000  # ... and each line cut at these many characters (the log keeps everything)


def bounded_tail(text: str, lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES,
                 line_chars: int = TAIL_LINE_CHARS) -> str:
    """The end of ``text`` that an event, a summary or a report may carry: its last ``lines`` lines, each cut at
    ``line_chars`` characters (with a marker saying so), at most ``max_bytes`` bytes in all (older lines go
    first). An agent that prints one 50 MB line thus never makes a 50 MB event."""
    if len(text) <= max_bytes and text.count("\n") < lines:
        return text
    text = text[-(lines * (line_chars + 200) + 1):]  # the longest result possible: never split a huge string
    kept: list[str] = []
    size = 0
    for line in reversed(text.splitlines()[-lines:]):
        if len(line) > line_chars:
            line = line[:line_chars] + f" [... cut at {line_chars} characters; the log has the whole line]"
        n = len(line.encode("utf-8", "surrogateescape")) + 1
        if size + n > max_bytes:
            if not kept:  # one line over the byte bound: its start, cut to the bound
                kept.append(line.encode("utf-8", "surrogateescape")[:max_bytes - 64].decode("utf-8", "ignore")
                            + " [... cut]")
            break
        kept.append(line)
        size += n
    return "\n".join(reversed(kept))


def totals(outcomes: list[AgentOutcome]) -> AgentOutcome:
    """The last outcome, with cost and tokens summed over every try (retried tries cost money too)."""
    last = outcomes[-1]
    if len(outcomes) == 1:
        return last

    def total(attr: str) -> Any:
        values = [getattr(o, attr) for o in outcomes if getattr(o, attr) is not None]
        return sum(values) if values else None

    return replace(last, **{a: total(a) for a in ("cost_usd", "input_tokens", "output_tokens", "cache_read_tokens",
                                                  "cache_creation_tokens", "turns", "duration_api_ms")})
