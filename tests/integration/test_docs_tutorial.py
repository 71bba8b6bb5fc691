"""The tutorial (docs/tutorial.md) works as printed: its ```bash blocks run in order, in a fresh directory, with
this checkout's distpar on PATH, and what the page says the user sees is what they see. Blocks fenced as
```sh (installing, commands that need a run id) are shown, not run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

pytestmark = pytest.mark.integration

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every top-level fenced block, in order; a longer fence may hold shorter ones."""
    return [(m["lang"], m["body"]) for m in FENCE.finditer(text)]


READER = {"GIT_AUTHOR_NAME": "Reader", "GIT_AUTHOR_EMAIL": "reader@example.com",
          "GIT_COMMITTER_NAME": "Reader", "GIT_COMMITTER_EMAIL": "reader@example.com"}


def run_as_typed(commands: list[str], work: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """The commands one after another in one ``bash -e``, in ``work``, with this checkout's distpar on PATH."""
    work.mkdir()
    script = work.parent / f"{work.name}.sh"
    script.write_text("\n".join(commands))
    env = {**os.environ, **READER, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-e", str(script)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=240, stdin=subprocess.DEVNULL)
    shown = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, shown
    return proc, shown


def test_blocks_are_found_as_a_reader_sees_them() -> None:
    text = "````bash\ncat > p <<'X'\n```json dispatch\n{}\n```\nX\n````\n\n```sh\nnot run\n```\n```text\nout\n```\n"
    assert blocks(text) == [("bash", "cat > p <<'X'\n```json dispatch\n{}\n```\nX\n"), ("sh", "not run\n"),
                            ("text", "out\n")]


def test_the_tutorial_runs_as_printed(tmp_path: Path) -> None:
    found = blocks(TUTORIAL.read_text())
    commands = [body for lang, body in found if lang == "bash"]
    assert any("distpar run plan.md" in c for c in commands), "the tutorial no longer runs a plan"
    work = tmp_path / "work"
    proc, shown = run_as_typed(commands, work)

    # Step 4: the prediction is printed as the page shows it (it holds no run id or time).
    after_plan = next(i for i, (lang, body) in enumerate(found) if lang == "bash" and "distpar plan " in body)
    lang, expected = found[after_plan + 1]
    assert lang == "text"
    for line in expected.splitlines():
        assert line in proc.stdout.splitlines(), f"the tutorial shows {line!r}, distpar printed:\n{shown}"

    # Step 5: the run ended ok and landed on main.
    assert re.search(r"^run \S+: ok \(2 ok\)$", proc.stdout, re.M), shown
    assert re.search(r"^merged into main \([0-9a-f]{12}\)$", proc.stdout, re.M), shown
    repo = work / "hello"
    show = subprocess.run(["git", "-C", str(repo), "show", "main:hello.py"], capture_output=True, text=True)
    assert show.stdout == 'def greet():\n    return "hello"\n', show.stderr
    usage = subprocess.run(["git", "-C", str(repo), "show", "main:docs/usage.md"], capture_output=True, text=True)
    assert usage.stdout == "# Usage\n\nCall greet().\n", usage.stderr

    # Step 6: one commit per unit, as the page says.
    assert "distpar: batch code: greeting module" in proc.stdout, shown

    # Step 7: distpar status lists the run, ok with both batches.
    run_id = re.search(r"^run (\S+): ok", proc.stdout, re.M)
    assert run_id is not None
    assert re.search(rf"^{re.escape(run_id[1])}\s+plan\.md\s+.*\sok\s+2/2 ok\s", proc.stdout, re.M), shown


def test_the_demo_closing_hint_works_as_typed(tmp_path: Path) -> None:
    """After `make demo` distpar is in .venv/bin, not on PATH: the commands the demo's last lines print work when
    typed into a shell whose PATH does not hold it."""
    bare = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if Path(p, "distpar").resolve() != Path(sys.executable).parent.joinpath("distpar").resolve())
    env = {**os.environ, **READER, "PATH": bare}
    env.pop("DISTPAR_HOME", None)  # as a reader runs it: the journal in the sample repository
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo.py"
    proc = subprocess.run([sys.executable, str(demo), "--workers", "4", "--dir", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hint = proc.stdout[proc.stdout.index("The sample repository is in"):].splitlines()
    commands = [line.strip() for line in hint if line.startswith("  ") and " run " not in line]  # run: a real agent
    assert len(commands) == 3, hint
    typed = subprocess.run(["bash", "-e", "-c", "\n".join(commands)], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert typed.returncode == 0, typed.stdout + typed.stderr
    assert re.search(r"^\S+\s+plan\.md\s+.*\sok\s+6/6 ok\s", typed.stdout, re.M), typed.stdout
    assert (tmp_path / "report.html").is_file()


def test_the_readme_quick_start_runs_as_printed(tmp_path: Path) -> None:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    (quick,) = [body for lang, body in blocks(readme.read_text()) if "distpar run plan.md" in body]
    proc, shown = run_as_typed([quick], tmp_path / "work")
    assert re.search(r"^run (\S+): ok \(2 ok\)$", proc.stdout, re.M), shown
    assert re.search(r"^\S+\s+plan\.md\s+.*\sok\s+2/2 ok\s", proc.stdout, re.M), shown
    show = subprocess.run(["git", "-C", str(tmp_path / "work" / "hello"), "show", "main:hello.py"],
                          capture_output=True, text=True)
    assert show.stdout == 'def greet():\n    return "hello"\n', show.stderr


def build_site(root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` as CI runs it (never with -q: then mkdocs counts no warning, mkdocs#4126)."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("the docs extra is not installed (pip install -e '.[docs]')")
    return subprocess.run([str(mkdocs), "build", "--strict", "-d", str(out)], cwd=root, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_site_builds_strictly_with_the_generated_reference(tmp_path: Path) -> None:
    root = TUTORIAL.parents[1]
    proc = build_site(root, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    from distpar.cli.main import cli as group  # every command and every flag of `distpar run` is on the page
    assert all(f'id="distpar-{name}"' in cli for name in group.commands)
    flags = [opt for p in group.commands["run"].params
             if isinstance(p, click.Option) and not p.hidden for opt in p.opts]
    assert len(flags) > 40 and all(opt in cli for opt in flags)
    codes = (tmp_path / "site" / "reference" / "exit-codes" / "index.html").read_text()
    assert "GATE_FAILED" in codes and "130 &gt; 2 &gt; 4 &gt; 3 = 5 &gt; 1 &gt; 0" in codes


def test_the_build_fails_when_a_hand_written_reference_drifts(tmp_path: Path) -> None:
    import shutil

    root = TUTORIAL.parents[1]
    copy = tmp_path / "repo"
    shutil.copytree(root / "docs", copy / "docs")
    shutil.copy(root / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "distpar").symlink_to(root / "distpar")
    (copy / "deploy").symlink_to(root / "deploy")
    manifest = copy / "docs" / "reference" / "manifest.md"
    manifest.write_text(re.sub(r"^\| `owns_files` \| agent \|.*\n", "", manifest.read_text(), flags=re.M))
    config = copy / "docs" / "reference" / "configuration.md"
    config.write_text(config.read_text().replace("`DISTPAR_RETRY_BASE_SECONDS`", "`DISTPAR_RETRY_SECONDS`"))
    howto = copy / "docs" / "how-to" / "workspaces-and-gates.md"
    howto.write_text(howto.read_text().replace("$DISTPAR_RAY_DIR/pool", "$DISTPAR_NODE_DIR/pool"))
    proc = build_site(copy, tmp_path / "site")
    assert proc.returncode == 1
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING -  how-to/workspaces-and-gates.md: DISTPAR_NODE_DIR is named but neither distpar nor deploy/ uses it",
        "WARNING -  reference/configuration.md: DISTPAR_RETRY_BASE_SECONDS is used by distpar but not documented",
        "WARNING -  reference/configuration.md: DISTPAR_RETRY_SECONDS is documented but distpar does not use it",
        "WARNING -  reference/manifest.md: agent field 'owns_files' is not documented",
    ], proc.stderr
