"""The demo: a sample repository and plan, run by distpar with the bundled fake agent (no API key needed).

    python examples/demo.py [--workers N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from distpar.testing.builders import make_repo

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=None, help="where to make the sample repository")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="distpar-demo-"))
    repo = root / "sample-repo"
    if repo.exists():
        shutil.rmtree(repo)
    make_repo(repo, {"README.md": "# sample service\n", "src/__init__.py": "", "tests/__init__.py": ""})
    plan = repo.parent / "plan.md"
    shutil.copy(HERE / "demo" / "plan.md", plan)
    steps = [
        ["distpar", "plan", str(plan), "--workers", str(args.workers)],
        ["distpar", "run", str(plan), "--workers", str(args.workers), "--agent", "fake"],
        ["distpar", "status"],
        ["git", "log", "--oneline", "--graph", "-n", "20"],
    ]
    for argv in steps:
        print(f"\n$ {' '.join(argv)}", flush=True)
        code = subprocess.call([sys.executable, "-m", "distpar", *argv[1:]] if argv[0] == "distpar" else argv,
                               cwd=repo)
        if code != 0:
            return code
    for line in closing_hint(repo, args.workers):
        print(line)
    return 0


def closing_hint(repo: Path, workers: int) -> list[str]:
    """What to type next, printed so that it works as typed: ``make demo`` installs distpar in a virtualenv it
    does not activate, so unless that ``distpar`` is already first on PATH the hint names it by its full path."""
    bindir = Path(sys.executable).parent
    own = bindir / "distpar"
    on_path = shutil.which("distpar")
    distpar = "distpar" if on_path and Path(on_path).resolve() == own.resolve() else shlex.quote(str(own))
    where = shlex.quote(str(repo))
    listing = subprocess.run([sys.executable, "-m", "distpar", "status", "--json", "--repo", str(repo)],
                             capture_output=True, text=True)
    runs = json.loads(listing.stdout) if listing.returncode == 0 else []
    lines = [f"\nThe sample repository is in {repo}."]
    if distpar != "distpar":
        lines += [f"distpar is installed in {bindir}, which is not on your PATH: type the commands below as they",
                  f"are, or first `. {shlex.quote(str(bindir / 'activate'))}` and then plain `distpar`."]
    lines.append(f"  {distpar} status --repo {where}")
    if runs:
        run_id = runs[0]["id"]
        lines += [f"  {distpar} status {run_id} --repo {where}",
                  f"  {distpar} report {run_id} --repo {where} --html report.html"]
    lines += ["With a real agent, drop '--agent fake' (Claude Code is the default: it needs `claude` on PATH and",
              "an API key or login):",
              f"  cd {where} && {distpar} run ../plan.md --workers {workers}"]
    return lines


if __name__ == "__main__":
    sys.exit(main())
