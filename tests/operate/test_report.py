"""The HTML report, rendered by a real browser (Debian's headless Chromium): timeline, graph, problems."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from distpar.core.model import worker_label
from distpar.testing.builders import fake_batch, make_repo, write_plan
from tests.conftest import run_distpar
from tests.operate.conftest import journal, only_run_id

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with everything that could reach the network switched off; its whole process group is
    killed afterwards, so no helper outlives the test."""
    assert CHROMIUM, "chromium is not installed (apt-get install -y chromium)"
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, url]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, errs = proc.communicate(timeout=90)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, errs)


def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plan = write_plan(tmp_path / "plan.md", [
        fake_batch("setup", writes={"a.txt": "a\n"}, sleep=0.3, description="create the package"),
        fake_batch("api", writes={"b.txt": "b\n"}, sleep=0.5, description="add the <API> & its tests"),
        fake_batch("docs", writes={"c.txt": "c\n"}, sleep=0.2),
        fake_batch("cli", extra=["@fake append a.txt 'cli'"], depends_on=["setup", "api"]),
        fake_batch("lint", extra=["@fake fail 3 'ruff found 4 errors'"], depends_on=["docs"]),
        fake_batch("release", writes={"r.txt": "r"}, depends_on=["lint"]),
    ])
    res = run_distpar("run", str(plan), "--workers", "3", "--agent", "fake", "-q", cwd=repo)
    assert res.returncode == 1, res.stderr
    run_id = only_run_id()
    out = tmp_path / "report.html"
    res = run_distpar("report", run_id, "--html", str(out), cwd=repo)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"wrote {out}"
    page = out.read_text()
    # Self-contained: nothing to fetch, no script.
    assert not re.search(r"""(src|href)\s*=|@import|url\((?!#)|<script|<link""", page, re.I)
    assert "&lt;API&gt; &amp; its tests" in page  # plan text is escaped

    dom = chromium(tmp_path, out.as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    j = journal()
    rows = {b["unit_id"]: b for b in j.units(run_id)}
    j.close()
    bars = re.findall(r'<g class="bar" ([^>]*)>', html.split('id="gantt-worker"', 1)[1].split("</svg>", 1)[0])
    assert len(bars) == len(rows) == 6  # one bar per batch
    attrs = [dict(re.findall(r'data-([a-z]+)="([^"]*)"', b)) for b in bars]
    assert {a["batch"]: a["status"] for a in attrs} == {k: r["state"] for k, r in rows.items()}
    assert {a["batch"]: a["worker"] for a in attrs} == {k: worker_label(r["worker"]) for k, r in rows.items()}
    for a in attrs:
        ran = rows[a["batch"]]["state"] in ("ok", "failed")
        assert (a["start"] != "") == ran and (a["duration"] != "") == ran
        if ran:
            assert float(a["duration"]) == pytest.approx(rows[a["batch"]]["ended"] - rows[a["batch"]]["started"],
                                                         abs=2e-3)
            assert a["node"] == rows[a["batch"]]["node"] != ""
    assert len(re.findall(r'<g class="node" data-batch=', html)) == 6  # the dependency graph
    edges = re.findall(r'class="edge" data-from="([^"]+)" data-to="([^"]+)" data-cross="(\w+)"', html)
    assert sorted((a, b) for a, b, _ in edges) == [("api", "cli"), ("docs", "lint"), ("lint", "release"),
                                                    ("setup", "cli")]
    assert 'id="run-state"' in html and ">failed<" in html
    assert 'data-batch="lint"' in html.split('id="problems"', 1)[1]  # the failure is listed
    assert "ruff found 4 errors" in html and "Skipped because" in html

    shot = tmp_path / "report.png"
    res_shot = chromium(tmp_path, out.as_uri(), f"--screenshot={shot}", "--window-size=1400,1500",
                        "--hide-scrollbars")
    assert res_shot.returncode == 0, res_shot.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real, non-blank page
    if os.environ.get("DISTPAR_ARTIFACTS"):  # CI keeps the screenshot to look at
        dest = Path(os.environ["DISTPAR_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / "report.png")
        shutil.copy(out, dest / "report.html")


def test_report_of_a_clean_run_and_of_an_unknown_one(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"x": "1"}), fake_batch(2, writes={"y": "2"})])
    assert run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "-q", cwd=repo).returncode == 0
    out = repo.parent / "r.html"
    assert run_distpar("report", only_run_id(), "--html", str(out), cwd=repo).returncode == 0
    page = out.read_text()
    assert page.count('<g class="bar"') == 2 and 'data-kind="merge_started"' in page
    assert "None: every unit succeeded and the units merged cleanly." in page
    assert "No dependencies: every unit was independent." in page and 'class="edge"' not in page
    missing = run_distpar("report", "nosuchrun", "--html", str(out), cwd=repo)
    assert missing.returncode == 2 and missing.stderr.startswith("Error: no run 'nosuchrun'")


# --- one prediction: distpar plan, the run header, the live ETA and the report agree -------------------------


def _agent(tag: str, estimate: float) -> dict[str, object]:
    return {"subagent_type": "general-purpose", "prompt": f"unit {tag}\n@fake write {tag}.txt {tag}",
            "estimate": estimate}


