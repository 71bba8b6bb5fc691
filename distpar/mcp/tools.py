"""What the MCP tools do, as plain functions over the journal and the CLI's own checks (no MCP types here).

A run starts detached: the CLI's every check runs in this process first (``distpar run --check-only``, the very
command, so the messages are the CLI's), then ``python -m distpar run --run-id ID`` starts in a session of its
own, its output in ``<state dir>/mcp/ID.out``. It is journaled as any run, outlives the server, and ``distpar
status`` sees it. ``cancel`` is Ctrl+C: SIGINT to the run's coordinator, then the journal says ``interrupted``.
Every text a tool returns from a run (logs, errors, output) is masked like the logs: the values of the run's
forwarded variables never leave.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from distpar.cli import main as cli_main  # the module: distpar.cli re-exports nothing
from distpar.coordinator import runtime
from distpar.coordinator.journal import Journal
from distpar.core.errors import DistparError
from distpar.core.masking import mask
from distpar.core.model import worker_label
from distpar.infra import gitops
from distpar.infra.paths import state_dir
from distpar.mcp import options as opts
from distpar.ops.status import run_state

TERMINAL_UNIT = ("ok", "failed", "timeout", "skipped", "blocked", "interrupted")
START_WAIT = 60.0  # seconds for a detached run to be journaled (or to fail its start)
MAX_WAIT = 600.0  # the longest a tool call waits for a run (status wait_seconds, cancel)
LOG_BYTES = 64 * 1024  # default cap of a logs answer
LOG_BYTES_MAX = 1024 * 1024


class ToolFailure(Exception):
    """Bad input or a refusal: the message goes to the client as a tool error, and nothing was started."""


def _command(name: str) -> click.Command:
    cmd = cli_main.cli.commands.get(name)
    assert cmd is not None, name
    return cmd


def tool_options(name: str) -> list[opts.Option]:
    """The option arguments of tool ``name``, derived from ``distpar NAME``'s click options."""
    return opts.derive(_command(name), opts.DENY[name])


def _message(exc: BaseException) -> str:
    if isinstance(exc, DistparError):
        return exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    return str(exc)


