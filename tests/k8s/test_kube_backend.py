"""The back-end (`python -m backend --cluster kubernetes`) against a real API server.

The thesis testbed scenarios of 6.2.2 (Tables 6.4 and 6.5) with KWOK nodes a, b (small) and c
(large): demand is recorded through the real front-end's proxy (model servers run by the kubelet
stand-in), then the back-end runs as a separate process, as the CronJob would, and each test checks
its report and the Deployments and Services that exist in the API afterwards.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from k8s_support import CATALOG, FRONTEND_TOKEN, NODE_CLASS_LABEL, REPO_ROOT, wait_for

HP2, HP3, LOGREG, FOREST = "half_plus_two", "half_plus_three", "digits_logreg", "digits_forest"
AUTH = {"Authorization": f"Bearer {FRONTEND_TOKEN}"}
BODIES = {HP2: {"instances": [1.0, 2.0, 5.0]}, HP3: {"instances": [1.0]},
          LOGREG: {"instances": [[0.0] * 64]}, FOREST: {"instances": [[0.0] * 64]}}
NEAR, FAR = 0.002, 0.08          # seconds: a zone's own node, any other node
MANAGED = "app.kubernetes.io/managed-by=edge-inference"


@dataclass
class KubeSystem:
    kube: Any
    standin: Any
    frontend: Any
    cluster: Any
    nodes: dict[str, str]         # short name (a, b, c) -> full node name
    alto: Path
    runs: int = 0

    # -- what exists in the API ---------------------------------------------------------------
    def api_pairs(self) -> set[tuple[str, str]]:
        """(model, node) of every Deployment of ours not being deleted; checks its Service exists."""
        deployments = self.kube.apps.list_namespaced_deployment(self.kube.namespace, label_selector=MANAGED).items
        services = {s.metadata.name for s in
                    self.kube.core.list_namespaced_service(self.kube.namespace, label_selector=MANAGED).items}
        pairs = set()
        for dep in deployments:
            if dep.metadata.deletion_timestamp:
                continue
            assert dep.metadata.name in services, f"Deployment {dep.metadata.name} has no Service"
            pairs.add((dep.metadata.annotations["edge-inference/model"], dep.metadata.annotations["edge-inference/node"]))
        return pairs

    def pairs(self, *short: tuple[str, str]) -> set[tuple[str, str]]:
        """Translate (model, short node) pairs into (model, full node name)."""
        return {(model, self.nodes[node]) for model, node in short}

    def frontend_pairs(self) -> set[tuple[str, str]]:
        doc = requests.get(f"{self.frontend.url}/stats/models", headers=AUTH, timeout=10).json()
        return {(m["model"], i["node"]) for m in doc["models"] for i in m["instances"]}

    def settle(self) -> None:
        """Wait until the front-end shows what the API has."""
        wait_for(lambda: self.frontend_pairs() == self.api_pairs(), timeout=60, what="the front-end to see the API")

    def deploy(self, short_pairs: list[tuple[str, str]]) -> None:
        pairs = sorted(self.pairs(*short_pairs))
        with ThreadPoolExecutor(max_workers=max(1, len(pairs))) as pool:
            list(pool.map(lambda p: self.cluster.deploy(p[0], p[1]), pairs))
        self.settle()

    # -- demand --------------------------------------------------------------------------------
    def request(self, model: str, zone: str, *, latency: float | None = None) -> requests.Response:
        headers = {"X-Client-Zone": zone}
        if latency is not None:
            headers["X-Client-Latency"] = str(latency)
        return requests.post(f"{self.frontend.url}/services/{model}/v1/models/{model}:predict", json=BODIES[model],
                             headers=headers, timeout=30)

    def seed_demand(self, demand: dict[tuple[str, str], int], *, keep: tuple = ()) -> None:
        """Record `count` real proxied requests per (model, zone z-<short>), served by the zone's node."""
        served = sorted({(model, zone.split("-")[-1]) for model, zone in demand})
        self.deploy(served)
        for model, node in served:
            self.standin.wait_serving(model, self.nodes[node], timeout=60)
        for (model, zone), count in demand.items():
            for _ in range(count):
                answer = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(
                    self.request(model, zone, latency=NEAR)), timeout=30, what=f"{model} answering")
                assert answer.json()["predictions"]
        removed = sorted(self.pairs(*[p for p in served if p not in set(keep)]))
        for model, node in removed:
            self.cluster.remove(model, node)
        wait_for(lambda: not any(p in self.api_pairs() for p in removed), timeout=60, what="demand models removed")
        self.settle()

    # -- the back-end, as its own process --------------------------------------------------------
    def backend(self, mode: int, *extra: str) -> tuple[int, dict, str]:
        """Run `python -m backend`; return (exit code, report, stderr)."""
        self.runs += 1
        tmp = self.kube.tmp_path
        report = tmp / f"report-{self.runs}.json"
        argv = [sys.executable, "-m", "backend", "--mode", str(mode), "--frontend", self.frontend.url,
                "--cluster", "kubernetes", "--catalog", str(CATALOG),
                "--cluster-setting", f"kubeconfig={self.kube.kubeconfig}",
                "--cluster-setting", f"namespace={self.kube.namespace}",
                "--cluster-setting", f"node_class_label={NODE_CLASS_LABEL}",
                "--lock", str(tmp / "backend.lock"), "--alto", str(self.alto), "--report", str(report),
                "--solver", "highs", *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "KUBECONFIG"))}
        env["BACKEND_TOKEN"] = FRONTEND_TOKEN
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
        doc = json.loads(report.read_text()) if report.is_file() else {}
        return proc.returncode, doc, proc.stdout + proc.stderr


