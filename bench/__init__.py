"""distpar's benchmarks: wall-clock speedup, scheduling quality, run-time dispatch, overhead, coordinator scale,
backends (with Ray against the bare-Ray floor of ``bench/floor.py``), the tail of a large run
(``bench/tail.py``), collisions, workspaces and repeat runs with ``--reuse-workspaces`` (``bench/repeat.py``: run 2
against run 1, local, over SSH and on Ray, with each worker's readiness), all with the shipped fake agent
(batch durations set by the plan).

    python -m bench --quick            # about 4 minutes on a 2-core machine
    python -m bench                    # the full profile (the issues' configurations; about 30 minutes)
    python -m bench --quick --publish  # also copy the results to bench/results/

Writes ``results.json`` (machine, versions, every measurement with its repetitions), ``REPORT.md`` (tables,
targets) and PNG plots to ``bench/out/``. Results are ratios within one session: absolute times are never to
be compared across sessions or machines.
"""
