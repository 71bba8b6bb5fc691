"""The commands that look at runs and the machine: ``status``, ``logs``, ``report``, ``clean``, ``init``,
``agents`` (registered on the group by ``distpar.cli.main``)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from distpar import agents
from distpar.cli.output import err, print_totals
from distpar.core.errors import ExitCode, UsageError
from distpar.core.model import worker_label
from distpar.infra import gitops, paths
from distpar.ops.report import secs
from distpar.ops.status import run_state


@click.command("status")
@click.argument("run_id", required=False)
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--json", "as_json", is_flag=True)
def status_cmd(run_id: str | None, repo_path: Path, as_json: bool) -> None:
    """List runs, newest first, or show one run per worker and batch."""
    from distpar.coordinator import runtime

    repo = gitops.repo_root(repo_path) if not os.environ.get("DISTPAR_HOME") else repo_path
    journal = runtime.open_journal(Path(repo))
    if run_id is None:
        rows = journal.runs()
        if as_json:
            click.echo(json.dumps(rows, indent=2, default=str))
            return
        if not rows:
            click.echo("no runs yet")
            return
        click.echo(f"{'RUN':<22} {'PLAN':<20} {'STARTED':<16} {'STATE':<12} {'BATCHES':<18} {'WALL':>8} "
                   f"{'SPEEDUP':>8} {'COST':>9}")
        for r in rows:
            summ = json.loads(r["summary"]) if r["summary"] else {}
            state, wall = run_state(journal, r)
            speed = f"{summ['speedup']:.2f}x" if "speedup" in summ else "-"
            cost = f"${r['cost_usd']:.4f}" if r["cost_usd"] is not None else "-"
            counts = f"{r['n_ok']}/{r['n_units']} ok" + (f", {r['n_failed']} failed" if r["n_failed"] else "")
            plan = Path(r["plan_path"]).name
            plan = plan if len(plan) <= 20 else plan[:19] + "~"
            click.echo(f"{r['id']:<22} {plan:<20} {_when(r['started']):<16} {state:<12} {counts:<18} "
                       f"{secs(wall):>8} {speed:>8} {cost:>9}")
        return
    run = journal.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} in {journal.path}")
    batches = journal.units(run["id"])
    if as_json:
        click.echo(json.dumps({"run": run, "units": batches}, indent=2, default=str))
        return
    summ = json.loads(run["summary"]) if run["summary"] else {}
    state, wall = run_state(journal, run)
    agent_time = sum(b["ended"] - b["started"] for b in batches if b["ended"] and b["started"])
    costs = [b["cost_usd"] for b in batches if b["cost_usd"] is not None]
    click.echo(f"run {run['id']}: {state}")
    click.echo(f"  plan {run['plan_path']}" + (f" ({run['plan_id']})" if run["plan_id"] else "")
               + f"; backend {run['backend']}, {run['workers']} worker(s), strategy {run['strategy']}; "
               f"into {run['target']}")
    click.echo(f"  started {_when(run['started'])}; wall {secs(wall)}, serial agent time {secs(agent_time)}, "
               f"speedup {agent_time / wall if wall else 0:.2f}x; cost " + (f"${sum(costs):.4f}" if costs else "-"))
    for e in journal.events(run["id"]):
        if e.kind == "workspace_setup":
            click.echo(f"  setup on {worker_label(e.worker)}" + (f" ({e.data['node']})" if e.data.get("node") else "")
                       + f": {'ok' if e.data['ok'] else 'FAILED'} in {secs(e.data['seconds'])}")
        elif e.kind == "workspace_ready" and e.data.get("how") != "new":  # --reuse-workspaces
            click.echo(f"  workspace of {worker_label(e.worker)}: {e.data['how']} (setup {e.data['setup']}), ready in "
                       f"{secs(e.data['seconds'])}" + (f"; {e.data['reason']}" if e.data.get("reason") else ""))
        elif e.kind == "verify_merged":
            click.echo(f"  --verify-merged: {'ok' if e.data['ok'] else 'FAILED'} in {secs(e.data['seconds'])}")
        elif e.kind == "unit_rerun":
            click.echo(f"  rerun {e.data['count']} of {e.unit_id} (the merge queue): {e.data['reason']}")
        elif e.kind == "verify_bisected":
            click.echo(f"  {e.data.get('description') or e.kind}")
        elif e.kind == "verify_fix":
            click.echo(f"  fix unit {e.unit_id}: {e.data['status']}"
                       + (f", committed {str(e.data['commit'])[:12]} on {e.data['branch']}" if e.data.get("commit")
                          else f" ({e.data.get('error')})"))
        elif e.kind == "review_ready":
            click.echo(f"  integrated and gated for review ({e.data['head'][:12]}): distpar diff {run['id']} "
                       f"[UNIT]; distpar land {run['id']} [--without UNIT...]")
    click.echo(f"{'WORKER':<7} {'BATCH':<14} {'STATE':<12} {'RESULT':<16} {'NODE':<18} {'DURATION':>9} "
               f"{'COST':>9} {'ATTEMPT':>7}")
    for b in sorted(batches, key=lambda b: (b["worker"], b["position"])):
        dur = secs(b["ended"] - b["started"]) if b["ended"] and b["started"] else "-"
        cost = f"${b['cost_usd']:.4f}" if b["cost_usd"] is not None else "-"
        click.echo(f"{worker_label(b['worker']):<7} {b['unit_id']:<14} {b['state']:<12} "
                   f"{b['result_class'] or '-':<16} "
                   f"{b['node'] or '-':<18} {dur:>9} {cost:>9} {b['attempt'] or '-':>7}")
        if b["error"] and b["state"] != "ok":
            click.echo(f"{'':<8}{b['error']}")
    print_totals([(b["worker"], (b["ended"] - b["started"]) if b["ended"] and b["started"] else 0.0,
                    b["cost_usd"], b["input_tokens"], b["output_tokens"]) for b in batches])
    conflict = summ.get("conflict")
    if conflict:
        click.echo(f"merge conflict ({conflict['stage']}): {conflict['theirs']} into {conflict['ours']}: "
                   + ", ".join(conflict["files"]))
    if summ.get("branches"):
        click.echo("branches kept: " + ", ".join(summ["branches"]))
    if summ.get("saved_refs"):
        click.echo("unfinished work saved on: " + ", ".join(summ["saved_refs"]))


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _open_journal(repo_path: Path) -> Any:
    """The journal of the repository at ``repo_path`` (or the one DISTPAR_HOME points to)."""
    from distpar.coordinator import runtime

    repo = gitops.repo_root(repo_path) if not os.environ.get("DISTPAR_HOME") else repo_path
    return runtime.open_journal(Path(repo))


def _find_run(journal: Any, run_id: str) -> dict[str, Any]:
    run = journal.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} in {journal.path}")
    return dict(run)


@click.command("logs")
@click.argument("run_id")
@click.option("--batch", "batch_id", default=None, metavar="ID", help="Only this batch's log.")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing a running batch's log until the batch ends (bounded by its timeout).")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def logs_cmd(run_id: str, batch_id: str | None, follow: bool, repo_path: Path) -> None:
    """Print the agent logs of RUN_ID (every batch that ran, or one with --batch)."""
    from distpar.ops import logs

    journal = _open_journal(repo_path)
    run = _find_run(journal, run_id)
    run_dir = paths.state_dir(Path(run["repo"])) / "runs" / run["id"]
    rows = journal.units(run["id"])
    if batch_id is not None:
        rows = [b for b in rows if b["unit_id"] == batch_id]
        if not rows:
            raise UsageError(f"run {run['id']} has no batch {batch_id!r}")
    if follow:
        row = rows[0] if batch_id is not None else logs.running_batch(rows)
        if row is None:
            raise UsageError(f"run {run['id']} has no running batch to follow"
                             + ("" if run["state"] == "running" else f" (the run is {run['state']})"))
        for chunk in logs.follow(journal, run, row["unit_id"], run_dir):
            click.echo(chunk, nl=False)
        return
    shown = 0
    for b in rows:
        path = logs.log_path(b, run_dir)
        if path is None or not path.is_file():
            if batch_id is not None:
                why = "it has not started" if b["state"] in ("pending", "skipped", "blocked") else f"no file {path}"
                raise UsageError(f"batch {b['unit_id']} of run {run['id']} has no log: {why}")
            continue
        if len(rows) > 1:
            where = worker_label(b["worker"])
            click.echo(f"{'' if shown == 0 else chr(10)}==> batch {b['unit_id']} ({where}, {b['state']}): {path} <==")
        click.echo(path.read_text(errors="replace"), nl=False)
        shown += 1
    if not shown and batch_id is None:
        err(f"run {run['id']}: no batch has a log yet")


@click.command("report")
@click.argument("run_id")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="Write the report to this file (one self-contained page).")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def report_cmd(run_id: str, html_file: Path, repo_path: Path) -> None:
    """Write an HTML report of RUN_ID: timeline, dependency graph, durations, cost, failures and conflicts."""
    from distpar.ops import report

    journal = _open_journal(repo_path)
    run = _find_run(journal, run_id)
    html_file.write_text(report.html_report(journal, run["id"]), encoding="utf-8")
    click.echo(f"wrote {html_file}")


@click.command("clean")
@click.argument("run_id", required=False)
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be removed and what kept.")
@click.option("--force", is_flag=True, help="Also remove branches, refs and worktrees holding unmerged work.")
@click.option("--workspaces", is_flag=True,
              help="Also remove the workspaces --reuse-workspaces keeps for this repository on this machine (those "
                   "no run holds; what they hold that is not in the repository is saved on refs first).")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def clean_cmd(run_id: str | None, dry_run: bool, force: bool, workspaces: bool, repo_path: Path) -> None:
    """Remove what finished runs left (worktrees, branches, refs, logs) and sweep what crashed runs orphaned.

    Live runs are never touched; work not merged into a run's target is kept unless --force."""
    from distpar.coordinator import runtime
    from distpar.ops import clean

    repo = gitops.repo_root(repo_path)
    if workspaces:
        pooled = clean.clean_workspaces(repo, dry_run)
        for path, action, reason in pooled:
            click.echo(f"{action:<12} {'workspace':<9} {path}  ({reason})")
        if not pooled:
            click.echo("no pooled workspaces")
    journal = runtime.open_journal(repo)
    items = clean.plan_clean(repo, paths.state_dir(repo), journal, run_id, force)
    if not items:
        click.echo("nothing to clean")
        return
    verb = {"remove": "remove", "kill": "kill", "keep": "keep"}
    for it in items:
        action = ("would " if dry_run and it.removes else "") + verb[it.action]
        click.echo(f"{action:<12} {it.kind:<9} {it.name}  ({it.reason})")
    if dry_run:
        return
    failures = clean.apply_clean(repo, items, journal)
    for it, why in failures:
        err(f"could not remove {it.kind} {it.name}: {why}", fg="red")
    removed = sum(1 for i in items if i.removes) - len(failures)
    kept = sum(1 for i in items if not i.removes)
    click.echo(f"removed {removed}, kept {kept}" + (f", {len(failures)} failed" if failures else ""))
    if failures:
        sys.exit(int(ExitCode.BACKEND))


