"""Backends are transports: each runs ``distpar.worker.unit.run_unit`` somewhere and hands the reply back."""

from __future__ import annotations

from typing import Any

from distpar.backends.base import Backend
from distpar.core.errors import UsageError

BACKENDS = ("local", "ray", "ssh")


def make_backend(name: str, options: dict[str, Any]) -> Backend:
    if name == "local":
        from distpar.backends.local import LocalBackend

        return LocalBackend(**options)
    if name == "ray":
        from distpar.backends.ray import RayBackend

        return RayBackend(**options)
    if name == "ssh":
        from distpar.backends.ssh import SSHBackend

        return SSHBackend(**options)
    raise UsageError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
