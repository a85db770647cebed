"""Shared harness for the back-end's integration tests (no tests here; imported by test_backend_*.py).

`make_system(nodes=None)` gives a real local cluster (the shared `local_cluster_factory`: unique
loopback addresses, real model servers), the real front-end served on a free loopback port in a
thread, and an ALTO cost map that puts zone z-a next to node-a, z-b next to node-b and z-c next
to node-c. Demand is recorded through the front-end's real proxy (`seed_demand`: the models are
deployed, asked for from their zones, then removed, so the front-end's stats hold real requests
and the back-end finds the models missing). The back-end runs in-process through its CLI `main`.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from conftest_frontend import cluster_settings

from tests.waiting import wait_for

TOKEN = "backend-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HP2, HP3, LOGREG, FOREST = "half_plus_two", "half_plus_three", "digits_logreg", "digits_forest"
BODIES = {HP2: {"instances": [1.0, 2.0, 5.0]}, HP3: {"instances": [1.0]},
          LOGREG: {"instances": [[0.0] * 64]}, FOREST: {"instances": [[0.0] * 64]}}
NODES = [
    {"name": "node-a", "memory": 250000, "cpu": 2.0, "class": "small"},
    {"name": "node-b", "memory": 250000, "cpu": 2.0, "class": "small"},
    {"name": "node-c", "memory": 800000, "cpu": 4.0, "class": "large"},
]
NEAR, FAR = 0.002, 0.08     # seconds: a zone's own node, any other node


def alto_doc(nodes: list[str]) -> dict:
    zones = {f"z-{n.split('-')[-1]}": n for n in nodes}
    return {"meta": {"cost-type": {"cost-mode": "numerical", "cost-metric": "delay"}},
            "cost-map": {zone: {n: (NEAR if n == near else FAR) for n in nodes} for zone, near in zones.items()}}


@dataclass
class System:
    cluster: Any
    url: str
    tmp: Path
    alto: Path
    runs: int = 0
    extra: list[str] = field(default_factory=list)

    # -- cluster and front-end state ------------------------------------------------------------
    def pairs(self) -> set[tuple[str, str]]:
        """(model, node) of every deployment the cluster has."""
        return {(d.model, d.node) for d in self.cluster.deployments()}

    def frontend_pairs(self, *, ready: bool = False) -> set[tuple[str, str]]:
        doc = requests.get(f"{self.url}/stats/models", headers=AUTH, timeout=10).json()
        return {(m["model"], i["node"]) for m in doc["models"] for i in m["instances"]
                if i.get("ready", True) or not ready}

    def frontend_used(self) -> dict[str, int]:
        doc = requests.get(f"{self.url}/stats/memory", headers=AUTH, timeout=10).json()
        return {n["node"]: n["used"] for n in doc["nodes"]}

    def settle(self) -> None:
        """Wait until the front-end's cache shows what the cluster has."""
        wait_for(lambda: self.frontend_pairs(ready=True) == self.pairs() and
                 self.frontend_used() == {n.name: n.memory_used for n in self.cluster.nodes()},
                 what="the front-end to see the cluster")

    def deploy(self, pairs: list[tuple[str, str]]) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(pairs))) as pool:
            list(pool.map(lambda p: self.cluster.deploy(p[0], p[1], wait=True), pairs))
        self.settle()

    def remove(self, pairs: list[tuple[str, str]]) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(pairs))) as pool:
            list(pool.map(lambda p: self.cluster.remove(p[0], p[1]), pairs))
        self.settle()

    # -- demand ---------------------------------------------------------------------------------
    def request(self, model: str, zone: str, *, latency: float | None = None,
                rtt: tuple[float, str] | None = None) -> requests.Response:
        headers = {"X-Client-Zone": zone}
        if latency is not None:
            headers["X-Client-Latency"] = str(latency)
        if rtt is not None:            # a round-trip report: (seconds, node)
            headers["X-Client-RTT"], headers["X-Client-RTT-Node"] = str(rtt[0]), rtt[1]
        return requests.post(f"{self.url}/services/{model}/v1/models/{model}:predict", json=BODIES[model],
                             headers=headers, timeout=30)

    def seed_demand(self, demand: dict[tuple[str, str], int], *, keep: tuple = ()) -> None:
        """Record `count` real proxied requests per (model, zone): deploy, ask, then remove.

        Each model is served during the recording by its zone's own node (latency NEAR reported, and a
        round trip NEAR to that node: the back-end's RTT comes from these reports);
        pairs in `keep` stay deployed afterwards, the others are removed again."""
        served = sorted({(model, "node-" + zone.split("-")[-1]) for model, zone in demand})
        self.deploy(served)
        for (model, zone), count in demand.items():
            for _ in range(count):
                answer = self.request(model, zone, latency=NEAR, rtt=(NEAR, "node-" + zone.split("-")[-1]))
                assert answer.status_code == 200, answer.text
        self.remove([p for p in served if p not in set(keep)])

    # -- the back-end ---------------------------------------------------------------------------
    def argv(self, mode: int, *extra: str) -> list[str]:
        self.runs += 1
        return ["--mode", str(mode), "--frontend", self.url, "--token", TOKEN,
                "--cluster-config", str(self.cluster.config_path), "--cluster-state", str(self.cluster.state_path),
                "--catalog", str(self.cluster.catalog_path),
                "--models-dir", str(self.cluster.models_dir), "--lock", str(self.tmp / "backend.lock"),
                "--alto", str(self.alto), "--report", str(self.tmp / f"report-{self.runs}.json"),
                *self.extra, *extra]

    def backend(self, mode: int, *extra: str) -> tuple[int, dict]:
        """Run `python -m backend` in-process; return (exit code, report)."""
        from backend.__main__ import main

        argv = self.argv(mode, *extra)
        code = main(argv)
        report = json.loads(Path(argv[argv.index("--report") + 1]).read_text())
        return code, report

    def plan(self) -> dict | None:
        answer = requests.get(f"{self.url}/plan", headers=AUTH, timeout=10)
        return answer.json() if answer.status_code == 200 else None


def actions(report: dict, kind: str, *, done: bool = True) -> set[tuple[str, str]]:
    return {(a["model"], a["node"]) for a in report["actions"]
            if a["kind"] == kind and (not done or (a["ok"] and not a.get("skipped")))}


@pytest.fixture
def make_system(local_cluster_factory, tmp_path: Path) -> Iterator[Callable[..., System]]:
    """Yield make(nodes=None) -> System; every server is stopped at teardown."""
    from frontend import create_app
    from tests.frontend_server import ServerThread

    servers: list[ServerThread] = []

    def make(nodes: list[dict] | None = None) -> System:
        nodes = nodes or NODES
        cluster = local_cluster_factory(nodes)
        alto = tmp_path / f"alto-{len(servers)}.json"
        alto.write_text(json.dumps(alto_doc([n["name"] for n in nodes])))
        config = {"cluster": "local",
                  "cluster_settings": cluster_settings(cluster),
                  "database": str(tmp_path / f"frontend-{len(servers)}.db"), "token": TOKEN,
                  "refresh_interval": 0.1}
        server = ServerThread(create_app(config)).start()
        servers.append(server)
        return System(cluster=cluster, url=server.url, tmp=tmp_path, alto=alto)

    yield make
    for server in servers:
        server.stop()
