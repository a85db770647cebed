"""`python -m testbed check|trace|run SCENARIO.yaml [--catalog FILE] [--cluster FILE] [--json]`.

`run SCENARIO.yaml --out DIR [--strategies a,b] [--mode lookup|proxy] [--every S] [--initial spread|empty]
[--cpu-scale auto|X] [--frontend-setting KEY=VALUE ...]` runs the achieved-latency experiment
(testbed.runner): every strategy on a clean system, the same trace, results.json / results.md / plots in
DIR; on a host faster than the reference one the nodes' quotas are scaled down so they serve at the
speed the scenario was written for (testbed.calibrate). `--frontend-setting` gives every strategy's
front-end a setting beside its policy (an ablation on the same trace, e.g. `dispatch_quantile=0.5`).

`check` prints a summary of a valid scenario (exit 0) or its one-line error (exit 2, no
traceback); `trace` prints the counts of its seeded trace per phase, zone and model (JSON), and
with `--out FILE` writes the trace itself (one JSON line per arrival).
The client emulator is `python -m testbed.clients`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .scenario import ScenarioError, describe, load_scenario


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
    run = sub.add_parser("run", help="run the experiment: every strategy on the same trace")
    run.add_argument("scenario", help="scenario YAML file")
    run.add_argument("--out", required=True, help="folder for results.json, results.md, plots and logs")
    run.add_argument("--strategies", help="comma-separated subset (default: the scenario's)")
    run.add_argument("--mode", choices=("lookup", "proxy"), default="lookup",
                     help="lookup: GET /services then call the node (the thesis's client); proxy: through the front-end")
    run.add_argument("--every", type=float, default=10.0, help="seconds between back-end runs (default 10)")
    run.add_argument("--initial", choices=("spread", "empty"), default="spread",
                     help="spread (default): every strategy starts from the replicas Kubernetes' scheduler would "
                          "spread; empty: only kubernetes does, the others provision on demand (cold starts)")
    run.add_argument("--catalog", help="model catalog (default config/models.yaml)")
    run.add_argument("--cluster", help="cluster config used when the scenario has no nodes")
    run.add_argument("--cpu-scale", default="auto", metavar="auto|X",
                     help="every node's cpu_quota times X in (0, 1]; auto (default): so that the nodes run "
                          "at the reference host's speed on a faster host (testbed/calibrate.py)")
    run.add_argument("--frontend-setting", action="append", default=[], metavar="KEY=VALUE",
                     help="a front-end setting for every strategy beside its policy (repeat), "
                          "e.g. dispatch_quantile=0.5")
    args = parser.parse_args(argv)
    cpu_scale = None
    settings: dict[str, str] = {}
    if args.command == "run":
        from .calibrate import parse_scale
        from .runner import frontend_setting

        try:
            cpu_scale = parse_scale(args.cpu_scale)
            settings = dict(frontend_setting(item) for item in args.frontend_setting)
        except ValueError as exc:
            print(f"testbed: {exc}", file=sys.stderr)
            return 2
    if args.command == "run" and not (0 < args.every <= 3600):
        print("testbed: --every must be between 0 and 3600 seconds", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario, catalog_path=args.catalog, cluster_path=args.cluster)
    except ScenarioError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        from pathlib import Path

        from .runner import run_experiment
        from .strategies import STRATEGIES

        names = [n.strip() for n in args.strategies.split(",") if n.strip()] if args.strategies else None
        unknown = [n for n in names or [] if n not in STRATEGIES]
        if unknown or names == []:
            print(f"testbed: --strategies: unknown {', '.join(unknown) or '(empty)'} "
                  f"(known: {', '.join(STRATEGIES)})", file=sys.stderr)
            return 2
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            print(f"testbed: --out {out} is not a folder", file=sys.stderr)
            return 2
        # SIGTERM (a job's timeout, `kill`) stops the run as Ctrl-C does: through the runner's
        # finally blocks, which stop the strategy's system (it runs in a session of its own and would
        # otherwise outlive the run, holding its ports, cgroups and model servers).
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            doc = run_experiment(scenario, out, strategies=names, mode=args.mode, every=args.every,
                                 initial=args.initial, cpu_scale=cpu_scale, frontend_settings=settings,
                                 progress=lambda line: print(line, file=sys.stderr, flush=True))
        except (RuntimeError, OSError, ValueError) as exc:
            print(f"testbed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("testbed: interrupted; the running strategy's system was stopped, no results written",
                  file=sys.stderr)
            return 130
        print((out / "results.md").read_text())
        print(f"results: {out / 'results.json'}; plots: {', '.join(doc.get('plots', []))}")
        return 0
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
    try:
        sys.exit(main())
    except BrokenPipeError:         # stdout closed early (`| head`): not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
