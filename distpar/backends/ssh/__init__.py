"""The SSH backend (see ``backend``): connection, channel, shipping, slots and the host inventory (``hosts``)."""

from __future__ import annotations

from distpar.backends.ssh.backend import SSHBackend

__all__ = ["SSHBackend"]
