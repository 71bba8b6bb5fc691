"""python -m bench [--quick] [--out DIR] [--publish] [--only SECTION ...]: see bench/__init__.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.backends import RemoteOptions
from bench.config import PROFILES, profile
from bench.suite import SECTIONS, publish, run_suite, write_outputs

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="distpar benchmarks (see bench/__init__.py).")
    parser.add_argument("--quick", action="store_const", const="quick", dest="profile",
                        help="The quick profile (about 4 minutes on a 2-core machine).")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="full (default; the issues' configurations), quick, or tiny (seconds; a smoke test).")
    parser.set_defaults(profile="full")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Output directory (default {DEFAULT_OUT}).")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="Run only this section (repeatable).")
    parser.add_argument("--reps", type=int, default=None, help="Repetitions of every timed run (profile default).")
    parser.add_argument("--publish", action="store_true",
                        help="Copy results.json, REPORT.md and the plots to bench/results/ afterwards.")
    parser.add_argument("--render", action="store_true",
                        help="Only regenerate REPORT.md and the plots from OUT/results.json (no measuring).")
    parser.add_argument("--keep-scratch", action="store_true", help="Keep the repositories and state in OUT/scratch.")
    parser.add_argument("--ray-address", default=None, help="Ray cluster for the backends section.")
    parser.add_argument("--ssh-hosts", default="", help="SSH hosts for the backends section: H1[:P],H2[:P].")
    parser.add_argument("--ssh-identity", default=None, help="SSH private key for --ssh-hosts.")
    parser.add_argument("--accept-unknown-hosts", action="store_true", help="SSH: accept unknown host keys.")
    args = parser.parse_args(argv)

    if args.render:
        write_outputs(json.loads((args.out / "results.json").read_text()), args.out)
        print(f"bench: rendered {args.out / 'REPORT.md'} from results.json", file=sys.stderr)
    else:
        _measure(args)
    if args.publish:
        profile_run = json.loads((args.out / "results.json").read_text())["profile"]
        if profile_run != "quick":  # bench/results/ holds the latest quick results, the README quotes them
            print(f"bench: not published: bench/results/ holds quick results, this was {profile_run}", file=sys.stderr)
            return 2
        copied = publish(args.out)
        print(f"bench: published {len(copied)} file(s) to {copied[0].parent if copied else '-'}", file=sys.stderr)
    return 0


def _measure(args: argparse.Namespace) -> dict[str, object]:
    cfg = profile(args.profile, args.reps)
    remote = RemoteOptions(args.ray_address, tuple(h.strip() for h in args.ssh_hosts.split(",") if h.strip()),
                           args.ssh_identity, args.accept_unknown_hosts)
    sections = tuple(s for s in SECTIONS if not args.only or s in args.only)
    results = run_suite(cfg, args.out, sections=sections, remote=remote, keep_scratch=args.keep_scratch)
    print(f"bench: {cfg.name} profile done in {results['elapsed']:.0f}s; wrote {args.out / 'REPORT.md'}, "
          f"results.json and {len(results['plots'])} plot(s)", file=sys.stderr)
    for t in results["targets"]:
        print(f"  [{t['status']:>12}] {t['name']}: {t['measured']} (target {t['target']})")
    return results


if __name__ == "__main__":
    sys.exit(main())
