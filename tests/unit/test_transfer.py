"""transfer.increment: what a worker that keeps its clone lacks of a base, with real git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from distpar.infra import gitops, transfer
from distpar.testing.builders import make_repo, sh_git

pytestmark = pytest.mark.integration  # real git


def commit(repo: Path, name: str) -> str:
    (repo / name).write_text(name + "\n")
    sh_git(repo, "add", name)
    sh_git(repo, "commit", "--quiet", "-m", name)
    return sh_git(repo, "rev-parse", "HEAD")


def test_increment_holds_only_what_the_worker_lacks(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "# r\n"})
    start = sh_git(repo, "rev-parse", "HEAD")
    worker = tmp_path / "worker"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(worker)], check=True)
    a = commit(repo, "a.txt")
    ref = "refs/distpar/r/ray/1"

    assert transfer.increment(repo, {ref: start}, [start]) is None  # it holds the base already
    data = transfer.increment(repo, {ref: a}, [start, "0" * 40])  # an unknown commit is not excluded, not fatal
    assert data is not None and data.startswith(b"# v2 git bundle")
    bundle = tmp_path / "inc.bundle"
    bundle.write_bytes(data)
    # Only the new commit travels: the bundle requires the worker's start commit.
    verify = subprocess.run(["git", "bundle", "verify", str(bundle)], cwd=worker, capture_output=True, text=True)
    assert verify.returncode == 0 and "requires this ref" in verify.stdout + verify.stderr
    assert start in verify.stdout + verify.stderr
    gitops.fetch(worker, bundle, [f"+{ref}:refs/in/base"])
    assert sh_git(worker, "rev-parse", "refs/in/base") == a
    assert sh_git(worker, "rev-list", "--count", f"{start}..refs/in/base") == "1"
    everything = transfer.increment(repo, {ref: a}, [])
    assert everything is not None and len(everything) > len(data)


def test_inflow_fetches_each_reply_back_before_handing_it_on(tmp_path: Path) -> None:
    """``Inflow``: each unit's work comes into the coordinator's repository (a real bundle, fetched back by
    ``Transfer.fetch_back`` in the inflow's threads) before the unit reaches the coordinator's loop; a fetch
    that fails reaches it as the unit's error, and a unit whose worker failed is handed on without a fetch."""
    import queue
    from concurrent.futures import Future
    from types import SimpleNamespace

    from distpar.core.model import Source, UnitReply, UnitResult, UnitStatus

    repo = make_repo(tmp_path / "repo", {"README.md": "# r\n"})
    start = sh_git(repo, "rev-parse", "HEAD")
    worker = tmp_path / "worker"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(worker)], check=True)
    tip = commit(worker, "w.txt")
    bundle = tmp_path / "w.bundle"
    assert gitops.bundle_of(worker, bundle, {"refs/heads/distpar/r/b/u1": tip}, [start])
    t = transfer.Transfer(repo, "r", tmp_path / "run", start, remote=True, repo_url=None)
    got: queue.SimpleQueue[tuple[str, BaseException | None, bool]] = queue.SimpleQueue()
    inflow = transfer.Inflow(t.fetch_back, lambda spec, fut, err: got.put(
        (spec.uid, err, gitops.try_rev(repo, "refs/heads/distpar/r/b/u1") == tip)))
    source = Source("bundle", "base.bundle")

    def reply(uid: str, path: Path) -> UnitReply:
        return UnitReply("r", 0, 1, "distpar/r/b/u1", start, tip, UnitResult(uid, 0, UnitStatus.OK), bundle=str(path))

    futures: list[Future[UnitReply]] = [Future(), Future(), Future()]
    for uid, fut in zip(("u1", "broken", "lost"), futures, strict=True):
        inflow.watch(SimpleNamespace(uid=uid, source=source), fut)
    futures[0].set_result(reply("u1", bundle))
    (tmp_path / "broken.bundle").write_text("# v2 git bundle\n" + f"{'0' * 40} refs/heads/x\n\nPACK-not-a-pack")
    futures[1].set_result(reply("broken", tmp_path / "broken.bundle"))
    futures[2].set_exception(RuntimeError("the worker's node went away"))
    seen = {uid: (err, fetched) for uid, err, fetched in (got.get(timeout=30) for _ in range(3))}
    inflow.close()
    assert seen["u1"] == (None, True)  # in the repository before the loop saw it
    assert seen["broken"][0] is not None
    assert seen["lost"][0] is None  # the loop reads the worker's failure from the future itself