@dataclass
class Tools:
    """The tools' state: which repositories they may use, the server's directory, the runs it started."""

    allowed: list[Path]
    cwd: Path

    def __post_init__(self) -> None:
        self.allowed = [Path(a).expanduser().resolve() for a in self.allowed] or [self.cwd.resolve()]
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    # --- the repository -------------------------------------------------------------------------------------

    def repo(self, repo: str | None) -> Path:
        """The repository root ``repo`` (default: the server's directory) names, if the allow-list has it."""
        path = Path(repo).expanduser() if repo else self.cwd
        path = (self.cwd / path) if not path.is_absolute() else path
        if not path.is_dir():
            raise ToolFailure(f"repo {repo or str(path)!r}: no such directory")
        try:
            root = gitops.repo_root(path).resolve()
        except DistparError as exc:
            raise ToolFailure(f"repo {str(path)!r}: {_message(exc)}") from None
        if not any(root == a or root.is_relative_to(a) for a in self.allowed):
            raise ToolFailure(f"repo {str(root)!r} is not under an allowed directory "
                              f"({', '.join(map(str, self.allowed))}); start distpar mcp with --allow-repo PATH")
        return root

    def journal(self, root: Path) -> Journal:
        return runtime.open_journal(root)

    def _scratch(self, root: Path) -> Path:
        d = state_dir(root) / "mcp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _plan_file(self, root: Path, plan: str | None, plan_text: str | None, name: str) -> Path:
        """The plan to use: ``plan`` (a path, relative to the repository) or ``plan_text`` written to a file."""
        if (plan is None) == (plan_text is None):
            raise ToolFailure("give exactly one of plan (a path) and plan_text (the plan's markdown)")
        if plan_text is not None:
            path = self._scratch(root) / f"{name}.plan.md"
            path.write_text(plan_text, encoding="utf-8")
            return path
        assert plan is not None
        p = Path(plan).expanduser()
        return p if p.is_absolute() else root / p

    # --- plan -------------------------------------------------------------------------------------------------

    def plan(self, plan: str | None, plan_text: str | None, repo: str | None, values: Mapping[str, Any]) -> dict:
        """The dry run: ``distpar plan FILE --json`` (the CLI's own output and errors)."""
        root = self.repo(repo)
        name = "plan-" + runtime.new_run_id()
        path = self._plan_file(root, plan, plan_text, name)
        try:
            argv = ["plan", str(path), "--json", "--repo", str(root),
                    *opts.argv(tool_options("plan"), values, root)]
            proc = subprocess.run([sys.executable, "-m", "distpar", *argv], cwd=root, capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL, timeout=120)
        finally:
            if plan_text is not None:
                path.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise ToolFailure(_cli_error(proc.stderr) or f"distpar plan exited {proc.returncode}")
        data: dict[str, Any] = json.loads(proc.stdout)
        if plan_text is not None:
            data["source"] = "plan_text"
        return data

    # --- run and resume -------------------------------------------------------------------------------------

    def run(self, plan: str | None, plan_text: str | None, repo: str | None, values: Mapping[str, Any]) -> dict:
        root = self.repo(repo)
        run_id = runtime.new_run_id()
        path = self._plan_file(root, plan, plan_text, run_id)
        argv = [str(path), "--repo", str(root), *opts.argv(tool_options("run"), values, root)]
        try:
            _command("run").main(args=[*argv, "--check-only"], prog_name="distpar run", standalone_mode=False)
        except (DistparError, click.ClickException) as exc:
            if plan_text is not None:
                path.unlink(missing_ok=True)
            raise ToolFailure(_message(exc)) from None
        secrets = _secrets(values.get("forward_env") or ())
        self._start(root, run_id, ["run", *argv, "--run-id", run_id], secrets)
        return {"run_id": run_id, "state": "running", "repo": str(root), "plan": str(path),
                "output": str(self._scratch(root) / f"{run_id}.out"),
                "follow": f"status with run_id {run_id} (wait_seconds to wait for it), logs for a unit's log; "
                          f"in a shell: distpar status {run_id}"}

    def resume(self, run_id: str, repo: str | None, values: Mapping[str, Any]) -> dict:
        root = self.repo(repo)
        with self._open(root) as journal:
            try:
                run = runtime.load_run(journal, run_id)  # the CLI's refusals: unknown, finished ok, still live
            except DistparError as exc:
                raise ToolFailure(_message(exc)) from None
        argv = ["resume", run["id"], "--repo", str(root), *opts.argv(tool_options("resume"), values, root)]
        self._start(root, run["id"], argv, _secrets(_forwarded(run)), since=time.time())
        return {"run_id": run["id"], "state": "running", "repo": str(root),
                "output": str(self._scratch(root) / f"{run['id']}.out")}

    def _start(self, root: Path, run_id: str, argv: list[str], secrets: list[str], since: float = 0.0) -> None:
        """Start ``distpar ARGV`` detached and wait (bounded) until the journal has the run running (resumed
        after ``since``), or the process ended first: then its error is the tool's."""
        out_path = self._scratch(root) / f"{run_id}.out"
        with out_path.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "distpar", *argv], cwd=root, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.children[run_id] = proc
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline:
            with self._open(root) as journal:
                run = journal.run_exact(run_id)
                if run is not None and run["state"] == "running" and run["pid"] == proc.pid and (
                        not since or any(e.kind == "run_resumed" and e.ts >= since - 1
                                         for e in journal.events(run_id))):
                    return
            if proc.poll() is not None:
                with self._open(root) as journal:
                    run = journal.run_exact(run_id)
                if run is not None and run["state"] != "running" and proc.returncode is not None:
                    return  # it ran and ended already (a fast run)
                text = mask(out_path.read_text(errors="replace"), secrets)
                raise ToolFailure(_cli_error(text) or f"distpar exited {proc.returncode}: {text[-2000:]}")
            time.sleep(0.1)
        raise ToolFailure(f"run {run_id} did not start within {START_WAIT:g}s (its output: {out_path})")

    # --- status -----------------------------------------------------------------------------------------------

    def status(self, run_id: str | None, repo: str | None) -> dict:
        root = self.repo(repo)
        with self._open(root) as journal:
            if run_id is None:
                return {"runs": [self._run_info(journal, r) for r in journal.runs()], "run": None}
            run = journal.run(run_id)
            if run is None:
                raise ToolFailure(f"no run {run_id!r} in {journal.path}")
            return {"runs": [], "run": self._run_detail(journal, run)}

    def _run_info(self, journal: Journal, run: dict[str, Any]) -> dict[str, Any]:
        state, wall = run_state(journal, run)  # as `distpar status` says it (crashed: coordinator gone)
        summ = json.loads(run["summary"]) if run["summary"] else {}
        return {"run_id": run["id"], "state": state, "plan": run["plan_path"], "plan_id": run["plan_id"],
                "started": run["started"], "wall": round(wall, 3), "backend": run["backend"],
                "workers": run["workers"], "target": run["target"], "exit_code": run["exit_code"],
                "speedup": summ.get("speedup"), "cost_usd": run.get("cost_usd")}

    def _run_detail(self, journal: Journal, run: dict[str, Any]) -> dict[str, Any]:
        secrets = _secrets(_forwarded(run))
        rows = journal.units(run["id"])
        costs = [b["cost_usd"] for b in rows if b["cost_usd"] is not None]
        info = self._run_info(journal, run)
        summ = json.loads(run["summary"]) if run["summary"] else {}
        units = [{"unit": b["unit_id"], "worker": worker_label(b["worker"]), "state": b["state"],
                  "result": b["result_class"], "node": b["node"], "attempt": b["attempt"],
                  "seconds": round(b["ended"] - b["started"], 3) if b["ended"] and b["started"] else None,
                  "cost_usd": b["cost_usd"],
                  "error": mask(b["error"], secrets) if b["error"] and b["state"] != "ok" else None}
                 for b in rows]
        return {**info, "cost_usd": sum(costs) if costs else None,
                "done": sum(1 for b in rows if b["state"] in TERMINAL_UNIT), "total": len(rows),
                "running": [b["unit_id"] for b in rows if b["state"] == "running"], "units": units,
                "landed": summ.get("landed"), "conflict": summ.get("conflict"),
                "errors": [mask(str(e), secrets) for e in summ.get("errors") or ()],
                "saved_refs": summ.get("saved_refs") or []}

    # --- logs ---------------------------------------------------------------------------------------------------

    def logs(self, run_id: str, unit: str | None, repo: str | None, tail: int, offset: int | None,
             max_bytes: int) -> dict:
        from distpar.ops import logs as logs_mod

        root = self.repo(repo)
        with self._open(root) as journal:
            run = journal.run(run_id)
            if run is None:
                raise ToolFailure(f"no run {run_id!r} in {journal.path}")
            rows = journal.units(run["id"])
        run_dir = state_dir(Path(run["repo"])) / "runs" / run["id"]
        if unit is not None:
            row = next((b for b in rows if b["unit_id"] == unit), None)
            if row is None:
                raise ToolFailure(f"run {run['id']} has no unit {unit!r} (units: "
                                  f"{', '.join(b['unit_id'] for b in rows)})")
        else:
            ran = [b for b in rows if b["started"]]
            row = logs_mod.running_batch(rows) or (max(ran, key=lambda b: b["ended"] or 0.0) if ran else None)
            if row is None:
                raise ToolFailure(f"run {run['id']}: no unit has started yet")
        path = logs_mod.log_path(row, run_dir)
        if path is None or not path.is_file():
            why = "it has not started" if row["state"] in ("pending", "skipped", "blocked") else f"no file {path}"
            raise ToolFailure(f"unit {row['unit_id']} of run {run['id']} has no log: {why}")
        cap = max(1, min(max_bytes, LOG_BYTES_MAX))
        size = path.stat().st_size
        with path.open("rb") as f:
            if offset is not None:
                start = min(max(0, offset), size)
                f.seek(start)
                data = f.read(cap)
            else:
                start = max(0, size - cap)
                f.seek(start)
                data = f.read(cap)
                lines = data.splitlines(keepends=True)
                if start > 0 and lines:
                    lines = lines[1:]  # a partial first line
                    start = size - sum(len(x) for x in lines)
                if tail >= 0 and len(lines) > tail:
                    lines = lines[len(lines) - tail:]
                    start = size - sum(len(x) for x in lines)
                data = b"".join(lines)
        text = mask(data.decode("utf-8", "replace"), _secrets(_forwarded(run)))
        return {"run_id": run["id"], "unit": row["unit_id"], "state": row["state"], "path": str(path),
                "size": size, "offset": start, "next_offset": start + len(data),
                "truncated": start > 0 or start + len(data) < size, "text": text}

    # --- cancel -------------------------------------------------------------------------------------------------

    def cancel(self, run_id: str, repo: str | None, wait_seconds: float,
               sleep: Callable[[float], None] = time.sleep) -> dict:
        root = self.repo(repo)
        with self._open(root) as journal:
            run = journal.run(run_id)
            if run is None:
                raise ToolFailure(f"no run {run_id!r} in {journal.path}")
            if run["state"] != "running":
                raise ToolFailure(f"run {run['id']} is not running (it is {run['state']})")
            if not runtime.run_is_live(journal, run) or not run["pid"]:
                raise ToolFailure(f"run {run['id']}: its coordinator (pid {run['pid']}) is gone; the run crashed "
                                  f"and is resumable (resume), nothing to cancel")
            pid = int(run["pid"])
        os.kill(pid, signal.SIGINT)  # Ctrl+C: agents stopped, work saved, resumable
        deadline = time.monotonic() + max(0.0, min(wait_seconds, MAX_WAIT))
        state = "running"
        while True:
            with self._open(root) as journal:
                current = journal.run_exact(run["id"])
                state = current["state"] if current else "running"
            if state != "running" or time.monotonic() >= deadline:
                break
            sleep(0.1)
        return {"run_id": run["id"], "state": state, "pid": pid, "signalled": "SIGINT",
                "resumable": state in ("interrupted", "failed", "conflict", "error", "gate_failed")}

    # --- plumbing -----------------------------------------------------------------------------------------------

    def _open(self, root: Path) -> _Opened:
        return _Opened(self.journal(root))

    def close(self) -> None:
        """Nothing to stop: the runs started here are detached and carry on."""


class _Opened:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def __enter__(self) -> Journal:
        return self.journal

    def __exit__(self, *exc: object) -> None:
        self.journal.close()


def _forwarded(run: dict[str, Any]) -> list[str]:
    try:
        return list(json.loads(run["options"] or "{}").get("forward_env") or [])
    except (ValueError, AttributeError):
        return []


def _secrets(names: Any) -> list[str]:
    """The values of the forwarded variables here (what masking hides)."""
    return [os.environ[n] for n in names if os.environ.get(n)]


def _cli_error(stderr: str) -> str:
    """The CLI's ``Error:`` line (and its ``Hint:``), as a user of the CLI would read them."""
    lines = [ln.strip() for ln in stderr.splitlines()]
    picked = [ln.removeprefix("Error: ") for ln in lines if ln.startswith("Error: ")]
    hints = [ln for ln in lines if ln.startswith("Hint: ")]
    if not picked:
        return ""
    return picked[-1] + (f" ({hints[-1].lower()})" if hints else "")
