"""``distpar mcp``: distpar's tools for agents, on the official MCP SDK, over stdio or streamable HTTP.

Tools: ``plan`` (the dry run), ``run`` (starts a run detached, returns its id at once), ``status``, ``logs``,
``resume``, ``cancel``; each with an input and an output schema. The option arguments of ``plan``, ``run`` and
``resume`` come from the CLI's own click options (``distpar/mcp/options.py``).

Over HTTP the server listens on loopback unless a bearer token is set (``--token-env NAME``, default
``DISTPAR_MCP_TOKEN``); with a token every request must carry ``Authorization: Bearer TOKEN`` or gets 401.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import anyio
from pydantic import BaseModel, Field

from distpar.core.errors import UsageError
from distpar.mcp import options as opts
from distpar.mcp.tools import LOG_BYTES, LOG_BYTES_MAX, MAX_WAIT, ToolFailure, Tools, tool_options

try:
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError as exc:  # the optional extra
    raise UsageError("distpar mcp needs the MCP SDK: pip install 'distpar[mcp]'") from exc

INSTRUCTIONS = """\
distpar runs a multi-batch plan (a markdown file with a ```json dispatch block: the Agent Dispatch Manifest) in
parallel, one agent session per unit, each in its own git worktree, merged back into the branch.
Check a plan with `plan`; start it with `run` (it returns a run_id at once and the run goes on without you);
follow it with `status` (wait_seconds to wait, with progress) and `logs`; stop it with `cancel` (resumable) and
continue it with `resume`."""

Repo = Annotated[str | None, Field(description="The git repository (default: the server's working directory); "
                                               "it must be under a directory the server allows (--allow-repo).")]
PlanPath = Annotated[str | None, Field(description="The plan file (markdown with a ```json dispatch block), "
                                                   "relative to the repository or absolute.")]
PlanText = Annotated[str | None, Field(description="The plan's markdown itself, instead of a path.")]
RunId = Annotated[str, Field(description="The run's id (as run returned it, or a unique prefix).")]


# --- output schemas -------------------------------------------------------------------------------------------

class PlanResult(BaseModel):
    plan_id: str = Field(description="The manifest's plan_id ('' when none).")
    source: str
    batches: int
    units: int = Field(description="Units: one agent session each (a parallel batch has one per agent).")
    rule: str = Field(description="The ordering rule: stages, dag, independent or midpoint.")
    why: str
    target_branch: str | None = None
    preview: dict[str, Any] = Field(description="Units, what each waits for, the predicted timeline per worker.")
    schedule: dict[str, Any]
    warnings: list[str]


class RunStarted(BaseModel):
    run_id: str
    state: str
    repo: str
    plan: str | None = Field(None, description="The plan file the run uses.")
    output: str = Field(description="The file the detached coordinator writes its progress lines to.")
    follow: str | None = None


class Unit(BaseModel):
    unit: str
    worker: str
    state: str = Field(description="pending, running, ok, failed, timeout, skipped, blocked, interrupted")
    result: str | None = Field(None, description="How the agent ended (success, rate_limit, verify_failed, ...).")
    node: str | None = None
    attempt: int | None = None
    seconds: float | None = None
    cost_usd: float | None = None
    error: str | None = None


class RunInfo(BaseModel):
    run_id: str
    state: str = Field(description="As distpar status says: running, ok, failed, conflict, interrupted, error, "
                                   "gate_failed, crashed (its coordinator is gone: resumable).")
    plan: str
    plan_id: str
    started: float
    wall: float
    backend: str
    workers: int
    target: str
    exit_code: int | None = None
    speedup: float | None = None
    cost_usd: float | None = None


class RunDetail(RunInfo):
    done: int = Field(description="Units that have ended.")
    total: int
    running: list[str] = Field(description="The units running now.")
    units: list[Unit]
    landed: str | None = Field(None, description="The commit the work landed as, once merged.")
    conflict: dict[str, Any] | None = None
    errors: list[str] = []
    saved_refs: list[str] = []


class StatusResult(BaseModel):
    run: RunDetail | None = Field(None, description="The run asked for (with run_id).")
    runs: list[RunInfo] = Field(description="Every run, newest first (without run_id).")


class LogsResult(BaseModel):
    run_id: str
    unit: str
    state: str
    path: str
    size: int
    offset: int = Field(description="Byte offset of text in the log.")
    next_offset: int = Field(description="Pass as offset to read on from here.")
    truncated: bool
    text: str = Field(description="The log, with the values of forwarded variables masked.")


class Cancelled(BaseModel):
    run_id: str
    state: str
    pid: int
    signalled: str
    resumable: bool


# --- the tools --------------------------------------------------------------------------------------------------

