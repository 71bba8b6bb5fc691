"""What each benchmark profile measures: ``quick`` (under 4 minutes on a 2-core machine), ``full`` (the issues'
configurations, about 30 minutes), ``tiny`` (seconds; for the smoke test, numbers meaningless)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    reps: int  # repetitions of the speedup runs
    light_reps: int  # repetitions of the other real runs and timings (stable, or costly)
    # 1. speedup: independent equal batches, serial vs N workers
    speedup_batches: int = 16
    speedup_seconds: float = 5.0
    speedup_workers: tuple[int, ...] = (2, 4, 8, 16)
    target_probe: bool = True  # also run the 16 x 5 s at 8 workers when the speedup plan differs
    # the core issue's "done when": 6 independent 3-second batches, 6 workers vs 1
    done_when: tuple[int, float, int] = (6, 3.0, 6)
    # 2. scheduling quality: pure predictions, and a few real runs with short sleeps
    sched_sizes: tuple[int, ...] = (12, 48, 200)
    sched_workers: tuple[int, ...] = (2, 4, 8, 16)
    measured_shapes: tuple[str, ...] = ("mixed-dag", "chains")
    measured_batches: int = 12
    measured_unit: float = 0.5
    measured_workers: int = 4
    # 2b. run-time dispatch (issue 11): independent batches of spread durations (n, shortest s, longest s,
    # workers), with each way of giving estimates; issue 15's CAST stages (seconds of each agent, per stage)
    spread_plan: tuple[int, float, float, int] = (16, 1.0, 12.0, 4)
    spread_estimates: tuple[str, ...] = ("none", "wrong", "exact")
    cast_stages: tuple[tuple[float, ...], ...] = ((3.0, 3.0, 3.0), (1.0,), (2.0, 2.0), (1.0,))
    cast_scale: float = 1.0  # multiplies cast_stages
    cast_workers: int = 3
    # 3. overhead: batches that only start the agent (no sleep), one per worker; repo size -> worker counts
    overhead_runs: dict[int, tuple[int, ...]] = field(
        default_factory=lambda: {2: (1, 4, 16), 1000: (1, 4, 8, 16), 20000: (1, 4, 16)})
    gitops_repos: tuple[int, ...] = (2, 1000, 20000)
    gitops_remote_max_files: int | None = None  # time bundle/clone (remote code transfer) only up to this size
    # 4. coordinator scale
    scale_sizes: tuple[int, ...] = (100, 1000, 10000)
    scale_workers: int = 64
    planning_reps: int = 3  # pure code: cheap, and its best-of-N is the least disturbed by other load
    trace_max_batches: int | None = None  # tracemalloc the planning only up to this size (tracing is slow)
    executor_max_units: int | None = None  # registration and run-state timings only up to this size (O(n^2) today)
    journal_batches: int = 1000
    memory_workers: int = 64
    memory_seconds: float = 2.0
    # 5. backends: the same plan on each available backend; Ray's target run in full mode
    backend_plan: tuple[int, float, int] = (8, 1.0, 4)
    ray_target: tuple[int, float, int] | None = (64, 5.0, 32)
    ray_cluster: tuple[int, int] | None = (4, 8)  # a local multi-node cluster: nodes, distpar slots per node
    ssh_loopback: int = 2  # loopback sshd servers to start when no --ssh-hosts are given (0: none)
    # issue 11's backend targets: Ray started for the run vs local --workers 1; SSH over the loopback hosts
    ray_speedup: tuple[int, float, int] | None = (16, 2.0, 8)
    ssh_target: tuple[int, float, int] | None = (12, 3.0, 6)  # workers spread evenly: 3 slots on each of 2 hosts
    # issue 23: distpar on Ray against the bare-Ray floor (bench/floor.py), measured in turn in one session:
    # (units, seconds, workers); on ray_cluster when the profile has one, else on a cluster of ray_floor_cluster
    ray_floor: tuple[int, float, int] | None = (64, 5.0, 32)
    ray_floor_cluster: tuple[int, int] = (2, 4)
    # 7. the tail (issue 23): zero-second units by plan size, on this many workers
    tail_sizes: tuple[int, ...] = (100, 300, 1000)
    tail_workers: int = 16
    # 9. repeat runs (issue 23): two runs with --reuse-workspaces on repositories of these sizes, a setup of
    # repeat_setup seconds keyed on package.json, repeat_units zero-second units on repeat_workers workers, on each
    # backend (SSH over repeat_ssh_hosts loopback sshd servers; Ray on a local cluster of nodes x slots)
    repeat_sizes: tuple[int, ...] = (1000, 20000)
    repeat_setup: float = 3.0
    repeat_units: int = 8
    repeat_workers: int = 4
    repeat_backends: tuple[str, ...] = ("local", "ssh", "ray")
    repeat_ssh_hosts: int = 2
    repeat_ray_cluster: tuple[int, int] = (2, 2)


FULL = Config(name="full", reps=3, light_reps=3)

QUICK = Config(
    name="quick",
    reps=2,
    light_reps=1,
    speedup_seconds=0.25,
    measured_shapes=("mixed-dag",),
    measured_unit=0.25,
    overhead_runs={2: (1, 4, 16), 1000: (1, 4, 16), 20000: (1, 2)},
    gitops_remote_max_files=1000,
    trace_max_batches=1000,
    executor_max_units=1000,
    memory_seconds=0.5,
    backend_plan=(8, 0.25, 4),
    ray_target=None,
    ray_cluster=None,
    ssh_loopback=2,
    spread_plan=(16, 0.25, 3.0, 4),
    cast_scale=0.5,
    ray_speedup=None,
    ssh_target=None,
    tail_sizes=(100, 300),
    ray_floor=(16, 1.0, 8),
)

TINY = Config(
    name="tiny",
    reps=1,
    light_reps=1,
    speedup_batches=2,
    speedup_seconds=0.05,
    speedup_workers=(2,),
    target_probe=False,
    done_when=(2, 0.05, 2),
    sched_sizes=(8,),
    sched_workers=(2, 4),
    measured_shapes=("mixed-dag",),
    measured_batches=6,
    measured_unit=0.05,
    measured_workers=2,
    overhead_runs={2: (1, 2), 50: (1,)},
    gitops_repos=(2, 50),
    scale_sizes=(10, 50),
    planning_reps=1,
    scale_workers=4,
    journal_batches=20,
    memory_workers=2,
    memory_seconds=0.05,
    backend_plan=(2, 0.05, 2),
    ray_target=None,
    ray_cluster=None,
    ssh_loopback=0,
    spread_plan=(4, 0.05, 0.5, 2),
    spread_estimates=("none",),
    cast_scale=0.05,
    ray_speedup=None,
    ssh_target=None,
    tail_sizes=(6,),
    tail_workers=2,
    ray_floor=None,
    repeat_sizes=(50,),
    repeat_setup=0.3,
    repeat_backends=("local",),
)

PROFILES = {"quick": QUICK, "full": FULL, "tiny": TINY}


def profile(name: str, reps: int | None = None) -> Config:
    cfg = PROFILES[name]
    return replace(cfg, reps=reps, light_reps=reps) if reps else cfg
