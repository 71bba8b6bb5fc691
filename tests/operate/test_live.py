"""Watching a run: the progress model and its ETA, plain lines off a terminal, JSON lines, the live view on a pty."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from rich.console import Console

from distpar.core.plan import load_plan
from distpar.core.schedule import make_schedule
from distpar.ops import live
from distpar.testing.builders import fake_batch, independent_plan, write_plan
from tests.conftest import run_distpar

pytestmark = pytest.mark.integration


def diamond(tmp_path: Path) -> tuple[live.RunProgress, list[float]]:
    plan = load_plan(write_plan(tmp_path / "p.md", [
        fake_batch("a", estimate=2), fake_batch("b", estimate=3), fake_batch("c", depends_on=["a"]),
        fake_batch("d"), fake_batch("e", depends_on=["c", "d"]), fake_batch("f", estimate=1),
    ]))
    now = [1000.0]
    return live.RunProgress(plan, make_schedule(plan, 3), "node-1", clock=lambda: now[0]), now


def test_progress_follows_events_and_rescales_the_eta(tmp_path: Path) -> None:
    p, now = diamond(tmp_path)
    p.update("run_started", {"run_id": "r1", "workers": 3, "target": "main"})
    assert [w.name for w in p.rows] == ["w1", "w2", "w3"]
    # Before anything ran: the plan's estimates list-scheduled on 3 workers (b 3, a 2 -> c 1, d 1 -> e, f 1).
    assert p.eta() == pytest.approx(4 * 60)
    for k, b in enumerate("abd"):
        p.update("unit_started", {"worker": k, "unit": b, "attempt": 1, "at": now[0], "node": "n"})
    assert [s.current for s in p.rows] == ["a", "b", "d"]
    now[0] += 60
    # a took 60s for an estimate of 120s: every remaining estimate is halved.
    p.update("unit_ended", {"worker": 0, "unit": "a", "status": "ok", "duration": 60.0, "cost_usd": 0.5})
    assert p.scale() == pytest.approx(0.5)
    assert p.rows[0].current is None and p.rows[0].done == 1 and p.rows[0].cost == 0.5
    # b: 90 - 60 = 30s left; d: 30 - 60 -> 0; w1 takes c (30s), then e (after c and d) 30s: 60s; f on w3: 30s.
    assert p.eta() == pytest.approx(60.0)
    p.update("unit_started", {"worker": 0, "unit": "c", "attempt": 1, "at": now[0]})
    now[0] += 30
    p.update("unit_ended", {"worker": 0, "unit": "c", "status": "ok", "duration": 30.0, "cost_usd": 0.25})
    p.update("unit_ended", {"worker": 2, "unit": "d", "status": "failed", "duration": 80.0, "error": "boom"})
    p.update("unit_ended", {"worker": -1, "unit": "e", "status": "skipped", "duration": 0.0})
    p.update("unit_started", {"worker": 2, "unit": "f", "attempt": 1, "at": now[0]})
    p.update("unit_ended", {"worker": 2, "unit": "f", "status": "ok", "duration": 1.0})
    assert p.done == 5 and p.failed == 2 and p.cost == pytest.approx(0.75)
    assert p.rows[2].done == 2 and p.rows[2].failed == 1  # a skipped unit never ran on a worker
    assert p.worker_state(p.rows[1]) == "running" and p.worker_state(p.rows[0]) == "waiting"
    p.update("unit_ended", {"worker": 1, "unit": "b", "status": "ok", "duration": 95.0})
    assert p.eta() == 0.0 and p.worker_state(p.rows[2]) == "failed"
    p.update("run_ended", {"state": "failed"})
    text = render_text(p)
    assert "r1 → main  failed" in text and "6/6 units, 2 not ok" in text and "ETA" not in text


def test_rows_follow_what_workers_report_and_show_throttling(tmp_path: Path) -> None:
    p, now = diamond(tmp_path)
    p.update("run_started", {"run_id": "r1", "workers": 2, "target": "main"})
    p.update("unit_dispatched", {"worker": 1, "unit": "b", "attempt": 1})  # handed to the worker
    assert p.rows[1].since == now[0]
    now[0] += 5
    p.update("unit_started", {"worker": 1, "unit": "b", "attempt": 2, "at": now[0], "node": "host-2"})
    assert (p.rows[1].current, p.rows[1].since, p.rows[1].node) == ("b", now[0], "host-2")
    p.update("unit_retry", {"unit": "b", "attempt": 3, "error": "node died"})
    assert p.rows[1].current is None
    p.update("throttled", {"limit": 1, "until": None})
    p.update("conflict_predicted", {"unit": "b", "files": ["x.txt"], "others": ["a"]})
    text = render_text(p)
    assert "1 agent(s) at once" in text and p.predicted == ["b: x.txt"]


def test_rows_show_the_last_output_line_of_each_running_unit(tmp_path: Path) -> None:
    p, now = diamond(tmp_path)
    p.update("run_started", {"run_id": "r1", "workers": 2, "target": "main"})
    p.update("unit_started", {"worker": 0, "unit": "a", "attempt": 1, "at": now[0], "node": "n"})
    assert "output" not in render_text(p)  # no column until an agent printed something
    for line in ("compiling", "[bold]running[/] tests \x1b[31m" + "y" * 300):
        p.update("agent_output", {"worker": 0, "unit": "a", "attempt": 1, "fd": "out", "line": line})
    p.update("agent_output", {"worker": 1, "unit": "b", "line": "not running here"})  # w2 runs nothing
    assert p.rows[0].output.startswith("[bold]running[/] tests y") and len(p.rows[0].output) == 200
    assert p.rows[1].output == ""
    text = render_text(p, width=200)
    assert re.search(r"w1 .* running .* \[bold\]running\[/\] tests +y+", text)  # as printed, not as markup
    assert "compiling" not in text and "not running here" not in text
    assert all(len(row) <= 200 for row in text.splitlines())  # cut to the width
    p.update("unit_ended", {"worker": 0, "unit": "a", "status": "ok", "duration": 1.0})
    assert p.rows[0].output == "" and "tests" not in render_text(p, width=200)


def multi_agent(tmp_path: Path) -> tuple[live.RunProgress, list[float]]:
    """4 batches, 6 units: a parallel batch of two, a sequential batch of two, and a batch without agents."""
    def agents(*estimates: float) -> list[dict[str, object]]:
        return [{"subagent_type": "general-purpose", "prompt": f"p{k}", "estimate": e} for k, e in enumerate(estimates)]
    plan = load_plan(write_plan(tmp_path / "m.md", [
        {"id": "x", "parallel": True, "agents": agents(2, 2)}, {"id": "y", "agents": agents(1, 1)},
        {"id": "z", "agents": []}, {"id": "w", "agents": agents(4), "depends_on": ["x"]},
        {"id": "v", "agents": agents(1)},
    ]))
    now = [0.0]
    return live.RunProgress(plan, make_schedule(plan, 2), clock=lambda: now[0]), now


def test_progress_counts_units_and_never_more_done_than_total(tmp_path: Path) -> None:
    p, _ = multi_agent(tmp_path)
    p.update("run_started", {"run_id": "r", "workers": 2, "target": "main"})
    assert p.total == 6  # units, not the 5 batches
    seen = []
    for uid, status in (("z", "skipped"), ("x#1", "ok"), ("x#1", "ok"), ("x#2", "ok"), ("y#1", "failed"),
                        ("y#2", "skipped"), ("nosuch", "ok"), ("w", "ok"), ("v", "ok")):
        p.update("unit_ended", {"worker": 0, "unit": uid, "status": status, "duration": 1.0})
        line = live.event_line("unit_ended", {"worker": 0, "unit": uid, "status": status, "duration": 1.0}, p)
        assert line is not None
        seen.append(line[0].rsplit(" ", 1)[1])
        assert p.done <= p.total
    assert seen == ["[0/6]", "[1/6]", "[1/6]", "[2/6]", "[3/6]", "[4/6]", "[4/6]", "[5/6]", "[6/6]"]
    assert (p.done, p.failed) == (6, 2)  # the batch without agents is no unit; a duplicate counts once


def test_the_eta_is_not_zero_while_units_remain(tmp_path: Path) -> None:
    p, now = multi_agent(tmp_path)
    p.update("run_started", {"run_id": "r", "workers": 2, "target": "main"})
    # x#1 x#2 (2 min each) on both workers, then w (4) after x, y#1 -> y#2 and v (1 each) around it: 6 min
    assert p.eta() == 6 * 60 and live.eta_text(p) == "~6:00"
    for k, uid in enumerate(("x#1", "x#2")):
        p.update("unit_started", {"worker": k, "unit": uid, "attempt": 1, "at": 0.0})
    now[0] = 0.5
    for k, uid in enumerate(("x#1", "x#2")):  # far quicker than their estimates: every estimate shrinks
        p.update("unit_ended", {"worker": k, "unit": uid, "status": "ok", "duration": 0.25})
    for k, uid in enumerate(("w", "y#1")):
        p.update("unit_started", {"worker": k, "unit": uid, "attempt": 1, "at": now[0]})
    now[0] = 600.0  # ... and then the two running units overrun by far: they have not ended
    assert p.total - p.done == 4
    assert p.eta() > 0 and live.eta_text(p) != "~0:00"
    assert "ETA ~0:00" not in render_text(p)
    for k, uid in enumerate(("w", "y#1")):
        p.update("unit_ended", {"worker": k, "unit": uid, "status": "ok", "duration": 600.0})
    p.update("unit_ended", {"worker": 0, "unit": "y#2", "status": "ok", "duration": 1.0})
    assert p.total - p.done == 1 and p.eta() > 0  # v is left
    p.update("unit_ended", {"worker": 1, "unit": "v", "status": "ok", "duration": 1.0})
    assert p.eta() == 0.0


def test_the_live_eta_is_the_run_state_prediction_of_what_is_left(tmp_path: Path) -> None:
    from distpar.core.predict import predict_graph

    p, now = multi_agent(tmp_path)
    p.update("run_started", {"run_id": "r", "workers": 2, "target": "main"})
    assert p.eta() == predict_graph(p.graph, 2, scale=60.0).makespan
    p.update("unit_started", {"worker": 0, "unit": "x#1", "attempt": 1, "at": 0.0})
    now[0] = 30.0
    # x#1 runs on w1 with 90 s left; w2 takes x#2 (120 s); then w: 240 s after both: 120 + 240
    assert p.eta() == pytest.approx(360.0)
    assert p.prediction().path == ("x#2", "w")


def render_text(p: live.RunProgress, width: int = 140) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(live.render(p, width))
    text = console.export_text()
    console.file.close()
    return text


def test_plain_lines_when_stderr_is_not_a_terminal(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, writes={"one.txt": "1"}), fake_batch(2, extra=["@fake fail 3 'tests failed'"]),
        fake_batch(3, writes={"three.txt": "3"}, depends_on=[2]),
    ])
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", cwd=repo)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.splitlines()
    assert "\x1b[" not in res.stderr  # no colour codes, no cursor movement
    assert re.fullmatch(r"distpar: run \S+: 2 worker\(s\), 3 unit\(s\), merging into main, estimated 2:00",
                        lines[0]), lines[0]
    # 2 goes first (3 waits for it: the longer path), 1 to the other worker.
    assert "[w1] started 2" in lines and "[w2] started 1" in lines
    ended = [re.sub(r"\(\d+\.\ds", "(Xs", line) for line in lines if re.match(r"\[(w\d|-)\] batch ", line)]
    assert [line[-5:] for line in ended] == ["[1/3]", "[2/3]", "[3/3]"]
    assert sorted(line[:-6] for line in ended) == [
        "[-] batch 3 skipped: dependency 2 did not succeed",
        "[w1] batch 2 failed (Xs, $0.0100): tests failed",
        "[w2] batch 1 ok (Xs, $0.0100)",
    ]
    assert res.stdout.splitlines()[0].endswith(": failed (1 ok, 1 failed, 1 skipped)")


def test_quiet_prints_no_progress(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", independent_plan(2))
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "-q", cwd=repo)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.splitlines()[0].endswith(": ok (2 ok)")


def test_json_lines_of_events_then_the_summary(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a": "1"}), fake_batch(2, depends_on=[1])])
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", "--json", cwd=repo)
    assert res.returncode == 0 and res.stderr == ""
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    events, summary = lines[:-1], lines[-1]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_ended"
    assert kinds.count("unit_dispatched") == 2 and kinds.count("unit_ended") == 2 and "merge_started" in kinds
    assert all(isinstance(e["time"], float) for e in events)
    assert [e["unit"] for e in events if e["event"] == "unit_ended"] == ["1", "2"]
    assert summary["state"] == "ok" and summary["units"] == {"ok": 2} and "event" not in summary
    assert events[-1]["run_id"] == summary["run_id"]


def run_on_a_pty(args: list[str], cwd: Path, cols: int = 120) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (stdout a pipe, as when piping the result)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "distpar", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env=env, text=True)
    os.close(slave)
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        out = proc.stdout.read() if proc.stdout else ""
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.stdout:
            proc.stdout.close()
    return code, out, screen.decode("utf-8", "replace")


def test_live_view_on_a_terminal(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch("a", writes={"a.txt": "a"}, sleep=0.6), fake_batch("b", writes={"b.txt": "b"}, sleep=0.3),
        fake_batch("c", writes={"c.txt": "c"}, depends_on=["a"]),
        fake_batch("d", extra=["@fake fail 2 'lint failed'"], sleep=0.2),
    ])
    code, out, screen = run_on_a_pty(["run", str(plan), "--workers", "2", "--agent", "fake"], repo)
    assert code == 1
    assert out.splitlines()[0].endswith(": failed (3 ok, 1 failed)")  # the result still goes to stdout, plain
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "\x1b[1A" in screen  # redrawn in place
    for col in ("worker", "node", "batch", "state", "elapsed", "done", "cost"):
        assert col in plain
    assert re.search(r"w1 +\S+ +a · batch a +running", plain)  # a row per worker, with its current unit
    assert "ETA ~" in plain and "━" in plain
    assert "[w2] batch d failed" in plain and "lint failed" in plain  # failures stay in the scrollback
    final = plain[plain.rindex("distpar "):]
    assert "failed" in final.splitlines()[0] and "4/4 units, 1 not ok" in final
    # a, then c on the worker that ran a (its worktree has a's work); b, then d on the other
    assert re.search(r"w1 +\S+ +finished +done +2 +\$0\.0200", final)
