"""Provisioning latency of the thesis testbed scenarios (6.2.2, Tables 6.4 and 6.5) on the local cluster.

Each scenario is the thesis's: a starting set of deployed models, a fixed sample of recorded
requests (recorded once per scenario through the real front-end's proxy, as in the thesis "not
changed during the experiment"), then one back-end run whose report gives the provisioning
latency: the wall time of the apply step, the solver excluded. Every scenario is run with three
apply strategies side by side, on the same state:

- `sequential`: one action after another, each provision waiting until its model answers;
- `concurrent`: all actions at once (memory-ordered per node), each provision waiting until ready;
- `started`: all at once, a provision completes once its server process is started (the analogue
  of the thesis's Kubernetes client calls, which return before the pod is ready).

Cluster: the shipped five-node layout (four small "nano" nodes, one large "xavier") on a random
loopback block, the shipped model catalog and ALTO cost map (zone-i is next to nano-i).
Target (issue 5): provisioning 4 models takes at most 1.5x the time of 1 (thesis: 4.6x).

    .venv/bin/python -m bench.backend [--quick] [--repeat N] [--only KEYS] [--solver ipopt] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402
import yaml  # noqa: E402

TOKEN = "bench-backend-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HP2, HP3, LOGREG, FOREST = "half_plus_two", "half_plus_three", "digits_logreg", "digits_forest"
BODIES = {HP2: {"instances": [1.0, 2.0, 5.0]}, HP3: {"instances": [1.0]},
          LOGREG: {"instances": [[0.0] * 64]}, FOREST: {"instances": [[0.0] * 64]}}
NODES = [{"name": f"nano-{i}", "memory": 250000, "cpu": 4.0, "class": "small"} for i in range(1, 5)] + \
        [{"name": "xavier", "memory": 800000, "cpu": 8.0, "class": "large"}]
STRATEGIES = {
    "sequential": ["--concurrency", "1", "--wait-ready"],
    "concurrent": ["--concurrency", "8", "--wait-ready"],
    "started": ["--concurrency", "8"],
}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str                                    # the thesis's row name
    mode: int
    thesis_ms: float
    demand: dict                                  # (model, zone) -> requests
    before: tuple = ()                            # (model, node) deployed at the start
    expect: tuple[int, int] = (0, 0)              # (provisions, deletions)
    args: tuple = ()


SCENARIOS = [
    Scenario("m1-none", "No provisioning task needed", 1, 495.977,
             {(HP2, "zone-1"): 5}, before=((HP2, "nano-1"),)),
    Scenario("m1-p1", "Provision 1 model", 1, 2548.240, {(HP2, "zone-1"): 5}, expect=(1, 0)),
    Scenario("m1-p1-d1", "Provision 1 model while another is deleting on the same node", 1, 10499.871,
             {(HP2, "zone-1"): 5}, before=((HP3, "nano-1"),), expect=(1, 1),
             args=("--idle-seconds", "0", "--min-requests", "1")),
    Scenario("m1-p4", "Provision 4 models", 1, 11848.184,
             {(HP2, "zone-1"): 5, (HP3, "zone-2"): 5, (LOGREG, "zone-3"): 5, (FOREST, "zone-4"): 5}, expect=(4, 0)),
    Scenario("m2-d3", "Delete 3 models", 2, 818.980, {(HP2, "zone-1"): 5},
             before=((HP2, "nano-1"), (HP3, "nano-2"), (LOGREG, "nano-3"), (FOREST, "xavier")), expect=(0, 3)),
    Scenario("m2-p1-d2", "Provision 1 model and delete 2 models", 2, 3150.921, {(HP2, "zone-1"): 5},
             before=((HP3, "nano-2"), (LOGREG, "nano-3")), expect=(1, 2)),
    Scenario("m2-p2-d3", "Provision 2 models and delete 3 models", 2, 5915.636,
             {(HP2, "zone-1"): 5, (HP3, "zone-2"): 5},
             before=((LOGREG, "nano-1"), (FOREST, "xavier"), (HP2, "nano-3")), expect=(2, 3)),
    Scenario("m2-p3-d2", "Provision 3 models and delete 2 models", 2, 9350.82,
             {(HP2, "zone-1"): 5, (HP3, "zone-2"): 5, (LOGREG, "zone-3"): 5},
             before=((FOREST, "xavier"), (HP2, "nano-4")), expect=(3, 2)),
]
QUICK = ("m1-p1", "m1-p4")


@dataclass
class Result:
    scenario: Scenario
    ms: dict[str, list[float]] = field(default_factory=dict)     # strategy -> provisioning latency samples
    solve_ms: list[float] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def median(self, strategy: str) -> float | None:
        values = self.ms.get(strategy)
        return statistics.median(values) if values else None


class Bench:
    """A local cluster and a real front-end per scenario; the back-end run in-process."""

    def __init__(self, tmp: Path, *, solver: str):
        from cluster.local import LocalCluster

        self.tmp = tmp
        self.solver = solver
        prefix = f"127.{random.randint(2, 254)}.{random.randint(2, 254)}"
        nodes = [{**n, "address": f"{prefix}.{i + 2}"} for i, n in enumerate(NODES)]
        self.config = tmp / "cluster.yaml"
        self.config.write_text(yaml.safe_dump({"nodes": nodes}))
        self.cluster = LocalCluster(self.config, state_path=tmp / "cluster.db", stop_grace=3.0)
        self.server = None
        self.runs = 0

    # -- front-end --------------------------------------------------------------------------------
    def start_frontend(self, name: str) -> None:
        from frontend import create_app
        from tests.frontend_server import ServerThread

        self.stop_frontend()
        config = {"cluster": "local",
                  "cluster_settings": {"config_path": str(self.config), "state_path": str(self.cluster.state_path)},
                  "database": str(self.tmp / f"frontend-{name}.db"), "token": TOKEN, "refresh_interval": 0.1}
        self.server = ServerThread(create_app(config)).start()

    def stop_frontend(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def url(self) -> str:
        return self.server.url

    # -- cluster state ----------------------------------------------------------------------------
    def pairs(self) -> set[tuple[str, str]]:
        return {(d.model, d.node) for d in self.cluster.deployments()}

    def settle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            models = requests.get(f"{self.url}/stats/models", headers=AUTH, timeout=10).json()["models"]
            seen = {(m["model"], i["node"]) for m in models for i in m["instances"] if i.get("ready", True)}
            memory = requests.get(f"{self.url}/stats/memory", headers=AUTH, timeout=10).json()["nodes"]
            used = {n["node"]: n["used"] for n in memory}
            if seen == self.pairs() and used == {n.name: n.memory_used for n in self.cluster.nodes()}:
                return
            time.sleep(0.05)
        raise RuntimeError("the front-end did not catch up with the cluster")

    def converge(self, target: set[tuple[str, str]]) -> None:
        """Make the cluster run exactly `target` (all ready), then let the front-end see it."""
        current = self.pairs()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda p: self.cluster.remove(*p), current - target))
            list(pool.map(lambda p: self.cluster.deploy(*p, wait=True), target - current))
        self.settle()

    def seed(self, scenario: Scenario) -> None:
        """Record the scenario's requests through the proxy (each zone served by its own node)."""
        served = {(model, "nano-" + zone.split("-")[-1]) for model, zone in scenario.demand}
        self.converge(served)
        with requests.Session() as session:
            for (model, zone), count in scenario.demand.items():
                for _ in range(count):
                    answer = session.post(f"{self.url}/services/{model}/v1/models/{model}:predict",
                                          json=BODIES[model], timeout=30,
                                          headers={"X-Client-Zone": zone, "X-Client-Latency": "0.004"})
                    if answer.status_code != 200:
                        raise RuntimeError(f"recording {model} from {zone}: {answer.status_code} {answer.text}")

    # -- one back-end run -------------------------------------------------------------------------
    def run_backend(self, scenario: Scenario, strategy: str) -> dict:
        from backend.__main__ import main

        self.runs += 1
        report = self.tmp / f"report-{self.runs}.json"
        argv = ["--mode", str(scenario.mode), "--frontend", self.url, "--token", TOKEN, "--solver", self.solver,
                "--cluster-config", str(self.config), "--cluster-state", str(self.cluster.state_path),
                "--lock", str(self.tmp / "backend.lock"), "--report", str(report),
                *STRATEGIES[strategy], *scenario.args]
        code = main(argv)
        doc = json.loads(report.read_text())
        if code != 0:
            raise RuntimeError(f"{scenario.key}/{strategy}: back-end exit {code}: {doc['errors']}")
        return doc

    def close(self) -> None:
        self.stop_frontend()
        self.cluster.reset()


