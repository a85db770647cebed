"""Run every benchmark in turn: `python -m bench [--quick] [NAME ...]`.

Each benchmark is a module `bench.<name>` with `main(argv) -> int`; results are printed and the
latest figures are kept by hand in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time


BENCHMARKS = ["solver", "solver_latency", "modelserver", "frontend", "backend", "k8s_scale", "k8s_replicas", "soak",
              "stats_collect", "upstream"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke check")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    failed = []
    for name in args.names or BENCHMARKS:
        print(f"\n=== bench.{name} ===", flush=True)
        started = time.monotonic()
        module = importlib.import_module(f"bench.{name}")
        status = module.main(["--quick"] if args.quick else [])
        print(f"=== bench.{name}: exit {status} in {time.monotonic() - started:.1f} s", flush=True)
        if status:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
