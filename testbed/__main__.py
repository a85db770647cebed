"""`python -m testbed check|trace SCENARIO.yaml [--catalog FILE] [--cluster FILE] [--json]`.

`check` prints a summary of a valid scenario (exit 0) or its one-line error (exit 2, no
traceback); `trace` prints the counts of its seeded trace per phase, zone and model (JSON), and
with `--out FILE` writes the trace itself (one JSON line per arrival).
The client emulator is `python -m testbed.clients`.
"""
from __future__ import annotations

import argparse
import json
import sys

from .scenario import ScenarioError, describe, load_scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description="The edge testbed.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a scenario file and summarise it")
    check.add_argument("scenario", help="scenario YAML file")
    check.add_argument("--catalog", help="model catalog (default config/models.yaml)")
    check.add_argument("--cluster", help="cluster config used when the scenario has no nodes "
                                         "(default config/cluster.local.yaml)")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    trace = sub.add_parser("trace", help="generate a scenario's trace; print its counts")
    trace.add_argument("scenario", help="scenario YAML file")
    trace.add_argument("--catalog", help="model catalog (default config/models.yaml)")
    trace.add_argument("--cluster", help="cluster config used when the scenario has no nodes")
    trace.add_argument("--out", help="write the arrivals to this file (JSON lines)")
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario, catalog_path=args.catalog, cluster_path=args.cluster)
    except ScenarioError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 2
    if args.command == "trace":
        from .trace import generate_trace, summarize, write_trace

        arrivals = generate_trace(scenario)
        if args.out:
            write_trace(arrivals, args.out)
        print(json.dumps(summarize(arrivals), indent=2))
        return 0
    print(json.dumps(scenario.summary(), indent=2) if args.json else describe(scenario))
    return 0


if __name__ == "__main__":
    sys.exit(main())
