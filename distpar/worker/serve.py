"""The worker as a process: ``python -m distpar.worker --serve`` (the SSH backend's worker, one per slot for the
whole run) and ``python -m distpar.worker SPEC.json`` (one unit from a file).

The messages are JSON, framed with ``version`` (``model.SPEC_VERSION``) and serialised with ``core.serial``."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from distpar.core import serial
from distpar.core.model import SPEC_VERSION, UnitSpec, WorkerSettings
from distpar.infra import process
from distpar.worker.common import mask
from distpar.worker.unit import run_unit

HEARTBEAT_VAR = "DISTPAR_HEARTBEAT_SECONDS"  # serve: a {"heartbeat": time} line this often (the SSH backend's watch)


def settings_of(msg: dict[str, Any]) -> WorkerSettings:
    """The worker settings a message carries; a message of another version is refused, saying so."""
    if msg.get("version") != SPEC_VERSION:
        raise ValueError(f"message version {msg.get('version')} is not {SPEC_VERSION} (the coordinator and the "
                         "worker are different versions of distpar)")
    return serial.load(WorkerSettings, msg["settings"])


def serve() -> int:
    """Run units one after another, for the whole run, keeping the workspaces on disk between them. Stdin: JSON
    lines: ``{"version": V, "settings": {...}}`` first (the worker's settings, for the units that follow; a
    later one replaces them, when another worker's units come to this process), then ``{"op": "unit", "unit":
    {...}}`` (queued, run in order), ``{"op": "cancel"}`` (the running unit stops, its agents' work is saved;
    later units end at once as interrupted), ``{"op": "drop", "paths": [...]}`` (result bundles that arrived:
    removed). Stdout: JSON lines as things happen: ``{"event": KIND, "data": {...}}``, then per unit
    ``{"version": V, "result": {...}, "files": {path: base64}}`` (the reply, its logs and result bundle; the
    logs are removed here once sent) or ``{"error": "..."}``; with ``$DISTPAR_HEARTBEAT_SECONDS``, a
    ``{"heartbeat": TIME}`` line that often, busy or idle. End of stdin or SIGTERM: like cancel, then exit."""
    from distpar.worker.supervisor import read_lines

    lock = threading.Lock()

    def send(obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        with lock:
            try:
                while data:
                    data = data[os.write(1, data):]
            except OSError:  # nobody reads any more: the work stays in the workspace (and its bundle)
                pass

    cancel = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: cancel.set())
    # Settings, a unit, an error to answer at once, settings refused (answered for each unit), or the end.
    inbox: queue.SimpleQueue[WorkerSettings | UnitSpec | str | ValueError | None] = queue.SimpleQueue()

    def read() -> None:
        for line in read_lines(0):
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
                if "settings" in msg:
                    try:
                        inbox.put(settings_of(msg))
                    except (ValueError, KeyError, TypeError) as exc:  # its units are refused, one reply each
                        inbox.put(ValueError(f"the worker's settings were refused: {type(exc).__name__}: {exc}"))
                elif msg.get("op") == "cancel":
                    cancel.set()
                elif msg.get("op") == "drop":  # a result bundle the coordinator has a copy of now
                    for path in msg["paths"]:
                        if str(path).endswith(".bundle"):
                            Path(path).unlink(missing_ok=True)
                elif msg.get("op") == "unit":
                    inbox.put(serial.load(UnitSpec, msg["unit"]))
                else:
                    inbox.put(f"unknown op {msg.get('op')!r}")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                inbox.put(f"bad input line: {type(exc).__name__}: {exc}")
        cancel.set()
        inbox.put(None)

    def beat(every: float) -> None:
        while True:
            time.sleep(every)
            send({"heartbeat": time.time()})

    try:
        every = float(os.environ.get(HEARTBEAT_VAR, "") or 0)
    except ValueError:
        every = 0
    if every > 0:
        threading.Thread(target=beat, args=(every,), daemon=True).start()
    threading.Thread(target=read, daemon=True).start()
    settings: WorkerSettings | None = None
    refused = "a unit came before the worker's settings"
    while (item := inbox.get()) is not None:
        if isinstance(item, (WorkerSettings, ValueError)):
            settings, refused = (item, refused) if isinstance(item, WorkerSettings) else (None, str(item))
            continue
        if settings is None and isinstance(item, UnitSpec):
            item = refused
        if isinstance(item, str):
            send({"error": item})
            continue
        assert settings is not None
        try:
            reply = run_unit(settings, item, cancel, lambda kind, data: send({"event": kind, "data": data}))
        except Exception as exc:  # git or the disk failed under this unit: report it, stay up for the next one
            tb = traceback.format_exc(limit=4)
            send({"error": mask(f"{type(exc).__name__}: {exc}\n{tb}", settings.env)})
            continue
        # The unit's logs and result bundle travel with the reply: no extra round trip, no SFTP needed (not the
        # copy of the plan run_unit leaves there: the coordinator has it).
        logs = [f for f in Path(settings.log_dir).iterdir() if f.name != "plan.md" and f.is_file()]
        files = [*logs, *([Path(reply.bundle)] if reply.bundle else [])]
        send({"version": SPEC_VERSION, "result": serial.dump(reply),
              "files": {str(f): base64.b64encode(f.read_bytes()).decode() for f in files if f.is_file()}})
        for f in logs:  # the worker's next unit sends only its own
            f.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m distpar.worker SPEC.json`` (``{"version": V, "settings": {...}, "unit": {...}}``): run one unit,
    print its reply as JSON on stdout; ``python -m distpar.worker --serve``: see ``serve``."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--serve"]:
        return serve()
    if len(args) != 1:
        print("usage: python -m distpar.worker SPEC.json | --serve", file=sys.stderr)
        return 2
    msg = json.loads(Path(args[0]).read_text())
    settings, spec = settings_of(msg), serial.load(UnitSpec, msg["unit"])
    # A process of its own: children its agents move into sessions of their own come back to it (and are
    # collected when reap_unit kills them) instead of going to init. Not in run_unit: threads of a
    # coordinator (the local backend) would attract every orphan of the coordinator's process tree.
    process.become_subreaper()
    cancel = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: cancel.set())
    reply = run_unit(settings, spec, cancel)
    print(json.dumps({"version": SPEC_VERSION, "result": serial.dump(reply)}))
    return 130 if reply.interrupted else 0
