"""The one Ray version (and Python minor) distpar runs with, and the check that a cluster runs them too.

``RAY_VERSION`` is pinned in pyproject.toml's ``ray`` extra, in the worker image (deploy/images/build.sh
installs that extra) and in ``spec.rayVersion`` of deploy/k8s/raycluster.yaml; a test asserts they agree.
The Ray client needs the same Ray release and the same Python major.minor on both sides (a different patch
release of Python only logs a warning), so a coordinator and a cluster that differ fail at connect, before
anything is started, with both versions named.
"""

from __future__ import annotations

import json
import platform
import time
from typing import Any

from distpar.core.errors import BackendError

RAY_VERSION = "2.60.0"
PYTHON_MINOR = "3.11"  # the worker image's python3 (Debian bookworm); wheels are built for it

_METADATA_KEY = b"CLUSTER_METADATA"  # ray._common.usage.usage_constants.CLUSTER_METADATA_KEY
_METADATA_NAMESPACE = b"cluster"  # ray._private.ray_constants.KV_NAMESPACE_CLUSTER


def minor(version: str) -> str:
    """``3.11`` of ``3.11.7``."""
    return ".".join(version.split(".")[:2])


def cluster_versions(ray_module: Any) -> tuple[str, str]:
    """The Ray and Python versions the connected cluster was started with (from its GCS, as Ray records them).

    Works for a Ray client connection (``ray://``) and for a driver on a cluster node alike."""
    from ray.experimental.internal_kv import _internal_kv_get  # client-mode aware

    try:
        raw = _internal_kv_get(_METADATA_KEY, namespace=_METADATA_NAMESPACE)
        meta = json.loads(raw.decode("utf-8")) if raw else {}
        return str(meta["ray_version"]), str(meta["python_version"])
    except Exception as exc:
        raise BackendError(f"cannot read the Ray cluster's Ray and Python versions: {exc}") from exc


def check_cluster(ray_module: Any) -> None:
    """Raise BackendError naming both sides unless the coordinator and the connected cluster both run
    Ray ``RAY_VERSION`` on Python ``PYTHON_MINOR``. Call it right after ``ray.init``, before submitting."""
    mine = (str(ray_module.__version__), platform.python_version())
    theirs = cluster_versions(ray_module)
    want = (RAY_VERSION, PYTHON_MINOR)
    if all(v[0] == want[0] and minor(v[1]) == want[1] for v in (mine, theirs)):
        return
    raise BackendError(
        f"Ray version mismatch: this coordinator runs Ray {mine[0]} on Python {mine[1]}, the cluster runs "
        f"Ray {theirs[0]} on Python {theirs[1]}; distpar needs Ray {RAY_VERSION} on Python {PYTHON_MINOR} on both",
        hint="install the coordinator with pip install 'distpar[ray]' and build the image with "
             "deploy/images/build.sh from the same checkout (see deploy/README.md)",
    )


def shutdown(ray_module: Any) -> None:
    """``ray.shutdown()``, first stopping a Ray client's watch on its gRPC channel.

    Ray's client closes its channel with its connectivity callback still subscribed, so gRPC's polling thread
    can meet the closed channel and die with ``ValueError: Cannot invoke RPC: Channel closed!`` printed on stderr
    (grpc/grpc#18995): an alarming traceback at the end of a good run. Unsubscribing first lets the thread end at
    its next wake-up (every 0.2 s); this waits for that, at most a second, then shuts down."""
    try:
        worker = ray_module.util.client.ray.get_context().client_worker
        channel = worker.channel if worker is not None else None
        if channel is not None:
            channel.unsubscribe(worker._on_channel_state_change)
            state = channel._connectivity_state
            deadline = time.monotonic() + 1.0
            while state.polling and time.monotonic() < deadline:
                time.sleep(0.02)
    except AttributeError:  # not a client connection, or another Ray's internals: a plain shutdown
        pass
    ray_module.shutdown()
