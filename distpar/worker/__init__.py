"""The worker: runs units, the same on every backend.

``unit.run_unit(settings, spec)`` is one unit's life (its workspace made ready, the agent's tries in ``retry``,
its work committed or saved in ``commit``); ``serve`` is the worker as a process (``python -m distpar.worker``);
``supervisor`` is what watches it on an SSH host; ``common`` holds what the steps share."""
