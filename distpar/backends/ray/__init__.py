"""The Ray backend: one Ray actor per node, living for the whole run and hosting that node's workers as threads;
each worker keeps its own clone there and runs the units sent to it one at a time (``distpar.worker.unit.run_unit``
on the node). A worker's settings go with its first unit on an actor; the actor keeps them.

Why one actor per node, not one per worker
    A Ray actor is a process that imports Ray and distpar before it takes anything: 32 workers meant 32 such
    processes starting at once, which on a small cluster took longer than the agents' work. Agents mostly wait
    on an API, so a node's workers share one process (one thread per running unit, as the local backend does),
    and the process-wide agent cap and start spacing (``--max-concurrent-agents``, ``--stagger``) apply per node.

How the pieces travel
    Code out: the coordinator remembers which commits each actor holds (the bases it was sent, the heads it
    handed back). An actor's first unit gets the run's start bundle (read once, ``ray.put`` once, staged once
    per node) plus the unit's increment; every later unit gets only ``base ^<what the actor holds>`` as the bytes
    of a bundle (``transfer.increment``), or nothing when the actor already holds the base. With ``--repo-url``
    the actor fetches from and pushes to the remote itself. Work back: the unit's reply (a ``UnitReply``),
    the bytes of the bundle of its new commits and the (masked, last 1 MB) text of its log come back as the last
    item of the unit's generator; the coordinator writes the bundle (git fetches from a file) and the log (for
    ``distpar logs``) under ``<run dir>``.

Events
    ``run`` is a streaming generator: it yields ``accepted`` when the actor takes the unit, then whatever the
    worker reports as it happens (``unit_started`` when the agent really starts), then the result. The
    coordinator follows every running unit in one asyncio thread (``async for`` over the stream, ``await`` on
    each reference: no polling) and hands events to ``ctx.events``. Ray Client (``ray://``) cannot stream
    generators: over it a unit's items, events included, arrive together when the unit ends.

Where it runs on a node
    ``$DISTPAR_RAY_DIR`` (default ``<tempdir>/distpar-ray``) ``/<run id>/<node id>/`` holds the staged bundles,
    the workers' workspaces (``wt/w<k>``, kept for the run) and the logs. At close each node's actor (or a small
    task, where none is left) removes the directory, except a workspace whose last unit never
    handed its work back (a ``wt/w<k>.busy`` marker): that one is kept, and logged, for manual recovery. Then
    the actors are killed.

Placement and resources
    The workers are spread evenly over the live nodes, one actor per node that gets any, placed there by node
    affinity. Agents mostly wait on an API, so a worker asks for ``0.01`` CPU. An operator who wants to cap the
    agents per host starts each node with a custom resource, e.g. ``ray start ... --resources='{"distpar_slot":
    4}'``; when the cluster defines ``distpar_slot`` a node gets at most its slots' worth of workers, each
    holding one slot (and no CPU) for the run, so a run may not ask for more workers than there are slots.
    Actors are never restarted by Ray: a unit whose actor died (its node went away) raises ``BackendError`` and
    distpar's ``--retries`` decides; each worker of that actor goes on with an actor of its own on a live node
    (``SPREAD``), made when its next unit comes. A unit sent to an actor that died before taking it is sent again
    to a new actor (it never ran).

Cancel
    ``cancel()`` calls every actor's ``interrupt``: its workers' cancel event is set, the agent's process group is
    killed, unfinished work is saved on a ref and handed back with the result. Actors whose unit is still running
    after a grace period are killed (``ray.kill``, with every unit of that node): their workspace, with whatever
    the agent left in it, stays on the node. Ray kills a dying worker's direct children (the agents); to also reap
    what an agent started in its own session, start the nodes with
    ``RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper=true``.

Secrets
    Forwarded variables travel inside the unit's spec (an argument of ``run``), not in a ``runtime_env``: Ray
    lists runtime environments in its state API and dashboard, task arguments it does not show.

Nodes need the same version of distpar as the coordinator, git, and the agent CLI.
"""

from distpar.backends.ray.backend import RayBackend, placement
from distpar.backends.ray.node import NODE_DIR_VAR, SLOT, STALL_VAR, NodeActor, stall_after

__all__ = ["NODE_DIR_VAR", "SLOT", "STALL_VAR", "NodeActor", "RayBackend", "placement", "stall_after"]
