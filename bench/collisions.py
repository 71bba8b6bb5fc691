"""7. Collisions: plans whose units collide the way parallel agents do every day, each run with the fake agent and
real git, per mode: units landed, whether the check passes on the target afterwards, agent runs spent, wall time
against the serial agent time.

- registry: six units each add one entry to the same registry (a route table): every pair conflicts.
- imports: two units each add an import at the top of one module (and a function using it at its end).
- one function: two units each edit the same function.
- semantic break: four units; one renames a function the others' new code calls. Each passes the check alone, the
  merge fails it (``--verify-merged``; the failure is bisected to the unit).

Modes: ``stop`` (the default: stop at a conflict or a failing gate, land nothing) for every plan, and ``fix``
(``--on-verify-fail fix``: the agent gets the failing check's output) for the semantic break; ``rerun`` (the merge
queue) and ``resolve`` (the agent resolves each conflicting final merge, gated by the plan's check) for the plans
whose units collide in text.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from bench.config import Config
from bench.harness import Session
from distpar.coordinator.options import RunOptions
from distpar.coordinator.prepare import prepare_run
from distpar.coordinator.runtime import open_journal
from distpar.core.model import AgentConfig
from distpar.testing.builders import fake_batch, make_repo, write_plan

SLEEP = 0.3  # each unit's agent time (the fake agent sleeps): small, so the section takes seconds

REGISTRY = "ROUTES = [\n    'home',\n]\n"
APP = "import os\n\n\ndef main():\n    return os.getcwd()\n"
CALC = "def total(xs):\n    return sum(xs)\n"
CALLS = ('for f in uses*.txt; do [ -e "$f" ] || continue; n=$(cat "$f"); grep -qx "$n" api.txt || '
         '{ echo "$f calls $n: not defined"; echo "@fake append api.txt $n"; exit 1; }; done')


ROUTES = ["users", "orders", "search", "billing", "admin", "health"]


def _registry() -> tuple[dict[str, str], list[dict[str, Any]], str]:
    """Six units each append their route to one registry file (what a route table, a CHANGELOG or an
    ``__init__.py`` export list meet): every pair conflicts at the file's end. The check: every route is there."""
    batches = [fake_batch(n, sleep=SLEEP, extra=[f"@fake append routes.txt {n}"]) for n in ROUTES]
    check = " && ".join(f"grep -qx {n} routes.txt" for n in ROUTES)
    return {"routes.txt": "home\n"}, batches, check


def _imports() -> tuple[dict[str, str], list[dict[str, Any]], str]:
    a = APP.replace("import os\n", "import json\nimport os\n") + "\n\ndef dump(x):\n    return json.dumps(x)\n"
    b = APP.replace("import os\n", "import os\nimport sys\n") + "\n\ndef argv():\n    return sys.argv\n"
    return {"app.py": APP}, [fake_batch("json", sleep=SLEEP, writes={"app.py": a}),
                             fake_batch("sys", sleep=SLEEP, writes={"app.py": b})], "python3 -c 'import app'"


def _one_function() -> tuple[dict[str, str], list[dict[str, Any]], str]:
    a = "def total(xs):\n    return round(sum(xs), 2)\n"
    b = "def total(xs):\n    return sum(x for x in xs if x is not None)\n"
    return {"calc.py": CALC}, [fake_batch("round", sleep=SLEEP, writes={"calc.py": a}),
                               fake_batch("skip-none", sleep=SLEEP, writes={"calc.py": b})], \
        "python3 -c 'import calc; assert calc.total([1, 2]) == 3'"


def _semantic() -> tuple[dict[str, str], list[dict[str, Any]], str]:
    batches = [fake_batch(f"u{i}", sleep=SLEEP, writes={"api.txt": "new_name\n"} if i == 2
                          else {f"uses{i}.txt": "old_name\n"}) for i in range(4)]
    return {"api.txt": "old_name\n"}, batches, CALLS


PLANS = {"registry": _registry, "imports": _imports, "one function": _one_function, "semantic break": _semantic}
MODES = {"registry": ("stop", "rerun", "resolve"), "imports": ("stop", "rerun", "resolve"),
         "one function": ("stop", "rerun", "resolve"), "semantic break": ("stop", "fix")}


def one(session: Session, name: str, mode: str) -> dict[str, Any]:
    files, batches, check = PLANS[name]()
    slug = name.replace(" ", "-")
    repo = make_repo(session.root / f"collide-{slug}-{mode}", {"README.md": "# bench\n", **files})
    plan = write_plan(session.root / f"collide-{slug}-{mode}.md", batches)
    gate = name == "semantic break"
    opts = RunOptions(agent=AgentConfig(preset="fake"), verify_merged=check if gate or mode == "resolve" else None,
                      on_verify_fail=mode if gate else "stop",
                      on_conflict=mode if mode in ("rerun", "resolve") else "stop")
    t = time.perf_counter()
    prepared = prepare_run(plan, opts, repo=repo, workers=len(batches))
    report = prepared.run()
    wall = time.perf_counter() - t
    run_id = report.run_id
    journal = open_journal(repo)
    events = journal.events(run_id)
    started = [e for e in events if e.kind == "unit_started"]
    resolved = [e for e in events if e.kind in ("conflict_resolved", "resolve_failed")]
    journal.close()
    green = subprocess.run(["/bin/sh", "-c", check], cwd=repo, capture_output=True, env=os.environ).returncode == 0
    return {
        "plan": name, "mode": mode, "units": len(batches), "state": report.state, "exit_code": int(report.exit_code),
        "landed": len(batches) if report.landed else 0, "check_green": green,
        "agent_runs": len(started) + len(report.fixes) + len(resolved), "fixes": len(report.fixes),
        "reruns": len(report.reruns), "resolutions": len(resolved),
        "bisected": (report.bisected or {}).get("unit"), "wall": round(wall, 3),
        "serial_agent": round(report.agent_time, 3),
        "wall_over_serial": round(wall / report.agent_time, 3) if report.agent_time else None,
    }


def run(session: Session, cfg: Config) -> dict[str, Any]:
    rows = []
    for name in PLANS:
        for mode in MODES[name]:
            session.log(f"  collisions: {name}, {mode}")
            rows.append(one(session, name, mode))
    return {"rows": rows, "note": "rerun: the merge queue (`--on-conflict rerun`); resolve: the agent resolves each "
                                  "conflicting final merge (`--on-conflict resolve`, gated by the plan's check)."}


def markdown(data: dict[str, Any], table: Any) -> list[str]:
    rows = [[r["plan"], r["mode"], r["units"], r["state"], f"{r['landed']}/{r['units']}",
             "yes" if r["check_green"] else "no", r["agent_runs"], r.get("reruns", 0), r.get("resolutions", 0),
             r["bisected"] or "-", f"{r['wall']:.2f}",
             f"{r['serial_agent']:.2f}", r["wall_over_serial"]] for r in data["rows"]]
    return ["", "## 7. Collisions", "",
            "Realistic collisions (bench/collisions.py): the units landed, whether the check passes on the target "
            "afterwards (with `stop`, a run that lands nothing leaves the target as it was), the agent runs spent "
            "(fix units included), the wall time against the serial agent time (the sum of the units' agent "
            f"times). Load average at the section's start / end: {data['loadavg'][0]} / {data['loadavg'][1]}. "
            + data["note"], "",
            table(["plan", "mode", "units", "state", "landed", "check green", "agent runs", "reruns", "resolutions",
                   "unit bisected",
                   "wall s", "serial agent s", "wall / serial"], rows)]
