"""Issue 21, items 3-6 and 12 of its list: a local worker's workspace is a repository of its own that borrows the
user's object store and has no remote. Whatever an agent runs there (branches, tags, stash, notes, replace refs,
config, hooks, ``info/``), the user's repository does not change but for the run's landing; distpar's own git
commands in the user's repository run none of its hooks unless ``--hooks``; a sparse checkout gives full
workspaces."""

from __future__ import annotations

import hashlib
from pathlib import Path

from distpar.testing.builders import fake_batch, make_repo, sh_git, tree_files, write_plan
from tests.conftest import run_distpar
from tests.safety.conftest import sh


def hook(repo: Path, name: str, body: str) -> None:
    path = repo / ".git" / "hooks" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def tree_digest(d: Path) -> dict[str, str]:
    """Relative path -> sha256 (and mode) of every file under ``d``."""
    if not d.is_dir():
        return {}
    return {str(p.relative_to(d)): f"{oct(p.stat().st_mode)} {hashlib.sha256(p.read_bytes()).hexdigest()}"
            for p in sorted(d.rglob("*")) if p.is_file()}


def reachable_state(repo: Path) -> dict[str, object]:
    """What an agent must not reach: refs (but the target and distpar's own), config, hooks, info/, stash."""
    refs = [line for line in sh_git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
            if not line.startswith(("refs/heads/main ", "refs/distpar/", "refs/heads/distpar/"))]
    return {"refs": refs, "config": sh_git(repo, "config", "--list", "--local"),
            "hooks": tree_digest(repo / ".git" / "hooks"), "info": tree_digest(repo / ".git" / "info"),
            "stash": sh_git(repo, "stash", "list", "--format=%H %s"),
            "notes": sh_git(repo, "notes", "list")}


AGENT = "; ".join([
    "git replace -f main wip",
    "git update-ref refs/heads/wip wip~1",
    "git branch -f wip2 main",
    "git branch -m wip3 renamed",
    "git branch -D wip",
    "git update-ref refs/heads/main HEAD",
    "git tag -d v1",
    "git tag -f v2 HEAD",
    "git stash clear",
    "git notes add -f -m agent-note HEAD",
    "git config user.email agent@example.com",
    "git config core.hooksPath /nonexistent-agent-hooks",
    "git config alias.st status",
    "git remote add evil /nonexistent-evil",
    "mkdir -p .git/hooks .git/info",
    "printf '#!/bin/sh\\necho pwned >> \"$HOME/pwned\"\\n' > .git/hooks/post-merge",
    "cp .git/hooks/post-merge .git/hooks/reference-transaction",
    "chmod +x .git/hooks/post-merge .git/hooks/reference-transaction",
    "echo '*.bin binary' > .git/info/attributes",
    "echo agent > agent.txt",
])


def test_nothing_an_agent_runs_reaches_the_users_repository(repo: Path) -> None:
    start = sh_git(repo, "rev-parse", "main")
    for name in ("wip", "wip2", "wip3"):
        sh_git(repo, "branch", name)
    sh_git(repo, "switch", "--quiet", "wip")
    (repo / "wip.txt").write_text("unmerged work\n")
    sh_git(repo, "add", "wip.txt")
    sh_git(repo, "commit", "--quiet", "-m", "wip")
    sh_git(repo, "switch", "--quiet", "main")
    sh_git(repo, "tag", "-a", "-m", "one", "v1")
    (repo / "README.md").write_text("stashed edit\n")
    sh_git(repo, "stash", "--quiet")
    sh_git(repo, "notes", "add", "-m", "user-note", "main")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("*.log\n")
    hook(repo, "pre-push", "exit 0")
    before = reachable_state(repo)
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, extra=[sh(AGENT)]),
                                             fake_batch(2, writes={"two.txt": "2"})])
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert reachable_state(repo) == before
    files = tree_files(repo, "main")
    assert "agent.txt" in files and "two.txt" in files and "wip.txt" not in files  # the agent's edits landed
    assert sh_git(repo, "merge-base", "--is-ancestor", start, "main") == ""
    assert sh_git(repo, "status", "--porcelain") == ""  # the user's checkout matches the landed main
    assert not (Path.home() / "pwned").exists()
    assert sh_git(repo, "remote") == ""


def test_distpar_runs_no_hook_of_the_users_repository(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "hooks-ran"
    for name in ("post-merge", "reference-transaction", "post-checkout", "post-rewrite", "pre-commit"):
        hook(repo, name, f"echo {name} >> {marker}")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"}),
                                             fake_batch(2, writes={"b.txt": "b"})])
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {"a.txt", "b.txt"} <= set(tree_files(repo, "main"))
    assert not marker.exists(), marker.read_text()