def actions(report: dict, kind: str) -> set[tuple[str, str]]:
    return {(a["model"], a["node"]) for a in report["actions"]
            if a["kind"] == kind and a["ok"] and not a.get("skipped")}


def check_ok(code: int, report: dict, output: str) -> None:
    assert code == 0, output
    assert report["errors"] == [] and report["solver"]["status"] in ("optimal", "feasible")


@pytest.fixture
def make_system(kube, standin_factory, frontend_factory) -> Iterator[Callable[..., KubeSystem]]:
    """Yield make(memory=None) -> KubeSystem with KWOK nodes a, b (small) and c (large)."""

    def make(memory: dict[str, int] | None = None) -> KubeSystem:
        memory = {"a": 250_000, "b": 250_000, "c": 800_000, **(memory or {})}
        nodes = {
            "a": kube.add_node("node-a", memory_kb=memory["a"], cpu=2.0, node_class="small", wait_ready=False),
            "b": kube.add_node("node-b", memory_kb=memory["b"], cpu=2.0, node_class="small", wait_ready=False),
            "c": kube.add_node("node-c", memory_kb=memory["c"], cpu=4.0, node_class="large", wait_ready=False),
        }
        for name in nodes.values():
            kube.wait_node_ready(name, True)
        zones = {f"z-{short}": name for short, name in nodes.items()}
        alto = kube.tmp_path / "alto.json"
        alto.write_text(json.dumps({
            "meta": {"cost-type": {"cost-mode": "numerical", "cost-metric": "delay"}},
            "cost-map": {zone: {n: (NEAR if n == near else FAR) for n in nodes.values()}
                         for zone, near in zones.items()}}))
        standin = standin_factory()
        frontend = frontend_factory()
        return KubeSystem(kube=kube, standin=standin, frontend=frontend, cluster=kube.cluster(), nodes=nodes,
                          alto=alto)

    yield make


# -- Table 6.4: Mode 1 ---------------------------------------------------------------------------

def test_nothing_to_do(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 6}, keep=[(HP2, "a")])
    for mode in (1, 2):
        code, report, output = system.backend(mode)
        check_ok(code, report, output)
        assert report["actions"] == []
        assert report["plan"]["desired"] == [[HP2, system.nodes["a"]]]
    assert system.api_pairs() == system.pairs((HP2, "a"))


def test_mode1_provision_one_model(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5})
    assert system.api_pairs() == set()
    code, report, output = system.backend(1, "--wait-ready")
    check_ok(code, report, output)
    assert actions(report, "provision") == system.pairs((HP2, "a")) and actions(report, "delete") == set()
    assert system.api_pairs() == system.pairs((HP2, "a"))
    pod = system.kube.core.list_namespaced_pod(system.kube.namespace, label_selector=MANAGED).items
    assert [(p.spec.node_name, p.status.phase) for p in pod] == [(system.nodes["a"], "Running")]
    assert report["plan_pushed"]
    # and the model answers through the proxy again, from the node the back-end chose
    system.standin.wait_serving(HP2, system.nodes["a"], timeout=60)
    answer = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(system.request(HP2, "z-a")),
                      timeout=30, what="HP2 answering")
    assert answer.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_mode1_provision_four_models(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 4, (HP3, "z-a"): 3, (LOGREG, "z-b"): 3, (FOREST, "z-c"): 3})
    code, report, output = system.backend(1, "--wait-ready")
    check_ok(code, report, output)
    expected = system.pairs((HP2, "a"), (HP3, "a"), (LOGREG, "b"), (FOREST, "c"))
    assert actions(report, "provision") == expected
    assert system.api_pairs() == expected


def test_mode1_deletes_only_idle_and_rarely_used(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5}, keep=[(HP2, "a")])
    system.deploy([(HP3, "b")])
    code, report, output = system.backend(1, "--idle-seconds", "3600", "--min-requests", "1")
    check_ok(code, report, output)
    assert report["actions"] == [] and system.api_pairs() == system.pairs((HP2, "a"), (HP3, "b"))
    code, report, output = system.backend(1, "--idle-seconds", "0", "--min-requests", "1")
    check_ok(code, report, output)
    assert actions(report, "delete") == system.pairs((HP3, "b"))
    wait_for(lambda: system.api_pairs() == system.pairs((HP2, "a")), timeout=30, what="HP3 gone")


