"""``distpar diff`` and ``distpar land``: look at a run stopped for review (``--review``) and land it, all of it or
without some units. Registered on the main group by ``distpar.cli.main``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from distpar.coordinator.journal import Journal
from distpar.infra import gitops


def _repo_and_journal(repo_path: Path) -> tuple[Path, Journal]:
    from distpar.coordinator import runtime

    repo = gitops.repo_root(repo_path)
    return repo, runtime.open_journal(repo)


@click.command("diff")
@click.argument("run_id")
@click.argument("unit", required=False)
@click.option("--stat", is_flag=True, help="Only the files changed and how much (git diff --stat).")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def diff_cmd(run_id: str, unit: str | None, stat: bool, repo_path: Path) -> None:
    """A unit's diff against its base; without UNIT, the integrated diff (the run's start to its integration)."""
    from distpar.coordinator import review

    repo, journal = _repo_and_journal(repo_path)
    click.echo(review.diff(repo, journal, run_id, unit, stat=stat), nl=False)


@click.command("land")
@click.argument("run_id")
@click.option("--without", "without", multiple=True, metavar="UNIT",
              help="Land without this unit (repeatable); the units depending on it are named and left out too, the "
                   "rest merged again and gated again.")
@click.option("--repo", "repo_path", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def land_cmd(run_id: str, without: tuple[str, ...], repo_path: Path, as_json: bool) -> None:
    """Land a run stopped for review (--review): the gate runs again when the target moved or units are left out;
    the target moves only after it passes."""
    from distpar.coordinator import review

    repo, journal = _repo_and_journal(repo_path)
    res = review.land_reviewed(repo, journal, run_id, without)
    if as_json:
        click.echo(json.dumps({"exit_code": int(res.exit_code), "landed": res.landed, "left_out": res.left_out,
                               "dependents": res.dependents, "gated": res.gated, "saved": res.saved,
                               "conflict": res.conflict.to_dict() if res.conflict else None,
                               "gate": res.gate.to_dict() if res.gate else None,
                               "bisected": res.bisected.to_dict() if res.bisected else None,
                               "pushed": res.pushed}))
        sys.exit(int(res.exit_code))
    if res.left_out:
        asked = [u for u in res.left_out if u not in res.dependents]
        click.echo(f"left out: {', '.join(asked)}"
                   + (f"; and, since they depend on it, {', '.join(res.dependents)}" if res.dependents else ""))
    if res.gated:
        click.echo("the gate ran again on the result: " + ("passed" if res.gate is None else "failed"))
    if res.gate is not None:
        click.echo(res.gate.describe())
        if res.bisected is not None:
            click.echo(res.bisected.describe())
        click.echo("nothing landed; the run is still waiting for review")
    if res.conflict is not None:
        c = res.conflict
        click.echo(f"merge conflict ({c.stage}): {c.theirs} into {c.ours} in {', '.join(c.files)}; nothing landed")
        for cmd in c.commands:
            click.echo(f"  {cmd}")
    if res.landed:
        click.echo(f"merged into {res.target} ({res.landed[:12]})")
    if res.saved:
        click.echo("kept on: " + ", ".join(res.saved))
    sys.exit(int(res.exit_code))