def test_with_hooks_the_unit_commits_run_the_users_hooks(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "hooks-ran"
    for name in ("pre-commit", "commit-msg", "post-merge"):
        hook(repo, name, f"echo {name} >> {marker}")
    plan = write_plan(repo.parent / "p.md", [fake_batch(1, writes={"a.txt": "a"})])
    res = run_distpar("run", str(plan), "--workers", "1", "--agent", "fake", "--hooks", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    # The unit's commit (in the workspace, with copies of the hooks), then the landing's merge --ff-only.
    assert marker.read_text().split() == ["pre-commit", "commit-msg", "post-merge"]


def test_a_sparse_checkout_gives_full_workspaces(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "sparse", {"a/one.txt": "1\n", "b/two.txt": "2\n"})
    sh_git(repo, "sparse-checkout", "set", "a")
    assert not (repo / "b").exists()
    plan = write_plan(tmp_path / "p.md", [
        fake_batch(1, extra=[sh("test -f b/two.txt && echo new > b/new.txt && echo x > outside.txt")]),
        fake_batch(2, writes={"a/three.txt": "3"}),
    ])
    res = run_distpar("run", str(plan), "--workers", "2", "--agent", "fake", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {"b/new.txt", "outside.txt", "a/three.txt"} <= set(tree_files(repo, "main"))
    said = [line for line in res.stderr.splitlines() if "sparse checkout" in line]
    assert said == [f"warning: {repo} is a sparse checkout: the workers' workspaces hold every file (the agents "
                    "are not limited to its cone)"], res.stderr
    assert sh_git(repo, "sparse-checkout", "list") == "a"


def test_a_workspace_borrows_the_objects_and_the_settings_that_say_how_files_are_stored(repo: Path,
                                                                                         tmp_path: Path) -> None:
    from distpar.infra import gitops

    sh_git(repo, "config", "filter.odd.clean", 'sed "s/\\\\t/ /" # a "quoted" value\twith a tab')
    sh_git(repo, "config", "user.name", "Ann \"A\" O'Neil")
    sh_git(repo, "config", "lfs.https://host.example/x.y.locksverify", "false")
    sh_git(repo, "config", "remote.origin.url", "/somewhere")  # never borrowed
    sh_git(repo, "config", "alias.st", "status")
    with (repo / ".git" / "config").open("a") as f:
        f.write("[gpg]\n\tbare-key\n")  # a key without a value
    hook(repo, "pre-commit", "exit 0")
    ws = tmp_path / "ws"
    gitops.own_repository(repo, ws, "unit", "main")
    mine = sh_git(ws, "config", "--list", "--local").splitlines()
    theirs = sh_git(repo, "config", "--list", "--local").splitlines()
    assert [line for line in theirs if line.startswith(("filter.", "user.", "lfs.", "gpg."))] == \
        [line for line in mine if line.startswith(("filter.", "user.", "lfs.", "gpg."))]
    assert not [line for line in mine if line.startswith(("remote.", "alias.", "core.hookspath"))]
    assert sh_git(ws, "remote") == "" and not (ws / ".git" / "hooks").exists()
    assert sh_git(ws, "symbolic-ref", "HEAD") == "refs/heads/unit"
    assert sh_git(ws, "rev-parse", "unit") == sh_git(repo, "rev-parse", "main") == sh_git(ws, "rev-parse", "main")
    assert sh_git(ws, "status", "--porcelain") == "" and sh_git(ws, "fsck", "--connectivity-only") == ""
    # Its new objects are its own: the user's store gains nothing until distpar fetches.
    (ws / "new.txt").write_text("new\n")
    sh_git(ws, "add", "new.txt")
    sh_git(ws, "commit", "-qm", "new")
    head = sh_git(ws, "rev-parse", "HEAD")
    assert gitops.git(repo, "cat-file", "-e", head, check=False).returncode != 0
    gitops.workspace_remove(repo, ws)
    assert not ws.exists()


def test_clean_saves_what_a_killed_runs_workspace_never_handed_back(repo: Path, isolated_env: str) -> None:
    """The coordinator is killed while an agent that already committed still runs: its commit exists only in
    its workspace. ``distpar clean`` fetches them onto saved refs before removing it."""
    import os
    import signal

    from distpar.infra import paths
    from distpar.ops import clean
    from tests.conftest import wait_for
    from tests.operate.conftest import run_ids, start_distpar

    plan = write_plan(repo.parent / "p.md", [fake_batch("slow", writes={"s.txt": "s\n"}, extra=[
        "@fake commit 'committed in the workspace'", sh("touch .git/committed"), "@fake sleep 60"])])
    with start_distpar("run", str(plan), "--workers", "1", "--agent", "fake", "-q", cwd=repo) as coordinator:
        rid = wait_for(lambda: next(iter(run_ids()), ""), what="the run to start")
        wait_for(lambda: clean.agent_processes().get(rid, []), what="the agent")
        ws = paths.workspace(repo, rid, 0)
        wait_for(lambda: (ws / ".git" / "committed").exists(), what="the agent's commit")
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait(timeout=30)
    res = run_distpar("clean", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not ws.exists()
    saved = {ref.split()[0]: ref.split()[1] for ref in
             sh_git(repo, "for-each-ref", "--format=%(refname) %(objectname)", f"refs/distpar/{rid}/saved/")
             .splitlines()}
    branch = f"refs/distpar/{rid}/saved/w1-clean-distpar-{rid}-b-slow"
    assert branch in saved, (res.stdout, saved)
    assert sh_git(repo, "show", f"{branch}:s.txt") == "s"  # the commit that never came back
    assert sh_git(repo, "log", "-1", "--format=%s", branch) == "committed in the workspace"