# -- Table 6.5: Mode 2 ---------------------------------------------------------------------------

def test_mode2_delete_three_models(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5}, keep=[(HP2, "a")])
    system.deploy([(HP3, "b"), (LOGREG, "b"), (FOREST, "c")])
    code, report, output = system.backend(2, "--wait-ready")
    check_ok(code, report, output)
    assert actions(report, "provision") == set()
    assert actions(report, "delete") == system.pairs((HP3, "b"), (LOGREG, "b"), (FOREST, "c"))
    assert system.api_pairs() == system.pairs((HP2, "a"))


def test_mode2_provision_one_and_delete_two(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5})
    system.deploy([(HP3, "b"), (LOGREG, "c")])
    code, report, output = system.backend(2, "--wait-ready")
    check_ok(code, report, output)
    assert actions(report, "provision") == system.pairs((HP2, "a"))
    assert actions(report, "delete") == system.pairs((HP3, "b"), (LOGREG, "c"))
    assert system.api_pairs() == system.pairs((HP2, "a"))


def test_mode2_provision_two_and_delete_three(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 4, (HP3, "z-b"): 4})
    system.deploy([(LOGREG, "a"), (FOREST, "c"), (HP2, "c")])
    code, report, output = system.backend(2, "--wait-ready")
    check_ok(code, report, output)
    assert actions(report, "provision") == system.pairs((HP2, "a"), (HP3, "b"))
    assert actions(report, "delete") == system.pairs((LOGREG, "a"), (FOREST, "c"), (HP2, "c"))
    assert system.api_pairs() == system.pairs((HP2, "a"), (HP3, "b"))


def test_mode2_provision_three_and_delete_two(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 4, (HP3, "z-b"): 4, (FOREST, "z-c"): 4})
    system.deploy([(LOGREG, "a"), (LOGREG, "c")])
    code, report, output = system.backend(2, "--wait-ready")
    check_ok(code, report, output)
    assert actions(report, "provision") == system.pairs((HP2, "a"), (HP3, "b"), (FOREST, "c"))
    assert actions(report, "delete") == system.pairs((LOGREG, "a"), (LOGREG, "c"))
    assert system.api_pairs() == system.pairs((HP2, "a"), (HP3, "b"), (FOREST, "c"))


def test_mode2_frees_memory_on_a_full_node_before_provisioning(make_system):
    system = make_system(memory={"a": 130_000, "b": 130_000})
    system.seed_demand({(LOGREG, "z-a"): 5})
    system.deploy([(HP2, "a")])       # 60000 of 130000 KB: LOGREG (80000) fits only once HP2 is gone
    code, report, output = system.backend(2, "--wait-ready")
    check_ok(code, report, output)
    by_kind = {a["kind"]: a for a in report["actions"]}
    assert (by_kind["delete"]["model"], by_kind["delete"]["node"]) == (HP2, system.nodes["a"])
    assert (by_kind["provision"]["model"], by_kind["provision"]["node"]) == (LOGREG, system.nodes["a"])
    assert system.api_pairs() == system.pairs((LOGREG, "a"))


# -- safety ----------------------------------------------------------------------------------------

def test_dry_run_changes_nothing(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5})
    system.deploy([(HP3, "b")])
    before = {(d.metadata.name, d.metadata.uid) for d in
              system.kube.apps.list_namespaced_deployment(system.kube.namespace).items}
    services_before = {(s.metadata.name, s.metadata.uid) for s in
                       system.kube.core.list_namespaced_service(system.kube.namespace).items}
    code, report, output = system.backend(2, "--dry-run")
    assert code == 0, output
    planned = {(a["kind"], a["model"], a["node"]) for a in report["actions"]}
    assert ("provision", HP2, system.nodes["a"]) in planned and ("delete", HP3, system.nodes["b"]) in planned
    assert "kind: Deployment" in output and "kind: Service" in output      # the rendered YAML
    assert {(d.metadata.name, d.metadata.uid) for d in
            system.kube.apps.list_namespaced_deployment(system.kube.namespace).items} == before
    assert {(s.metadata.name, s.metadata.uid) for s in
            system.kube.core.list_namespaced_service(system.kube.namespace).items} == services_before
    assert requests.get(f"{system.frontend.url}/plan", headers=AUTH, timeout=10).status_code == 404  # not pushed


def test_a_second_run_waits_for_the_lock_and_changes_nothing(make_system):
    from backend.lock import RunLock

    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5})
    lock = RunLock(system.kube.tmp_path / "backend.lock")
    assert lock.acquire()                                # another run is in progress
    try:
        code, report, output = system.backend(2, "--wait-ready")
        assert code == 0, output                         # cron must not see a failure
        assert "lock" in output.lower()
        assert system.api_pairs() == set()               # nothing was provisioned
    finally:
        lock.release()
    code, report, output = system.backend(2, "--wait-ready")   # once free, the run goes ahead
    check_ok(code, report, output)
    assert system.api_pairs() == system.pairs((HP2, "a"))