def build(tools: Tools) -> MCPServer:
    server: MCPServer = MCPServer("distpar", instructions=INSTRUCTIONS)

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(lambda: fn(*args))
        except ToolFailure as exc:
            raise ToolError(str(exc)) from None

    async def plan(plan: PlanPath = None, plan_text: PlanText = None, repo: Repo = None,
                   **options: Any) -> PlanResult:
        """The dry run of a plan: the ordering rule and why, the units and what each waits for, the predicted
        timeline per worker, warnings (shared owns_files, ...). Changes nothing."""
        return PlanResult(**await call(tools.plan, plan, plan_text, repo, options))

    async def run(plan: PlanPath = None, plan_text: PlanText = None, repo: Repo = None,
                  **options: Any) -> RunStarted:
        """Start running a plan, detached: returns its run_id at once (the run goes on without this call, and
        after the server exits). Every check distpar run makes comes first: bad input starts nothing."""
        return RunStarted(**await call(tools.run, plan, plan_text, repo, options))

    async def status(ctx: Context, run_id: Annotated[str | None, Field(description="One run (else: every run).")]
                     = None, repo: Repo = None,
                     wait_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT, description=(
                         "With run_id: wait up to this long for the run to end, sending progress (units done of "
                         "total) to a client that asked for it."))] = 0.0) -> StatusResult:
        """A run's state, its units with their states, cost and what is running now; or every run."""
        result = await call(tools.status, run_id, repo)
        if run_id is None or wait_seconds <= 0:
            return StatusResult(**result)
        deadline = anyio.current_time() + wait_seconds
        last: tuple[int, int, str] | None = None
        while True:
            detail = result["run"]
            now = (detail["done"], detail["total"], detail["state"])
            if now != last:
                running = ", ".join(detail["running"]) or "-"
                await ctx.report_progress(detail["done"], detail["total"] or None,
                                          f"{detail['state']}: {detail['done']}/{detail['total']} units done; "
                                          f"running: {running}")
                last = now
            if detail["state"] != "running" or anyio.current_time() >= deadline:
                return StatusResult(**result)
            await anyio.sleep(min(0.5, max(0.0, deadline - anyio.current_time())))
            result = await call(tools.status, detail["run_id"], repo)

    async def logs(run_id: RunId, unit: Annotated[str | None, Field(description=(
                       "The unit (a batch id, or 2#1 for an agent of a parallel batch); default: the one running "
                       "now, else the last that ended."))] = None,
                   repo: Repo = None,
                   tail: Annotated[int, Field(ge=0, description="The last lines (without offset).")] = 200,
                   offset: Annotated[int | None, Field(ge=0, description=(
                       "Read from this byte offset instead (next_offset of the previous call)."))] = None,
                   max_bytes: Annotated[int, Field(ge=1, le=LOG_BYTES_MAX, description="At most this much text.")]
                   = LOG_BYTES) -> LogsResult:
        """A unit's agent log, bounded (the last lines, or from a byte offset), secrets masked."""
        return LogsResult(**await call(tools.logs, run_id, unit, repo, tail, offset, max_bytes))

    async def resume(run_id: RunId, repo: Repo = None, **options: Any) -> RunStarted:
        """Continue an interrupted, failed or crashed run (or one stopped at a conflict you resolved), detached:
        finished units are not run again."""
        return RunStarted(**await call(tools.resume, run_id, repo, options))

    async def cancel(run_id: RunId, repo: Repo = None,
                     wait_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT, description=(
                         "How long to wait for the run to stop."))] = 60.0) -> Cancelled:
        """Stop a run as Ctrl+C does: its agents stop, their work is saved, the run is resumable."""
        return Cancelled(**await call(tools.cancel, run_id, repo, wait_seconds))

    for fn, derived in ((plan, "plan"), (run, "run"), (status, None), (logs, None), (resume, "resume"),
                        (cancel, None)):
        server.add_tool(with_options(fn, tool_options(derived)) if derived else fn, name=fn.__name__,
                        structured_output=True)
    return server


def with_options(fn: Callable[..., Awaitable[Any]], options: Sequence[opts.Option]) -> Callable[..., Any]:
    """``fn`` (which takes ``**options``) with a signature that lists ``options``: the SDK builds the tool's
    input schema and validates the arguments from it."""
    sig = inspect.signature(fn, eval_str=True)
    fixed = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()
             if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in fixed}
    extra = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=o.annotation, default=o.default)
             for o in options if o.name not in taken]
    new = sig.replace(parameters=[*fixed, *extra])

    async def tool(**kwargs: Any) -> Any:
        return await fn(**kwargs)

    tool.__signature__ = new  # type: ignore[attr-defined]
    tool.__annotations__ = {p.name: p.annotation for p in new.parameters.values()} | {"return": sig.return_annotation}
    tool.__name__, tool.__doc__ = fn.__name__, fn.__doc__
    return tool


# --- transports -------------------------------------------------------------------------------------------------

def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--http {text}: expected HOST:PORT (e.g. 127.0.0.1:8765)")
    return (host or "127.0.0.1").strip("[]"), int(port)


class BearerAuth:
    """ASGI middleware: every request must carry ``Authorization: Bearer TOKEN`` (else 401)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error":"unauthorized: send Authorization: Bearer <token>"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def serve(http_bind: str | None, token_env: str, allow_repo: Sequence[Path]) -> None:
    tools = Tools(list(allow_repo), Path.cwd())
    server = build(tools)
    if http_bind is None:
        server.run("stdio")
        return
    host, port = parse_bind(http_bind)
    token = os.environ.get(token_env) or None
    if not _loopback(host) and not token:
        raise UsageError(f"--http {http_bind}: listening beyond loopback needs a bearer token, and ${token_env} "
                         "is not set", hint=f"set {token_env} (or name another variable with --token-env NAME), "
                                            "or bind 127.0.0.1")
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    security = None if _loopback(host) else TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app: Any = server.streamable_http_app(host=host, transport_security=security)
    if token:
        app = BearerAuth(app, token)
    print(f"distpar mcp: streamable HTTP on http://{http_bind}/mcp" + (" (bearer token required)" if token else ""),
          file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
