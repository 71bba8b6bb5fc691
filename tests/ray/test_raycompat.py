"""distpar.backends.raycompat against a real local Ray cluster (tests/ray/conftest.py): the versions it reads are the
cluster's own, a matching cluster passes, and a mismatch (the pinned version patched, never the cluster) is a
BackendError naming both sides, exit code 4."""

from __future__ import annotations

import platform

import pytest

from distpar.backends import raycompat
from distpar.core.errors import BackendError, ExitCode
from tests.ray.conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def test_reads_the_clusters_versions(ray_cluster: RayCluster) -> None:
    import ray

    assert raycompat.cluster_versions(ray) == (ray.__version__, platform.python_version())
    raycompat.check_cluster(ray)  # this checkout's pins are what is installed here


def test_a_different_pinned_ray_is_refused_naming_both(ray_cluster: RayCluster,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(raycompat, "RAY_VERSION", "2.59.0")
    with pytest.raises(BackendError) as err:
        raycompat.check_cluster(ray)
    msg = err.value.message
    assert msg == (f"Ray version mismatch: this coordinator runs Ray {ray.__version__} on Python "
                   f"{platform.python_version()}, the cluster runs Ray {ray.__version__} on Python "
                   f"{platform.python_version()}; distpar needs Ray 2.59.0 on Python {raycompat.PYTHON_MINOR} on both")
    assert err.value.exit_code == ExitCode.BACKEND == 4
    assert err.value.hint and "deploy/images/build.sh" in err.value.hint


def test_a_different_python_minor_is_refused(ray_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(raycompat, "PYTHON_MINOR", "3.12")
    with pytest.raises(BackendError, match=r"needs Ray .* on Python 3\.12 on both"):
        raycompat.check_cluster(ray)