# 7 batches, 9 units: a parallel batch of two, a sequential batch of two, declared depends_on (the dag rule)
SEVEN = [
    {"id": "1", "agents": [_agent("a", 2)]},
    {"id": "2", "parallel": True, "agents": [_agent("b1", 2), _agent("b2", 3)]},
    {"id": "3", "agents": [_agent("c1", 1), _agent("c2", 2)], "depends_on": ["1"]},
    {"id": "4", "agents": [_agent("d", 1)], "depends_on": ["2"]},
    {"id": "5", "agents": [_agent("e", 3)]},
    {"id": "6", "agents": [_agent("f", 1)], "depends_on": ["3", "4"]},
    {"id": "7", "agents": [_agent("g", 1)], "depends_on": ["5"]},
]
SEVEN_EDGES = [("1", "3#1"), ("2#1", "4"), ("2#2", "4"), ("3#1", "3#2"), ("3#2", "6"), ("4", "6"), ("5", "7")]
# 4 stages (no depends_on: each batch waits for the one before), 7 units
FOUR = [
    {"id": "1", "parallel": True, "agents": [_agent("s1a", 3), _agent("s1b", 3), _agent("s1c", 3)]},
    {"id": "2", "agents": [_agent("s2", 1)]},
    {"id": "3", "parallel": True, "agents": [_agent("s3a", 2), _agent("s3b", 2)]},
    {"id": "4", "agents": [_agent("s4", 1)]},
]
FOUR_EDGES = [("1#1", "2"), ("1#2", "2"), ("1#3", "2"), ("2", "3#1"), ("2", "3#2"), ("3#1", "4"), ("3#2", "4")]


@pytest.mark.parametrize(("batches", "units", "makespan", "serial", "edges"), [
    (SEVEN, 9, 6, 16, SEVEN_EDGES), (FOUR, 7, 7, 15, FOUR_EDGES)], ids=["7-batches-9-units", "4-stages"])
def test_plan_header_live_eta_and_report_make_one_prediction(repo: Path, batches: list[dict[str, object]],
                                                             units: int, makespan: int, serial: int,
                                                             edges: list[tuple[str, str]]) -> None:
    from distpar.core.plan import load_plan
    from distpar.core.schedule import make_schedule
    from distpar.core.units import unit_graph
    from distpar.ops import live

    plan_file = write_plan(repo.parent / "p.md", batches, independent=False)
    speedup = f"{serial / makespan:.2f}x"
    # 1. distpar plan
    shown = run_distpar("plan", str(plan_file), "--workers", "3", cwd=repo)
    assert shown.returncode == 0, shown.stderr
    assert f"{len(batches)} batches, {units} units, 3 worker(s)" in shown.stdout
    assert f"estimated makespan {makespan:g} min, serial {serial:g} min, predicted speedup {speedup}" in shown.stdout
    # 2. the live ETA before anything ran, from the same graph the run builds
    plan = load_plan(plan_file)
    progress = live.RunProgress(plan, make_schedule(plan, 3), graph=unit_graph(plan), clock=lambda: 0.0)
    progress.update("run_started", {"run_id": "r", "workers": 3, "target": "main"})
    assert (progress.total, progress.eta()) == (units, makespan * 60)
    # 3. the run header, and progress counted in units
    ran = run_distpar("run", str(plan_file), "--workers", "3", "--agent", "fake", cwd=repo)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stderr.splitlines()
    assert re.fullmatch(rf"distpar: run \S+: 3 worker\(s\), {units} unit\(s\), merging into main, "
                        rf"estimated {makespan}:00", lines[0]), lines[0]
    counts = [tuple(map(int, m)) for m in re.findall(r"\[(\d+)/(\d+)\]$", ran.stderr, re.M)]
    assert len(counts) == units and all(total == units and done <= total for done, total in counts)
    assert [done for done, _ in counts] == list(range(1, units + 1))
    # 4. the report
    out = repo.parent / "r.html"
    assert run_distpar("report", only_run_id(), "--html", str(out), cwd=repo).returncode == 0
    page = out.read_text()
    assert f"serial {serial:g} min, makespan {makespan:g} min" in page
    assert f"predicted {speedup}" in page
    drawn = re.findall(r'class="edge" data-from="([^"]+)" data-to="([^"]+)"', page)
    assert sorted(drawn) == edges  # every edge of the unit graph, once
    j = journal()
    used = sorted({worker_label(b["worker"]) for b in j.units(only_run_id())})
    j.close()
    assert f"{len(used)} of 3</div>" in page and "ran units: " + ", ".join(used) in page
    assert '<div class="k">workers</div>' in page and '<div class="k">streams</div>' not in page


def test_a_journal_whose_plan_cannot_be_rebuilt_falls_back_to_the_declared_batch_dependencies() -> None:
    from distpar.ops.report import RunData, _unit_graph

    run = {"options": "{}", "strategy": "balanced", "workers": 2}
    assert _unit_graph(run, {"batches": [{"id": "1"}]}) == (None, None)  # an older journal's plan
    d = RunData(run=run, units=[], events=[], plan={"batches": [{"id": "1"}, {"id": "2", "depends_on": ["1"]}]},
                schedule={}, summary={})
    assert d.depends_on() == {"1": [], "2": ["1"]} and d.prediction is None