@click.command("init")
@click.argument("path", type=click.Path(path_type=Path), default=Path("plan.md"))
def init_cmd(path: Path) -> None:
    """Write a commented plan skeleton to PATH (default plan.md; never over an existing file)."""
    from distpar.ops.scaffold import write_skeleton

    written = write_skeleton(path)
    click.echo(f"wrote {written}; see what it would do: distpar plan {written}")


@click.command("agents")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=agents.VERSION_TIMEOUT,
              show_default=True, help="Seconds to wait for each CLI's --version.")
@click.option("--json", "as_json", is_flag=True)
def agents_cmd(timeout: float, as_json: bool) -> None:
    """List the agent presets installed here (built-ins and plugins of the distpar.agents entry-point group):
    whether each CLI is installed, its version, and the API key variables it reads (names only;
    $DISTPAR_AGENT_<PRESET>_BIN overrides the command)."""
    probes = [agents.probe(name, timeout=timeout) for name in agents.preset_names()]
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in probes], indent=2))
        return
    click.echo(f"{'PRESET':<8} {'INSTALLED':<10} {'VERSION':<40} KEY VARIABLES (set here)")
    for p in probes:
        installed = "yes" if p.version else ("broken" if p.path else "no")
        keys = ", ".join(k + (" (set)" if k in p.keys_set else "") for k in p.key_vars) or "-"
        version = (p.version or "-")[:40]
        click.echo(f"{p.name:<8} {installed:<10} {version:<40} {keys}")
        click.echo(f"{'':<8} {' '.join(p.command)}: {p.description}" + (f"; {p.error}" if p.error else ""))