def run(bench: Bench, scenarios: list[Scenario], *, repeat: int, progress) -> list[Result]:
    results = []
    for scenario in scenarios:
        result = Result(scenario)
        bench.start_frontend(scenario.key)
        bench.seed(scenario)
        for rep in range(repeat):
            for strategy in STRATEGIES:
                bench.converge(set(scenario.before))
                doc = bench.run_backend(scenario, strategy)
                s = doc["summary"]
                got = (s["provisioned"], s["deleted"])
                if got != scenario.expect or s["failed"]:
                    result.mismatches.append(f"{strategy}: {got[0]} provisioned, {got[1]} deleted, "
                                             f"{s['failed']} failed (expected {scenario.expect})")
                result.ms.setdefault(strategy, []).append(doc["provisioning_latency_ms"])
                result.solve_ms.append(doc["solver"]["seconds"] * 1000)
                progress(f"  {scenario.key:9} {strategy:10} rep {rep + 1}: {doc['provisioning_latency_ms']:9.1f} ms "
                         f"({got[0]} provisioned, {got[1]} deleted)")
        results.append(result)
    return results


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(results: list[Result]) -> str:
    head = ("| mode | scenario (thesis row) | thesis ms | sequential ms | concurrent ms | started ms "
            "| thesis / concurrent | solver ms |")
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        conc = r.median("concurrent")
        ratio = f"{r.scenario.thesis_ms / conc:.1f}x" if conc and conc >= 1.0 else "-"
        lines.append(f"| {r.scenario.mode} | {r.scenario.title} | {r.scenario.thesis_ms:,.0f} | "
                     f"{_fmt(r.median('sequential'))} | {_fmt(conc)} | {_fmt(r.median('started'))} | {ratio} | "
                     f"{statistics.median(r.solve_ms):.1f} |")
    return "\n".join(lines)


