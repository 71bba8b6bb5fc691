"""The demo: a sample repository and plan, run by distpar with the bundled fake agent (no API key needed).

    python examples/demo.py [--workers N] [--dir DIR]
"""

from __future__ import annotations

import argparse
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
    print(f"\nThe sample repository is in {repo}.")
    print("With a real agent, drop '--agent fake' (Claude Code is the default: it needs `claude` on PATH and an")
    print(f"API key or login):  cd {repo} && distpar run ../plan.md --workers {args.workers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
