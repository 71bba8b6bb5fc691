"""Coordinator memory probe, run in a fresh process so that nothing else the benchmark holds is counted:

    python -m bench.probe ROOT WORKERS SECONDS

runs WORKERS independent batches of SECONDS on WORKERS local workers and prints, as JSON, the process's
resident memory after the imports, its peak during the run (VmHWM; the agents are other processes and are not
counted) and the run's wall time.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
from pathlib import Path


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: peak only


def main(argv: list[str]) -> int:
    root, workers, seconds = Path(argv[0]), int(argv[1]), float(argv[2])
    from bench.harness import Session
    from bench.plans import make_shape

    session = Session(root, log=lambda msg: None, keep=True)  # inside the parent's scratch, removed with it
    with session.environment():
        session.repo(2)
        baseline = rss_kib()
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                samples.append(rss_kib())

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        rec = session.run(f"memory-w{workers}", make_shape("independent-equal", workers, seconds), workers)
        stop.set()
        t.join()
    print(json.dumps({
        "workers": workers,
        "batches": workers,
        "seconds": seconds,
        "baseline_rss_mib": round(baseline / 1024, 2),
        "peak_rss_mib": round(rss_kib("VmHWM") / 1024, 2),
        "sampled_max_rss_mib": round(max(samples, default=baseline) / 1024, 2),
        "wall": round(rec.wall, 4),
        "overhead": round(rec.overhead, 4),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
