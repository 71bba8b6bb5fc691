"""--reuse-workspaces on a real three-node Ray cluster: the nodes keep the repository's workspaces under their work
directory, the next run's actors take them (setup kept), a damaged one is made anew and said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distpar import agents
from distpar.backends.ray.node import pool_dir
from distpar.coordinator.options import RunOptions
from distpar.coordinator.prepare import prepare_run
from distpar.core.errors import ExitCode
from distpar.core.model import AgentConfig
from distpar.infra import paths
from distpar.testing.builders import fake_batch, make_repo, sh_git, write_plan
from tests.ray.conftest import RayCluster, node_env

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_ray_nodes_keep_their_workspaces_for_the_next_run(ray_cluster: RayCluster, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "# demo\n", ".gitignore": "deps/\n", "package.json": "{}\n"})
    setup_log = tmp_path / "setup-runs.log"
    setup = f"mkdir -p deps && echo ran > deps/installed && echo $PWD >> {setup_log}"

    def run(ids: list[int]) -> list[dict[str, Any]]:
        batches = [fake_batch(i, writes={f"out{i}.txt": str(i)}, extra=[f"@fake copy deps/installed seen{i}.txt"])
                   for i in ids]
        plan = write_plan(tmp_path / f"plan-{ids[0]}.md", batches, independent=True)
        options = RunOptions(agent=agents.agent_config("fake", AgentConfig()), backend="ray",
                             backend_options={"address": None}, setup=setup, setup_key=("package.json",),
                             reuse_workspaces=True)
        prepared = prepare_run(plan, options, repo=repo, workers=3)
        report = prepared.runner.run()
        assert report.exit_code == ExitCode.OK, (report.errors, [r.error for r in report.results])
        events = [e for e in prepared.journal.events(report.run_id) if e.kind == "workspace_ready"]
        return [dict(e.data, worker=e.worker) for e in sorted(events, key=lambda e: e.worker or 0)]

    with node_env(ray_cluster.base):  # where the nodes keep them (the nodes' environment)
        where = pool_dir(paths.repo_key(repo))
    first = run([1, 2, 3])
    assert [e["how"] for e in first] == ["new"] * 3 and {Path(e["path"]).parent for e in first} == {where}
    assert len(setup_log.read_text().splitlines()) == 3
    second = run([4, 5, 6])
    assert [(e["how"], e["setup"]) for e in second] == [("reused", "kept")] * 3
    assert {e["path"] for e in second} == {e["path"] for e in first}
    assert len(setup_log.read_text().splitlines()) == 3
    assert (repo / "seen5.txt").read_text() == "ran\n" and (repo / "out6.txt").read_text() == "6"

    damaged = Path(first[1]["path"])
    (damaged / ".git" / "HEAD").write_text("ref: refs/heads/nowhere\n")
    third = run([7, 8, 9])
    rebuilt = [e for e in third if e["how"] == "rebuilt"]
    assert len(rebuilt) == 1 and rebuilt[0]["path"] == str(damaged) and "is damaged" in rebuilt[0]["reason"]
    assert rebuilt[0]["setup"] == "ran" and sh_git(repo, "show", "HEAD:out9.txt") == "9"
