"""Issue 21, what to build 3, 4, 5 and 8 (the target): nothing an agent leaves is lost, and output is bounded.
Each test runs the real CLI with the fake agent running shell commands in a real git repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from distpar.testing.builders import fake_batch, sh_git, tree_files, write_plan
from tests.conftest import run_distpar, run_id_of
from tests.safety.conftest import sh


def _ended(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if '"unit_ended"' in line]


# --- a nested repository ------------------------------------------------------------------------------------


def test_nested_repository_files_are_committed_and_its_git_kept_aside(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh("mkdir app && cd app && git init -q && echo hi > app.txt && git add app.txt "
                                "&& git -c user.name=a -c user.email=a@b commit -qm init")]),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", "--json", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh_git(repo, "show", "main:app/app.txt") == "hi"  # a plain file, not a gitlink
    assert "160000" not in sh_git(repo, "ls-tree", "-r", "main")
    notes = _ended(res.stdout)[0]["notes"]
    assert isinstance(notes, list)
    note = next(n for n in notes if "app/.git" in n)
    archive = Path(note.split(" saved in ")[1].split(";")[0].rstrip(")"))
    with tarfile.open(archive) as tar:
        assert any(name.endswith("HEAD") for name in tar.getnames())  # the nested .git itself, kept
    plain = run_distpar("status", run_id_of_json(res.stdout), cwd=repo)
    assert plain.returncode == 0


def test_nested_git_file_pointing_elsewhere(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    sh_git(tmp_path, "init", "-q", str(other))
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh(f"mkdir lib && echo 'gitdir: {other}/.git' > lib/.git && echo x > lib/x.txt")]),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh_git(repo, "show", "main:lib/x.txt") == "x"
    assert "lib/.git" not in tree_files(repo, "main")
    assert "160000" not in sh_git(repo, "ls-tree", "-r", "main")
    assert "lib/.git" in res.stderr + res.stdout  # said in the summary


def run_id_of_json(stdout: str) -> str:
    return str(json.loads(stdout.splitlines()[-1])["run_id"])


def test_a_real_submodule_is_left_alone(repo: Path, tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sh_git(tmp_path, "init", "-q", str(sub))
    (sub / "s.txt").write_text("s\n")
    sh_git(sub, "add", "s.txt")
    sh_git(sub, "commit", "-qm", "s")
    sh_git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "sub")
    sh_git(repo, "commit", "-qm", "submodule")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"one.txt": "1"})])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "160000 commit" in sh_git(repo, "ls-tree", "main", "sub")  # still a submodule
    assert "sub/.git" not in res.stdout + res.stderr


# --- an orphan or unborn branch switch ----------------------------------------------------------------------


@pytest.mark.parametrize(("script", "name", "text"), [
    ("echo one > one.txt && git checkout -q --orphan x", "one.txt", "one"),  # edits, then the switch
    # git switch --orphan empties the working tree: removing the other files is then the agent's edit too
    ("git switch -q --orphan y && echo two > two.txt", "two.txt", "two"),
    ("git checkout -q --orphan z && echo three > three.txt && git add -A "  # and a commit on the orphan
     "&& git -c user.name=a -c user.email=a@b commit -qm orphan", "three.txt", "three"),
], ids=["edits-then-switch", "switch-then-edits", "switch-and-commit"])
def test_an_orphan_switch_keeps_the_edits(repo: Path, script: str, name: str, text: str) -> None:
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, extra=[sh(script)])])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh_git(repo, "show", f"main:{name}") == text
    if not script.startswith("git switch"):  # git checkout --orphan keeps the files: none is dropped
        assert sh_git(repo, "show", "main:README.md") == "# demo"
    assert "no changes" not in res.stdout


# --- bytes, not text --------------------------------------------------------------------------------------


def test_non_utf8_file_name_is_committed_once(repo: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh("printf x > \"$(printf 'caf\\351.txt')\"")]),
        fake_batch(2, writes={"two.txt": "2"}),
    ])
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", cwd=repo,
                      env={"FAKE_AGENT_LOG": str(calls)})
    assert res.returncode == 0, res.stdout + res.stderr
    names = subprocess.run(["git", "ls-tree", "-z", "--name-only", "main"], cwd=repo, capture_output=True,
                           check=True).stdout.split(b"\0")
    assert b"caf\xe9.txt" in names
    assert len([c for c in _calls(calls) if "caf" in json.dumps(c)]) == 1  # the agent ran once


def _calls(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


# (`git worktree remove --force .`, the other way an agent destroyed a linked worktree, is refused by git now
# that a workspace is a repository of its own.)
@pytest.mark.parametrize("destroy", ["rm -rf .git", 'rm -rf "$PWD"'])
def test_agent_that_destroys_its_workspace_fails_once_with_its_files_saved(repo: Path, tmp_path: Path,
                                                                          destroy: str) -> None:
    calls = tmp_path / "calls.jsonl"
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh(f"echo lost > lost.txt && {destroy}")]),
        fake_batch(2, writes={"two.txt": "2"}),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo,
                      env={"FAKE_AGENT_LOG": str(calls)})
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "destroyed its workspace" in out, out
    assert "git is not installed" not in out and "Traceback" not in out
    assert len([c for c in _calls(calls) if "lost.txt" in json.dumps(c)]) == 1  # not retried
    if destroy == "rm -rf .git":
        archive = next(Path(w.strip(".,;)")) for w in out.split() if w.rstrip(";").endswith(".tar.gz"))
        with tarfile.open(archive) as tar:
            assert any(n.endswith("lost.txt") for n in tar.getnames())
    else:
        assert "nothing was left on disk to save" in out, out
    rid = run_id_of(res.stdout)
    assert sh_git(repo, "show", f"distpar/{rid}/b/2:two.txt") == "2"  # the next unit got a fresh workspace


# --- bounded output ---------------------------------------------------------------------------------------


def test_a_50mb_line_keeps_events_summaries_and_memory_bounded(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh("head -c 50000000 /dev/zero | tr '\\0' a; echo; exit 3")]),
    ])
    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True); "
            "sys.stdout.buffer.write(p.stdout); sys.stderr.buffer.write(p.stderr); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)")
    res = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "distpar", "run", str(plan),
                          "--workers", "1", "--agent", "fake", "--json", "--agent-retries", "0"],
                         cwd=repo, capture_output=True, text=True, timeout=300, env=dict(os.environ),
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 1, res.stderr[-3000:]
    peak_kb = int(res.stderr.splitlines()[-1])
    print(f"coordinator peak RSS: {peak_kb / 1024:.0f} MB")
    assert peak_kb < 200 * 1024, f"the coordinator peaked at {peak_kb / 1024:.0f} MB"
    for line in res.stdout.splitlines():
        assert len(line) < 64 * 1024, line[:200]
    assert len(res.stderr) < 64 * 1024
    rid = run_id_of_json(res.stdout)
    for cmd in (("status", rid), ("report", rid)):
        shown = run_distpar(*cmd, cwd=repo)
        assert len(shown.stdout) + len(shown.stderr) < 64 * 1024, cmd


# --- the target moved or checked out during the run --------------------------------------------------------


def test_target_moved_under_the_checkout_leaves_it_consistent(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh("echo agent > agent.txt && git add agent.txt && "
                                "git -c user.name=a -c user.email=a@b commit -qm agent && "
                                "git update-ref refs/heads/main HEAD")]),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    if res.returncode == 0:
        assert sh_git(repo, "status", "--porcelain") == ""
        assert (repo / "agent.txt").read_text() == "agent\n"
    else:
        _run_printed_commands(res.stdout, repo)
        assert sh_git(repo, "status", "--porcelain") == ""
        assert "agent.txt" in tree_files(repo, "main")


def test_target_with_a_staged_file_refuses_with_commands_that_work(repo: Path) -> None:
    """The user staged a file that the run also writes: the landing refuses, and the printed commands (once the
    user has put the staged file away) land the run."""
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"one.txt": "1"})])
    (repo / "one.txt").write_text("the user's\n")
    sh_git(repo, "add", "one.txt")
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", "--allow-dirty", cwd=repo)
    assert res.returncode == 3, res.stdout + res.stderr
    sh_git(repo, "stash", "-q")
    _run_printed_commands(res.stdout, repo)
    assert sh_git(repo, "status", "--porcelain") == ""
    assert sh_git(repo, "show", "main:one.txt") == "1"


def _run_printed_commands(stdout: str, repo: Path) -> None:
    """Run the git commands the summary printed, as printed, from outside the repository (they name it)."""
    cmds = [ln.strip() for ln in stdout.splitlines() if ln.strip().startswith("git ")]
    assert cmds, stdout
    for c in cmds:
        proc = subprocess.run(c, shell=True, cwd=repo.parent, capture_output=True, text=True)
        assert proc.returncode == 0, (c, proc.stderr, stdout)


def test_target_moved_under_the_checkout_with_a_clashing_file_refuses_with_commands_that_work(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh(f"echo agent > agent.txt && git add agent.txt && "
                                f"git -c user.name=a -c user.email=a@b commit -qm agent && "
                                f"git update-ref refs/heads/main HEAD && echo mine > {repo}/agent.txt")]),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    assert res.returncode == 3, res.stdout + res.stderr
    assert (repo / "agent.txt").read_text() == "mine\n"  # the user's file is untouched
    (repo / "agent.txt").unlink()  # what the printed comment asks: put local changes away
    _run_printed_commands(res.stdout, repo)
    assert sh_git(repo, "status", "--porcelain") == ""
    assert (repo / "agent.txt").read_text() == "agent\n"
    assert "agent.txt" in tree_files(repo, "main")


def test_nested_repository_the_agent_committed_as_a_gitlink_lands_as_files(repo: Path) -> None:
    plan = write_plan(repo.parent / "p.md", [
        fake_batch(1, extra=[sh("mkdir app && cd app && git init -q && echo hi > app.txt && git add app.txt "
                                "&& git -c user.name=a -c user.email=a@b commit -qm init && cd .. && git add app "
                                "&& git -c user.name=a -c user.email=a@b commit -qm 'add app'")]),
    ])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sh_git(repo, "show", "main:app/app.txt") == "hi"
    assert "160000" not in sh_git(repo, "ls-tree", "-r", "main")
    assert "app/.git" in res.stderr