def ratios(results: list[Result]) -> list[str]:
    by_key = {r.scenario.key: r for r in results}
    out = []
    one, four = by_key.get("m1-p1"), by_key.get("m1-p4")
    if one and four:
        # One provision waiting for readiness is the same operation whatever the strategy: its
        # samples are pooled for the reference time (a model server's start-up varies by +-25%).
        ready_one = statistics.median(one.ms.get("sequential", []) + one.ms.get("concurrent", []))
        for strategy in STRATEGIES:
            a = ready_one if strategy != "started" else one.median(strategy)
            b = four.median(strategy)
            if a and b:
                verdict = "meets" if b <= 1.5 * a else "misses"
                out.append(f"provision 4 ({strategy}) / provision 1: {b:,.0f} / {a:,.0f} ms = {b / a:.2f}x "
                           f"({verdict} the 1.5x target; thesis 11,848 / 2,548 = 4.65x)")
    for r in results:
        seq, conc = r.median("sequential"), r.median("concurrent")
        if seq and conc and r.scenario.expect != (0, 0):
            out.append(f"{r.scenario.key}: sequential / concurrent = {seq / conc:.2f}x")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; print a Markdown table and the ratios."""
    parser = argparse.ArgumentParser(prog="python -m bench.backend", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, once")
    parser.add_argument("--only", help="comma-separated scenario keys to run "
                                       f"({', '.join(s.key for s in SCENARIOS)})")
    parser.add_argument("--repeat", type=int, default=2, help="runs per scenario and strategy (median reported)")
    parser.add_argument("--solver", default="ipopt", help="solver backend (default ipopt, as the thesis)")
    parser.add_argument("--out", help="also write the Markdown table and ratios to this file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    scenarios = [s for s in SCENARIOS if s.key in QUICK] if args.quick else SCENARIOS
    if args.only:
        keys = {k.strip() for k in args.only.split(",") if k.strip()}
        unknown = keys - {s.key for s in SCENARIOS}
        if unknown:
            parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}")
        scenarios = [s for s in SCENARIOS if s.key in keys]
    repeat = 1 if args.quick else args.repeat

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)     # no access log lines between results
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-backend-") as tmp:
        bench = Bench(Path(tmp), solver=args.solver)
        try:
            results = run(bench, scenarios, repeat=repeat, progress=progress)
        except RuntimeError as exc:
            print(f"bench.backend: {exc}", file=sys.stderr)
            return 1
        finally:
            bench.close()
    text = "\n".join([
        f"Provisioning latency, median of {repeat} run(s) per cell, solver {args.solver}, "
        f"{len(NODES)}-node local cluster ({time.monotonic() - started:.0f} s in all); host: {os.cpu_count()} cores, "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        "(every local node shares the host's cores, so concurrent model-server start-ups compete for them):", "",
        table(results), "", *[f"- {line}" for line in ratios(results)]])
    print(text)
    mismatches = [f"{r.scenario.key} {m}" for r in results for m in r.mismatches]
    for line in mismatches:
        print(f"unexpected actions: {line}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
