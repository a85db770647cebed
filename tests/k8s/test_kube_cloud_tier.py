"""The cloud tier on Kubernetes: a KWOK node labelled `topology=cloud` beside edge nodes.

On the real control plane: the adapter reads the tier and the costs from the node's labels (and a
relabel through the watch); the back-end (`python -m backend --cluster kubernetes --formulation
latency`, its own process) places an instance on the cloud node when the edge cannot take the load
or when round trip plus service time make the cloud cheaper, and does not once a cost label makes it
dearer, each checked in the report, the plan and the Deployments in the API; the front-end
(gunicorn) lists the cloud endpoint with `tier: cloud` and falls back to it when the edge node is
overloaded or NotReady, with no request failing meanwhile.

The numbers: a catalog copy makes half_plus_two take 0.5 s on the edge class (small) and 0.05 s on
the cloud's (large); the ALTO map puts the cloud 0.3 s from zone z-a, edge a 2 ms and edge b 80 ms.
The expected placements are the `highs` optimum of those problems (exact; they are small), planned
with that profile (`--pace profile`: a measured pace would replace the scenario's 0.5 s).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from k8s_support import CATALOG, FRONTEND_TOKEN, NODE_CLASS_LABEL, REPO_ROOT, wait_for

from cluster.port import node_costs, node_tier

HP2, HP3, FOREST = "half_plus_two", "half_plus_three", "digits_forest"
AUTH = {"Authorization": f"Bearer {FRONTEND_TOKEN}"}
BODY = {"instances": [1.0, 2.0, 5.0]}
MANAGED = "app.kubernetes.io/managed-by=edge-inference"
EDGE_S, CLOUD_S = 0.5, 0.05                       # seconds per request of half_plus_two
CLOUD = {"topology": "cloud"}


@pytest.fixture
def catalog(kube) -> Path:
    """The fixture catalog with half_plus_two slow on the edge class and fast on the cloud's."""
    doc = yaml.safe_load(CATALOG.read_text())
    for model in doc["models"]:
        if model["name"] == HP2:
            model["exec_time"] = {"small": EDGE_S, "large": CLOUD_S}
    path = kube.tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Site:
    """Edge nodes a, b and cloud node c of one test, with its front-end, stand-in and ALTO map."""

    def __init__(self, kube, catalog: Path, standin_factory, frontend_factory, *, edge_cpu: float = 2.0,
                 cloud_labels: dict[str, str] | None = None, **frontend_settings) -> None:
        self.kube, self.catalog = kube, catalog
        self.a = kube.add_node("a", memory_kb=250_000, cpu=edge_cpu, node_class="small", wait_ready=False)
        self.b = kube.add_node("b", memory_kb=250_000, cpu=2.0, node_class="small", wait_ready=False)
        self.c = kube.add_node("c", memory_kb=4_000_000, cpu=32.0, node_class="large",
                               labels={**CLOUD, **(cloud_labels or {})}, wait_ready=False)
        for name in (self.a, self.b, self.c):
            kube.wait_node_ready(name, True)
        self.alto = kube.tmp_path / "alto.json"
        self.alto.write_text(json.dumps({"meta": {"cost-type": {"cost-mode": "numerical", "cost-metric": "delay"}},
                                         "cost-map": {"z-a": {self.a: 0.002, self.b: 0.08, self.c: 0.3}}}))
        self.cluster = kube.cluster(catalog_path=catalog)
        self.standin = standin_factory(catalog_path=catalog)
        self.frontend = frontend_factory(cluster_settings={
            "kubeconfig": str(kube.kubeconfig), "namespace": kube.namespace, "catalog_path": str(catalog),
            "node_class_label": NODE_CLASS_LABEL}, **frontend_settings)
        self.url = self.frontend.url
        self.runs = 0

    # -- the API and the front-end ----------------------------------------------------------------
    def api_pairs(self) -> set[tuple[str, str]]:
        """(model, node) of our Deployments not being deleted."""
        return {(d.metadata.annotations["edge-inference/model"], d.metadata.annotations["edge-inference/node"])
                for d in self.kube.apps.list_namespaced_deployment(self.kube.namespace, label_selector=MANAGED).items
                if not d.metadata.deletion_timestamp}

    def choice(self, http=requests) -> tuple[str, str]:
        """(node, tier) GET /services/half_plus_two answers zone z-a (recorded as a lookup: demand)."""
        answer = http.get(f"{self.url}/services/{HP2}", headers={"X-Client-Zone": "z-a"}, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()["node"], answer.json()["tier"]

    def listed(self, http=requests) -> list[tuple[str, str, str]]:
        """(node, tier, endpoint) of half_plus_two in GET /services for zone z-a (not recorded)."""
        answer = http.get(f"{self.url}/services", headers={"X-Client-Zone": "z-a"}, timeout=10)
        assert answer.status_code == 200, answer.text
        return [(s["node"], s["tier"], s["endpoint"]) for s in answer.json()["services"] if s["model"] == HP2]

    def steadily(self, check, what: str) -> None:
        """Wait until `check(http)` holds in every gunicorn worker."""
        wait_for(lambda: self.frontend.every_worker(check), timeout=30, what=what)

    def predict(self) -> requests.Response:
        return requests.post(f"{self.url}/services/{HP2}/v1/models/{HP2}:predict", json=BODY,
                             headers={"X-Client-Zone": "z-a"}, timeout=30)

    def seed(self, count: int) -> None:
        """Record `count` real proxied requests from zone z-a (half_plus_two on edge a serves them)."""
        self.cluster.deploy(HP2, self.a)
        self.standin.wait_serving(HP2, self.a, timeout=60)
        self.steadily(lambda http: [row[:2] for row in self.listed(http)] == [(self.a, "edge")], "half_plus_two on a")
        with ThreadPoolExecutor(max_workers=4) as pool:
            codes = list(pool.map(lambda _: self.predict().status_code, range(count)))
        assert codes == [200] * count

    def relabel(self, node: str, labels: dict[str, str | None]) -> None:
        """Change a node's labels (None removes one), as `kubectl label --overwrite` does."""
        self.kube.core.patch_node(node, {"metadata": {"labels": labels}})

    # -- the back-end, as its own process -----------------------------------------------------------
    def backend(self, *extra: str) -> tuple[int, dict, str]:
        """Run `python -m backend --mode 2 --formulation latency --solver highs`; return (code, report, output)."""
        self.runs += 1
        report = self.kube.tmp_path / f"report-{self.runs}.json"
        argv = [sys.executable, "-m", "backend", "--mode", "2", "--frontend", self.url, "--cluster", "kubernetes",
                "--catalog", str(self.catalog), "--cluster-setting", f"kubeconfig={self.kube.kubeconfig}",
                "--cluster-setting", f"namespace={self.kube.namespace}",
                "--cluster-setting", f"node_class_label={NODE_CLASS_LABEL}",
                "--lock", str(self.kube.tmp_path / "backend.lock"), "--alto", str(self.alto),
                "--report", str(report), "--formulation", "latency", "--solver", "highs", "--pace", "profile",
                "--wait-ready", *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "KUBECONFIG"))}
        env["BACKEND_TOKEN"] = FRONTEND_TOKEN
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
        doc = json.loads(report.read_text()) if report.is_file() else {}
        return proc.returncode, doc, proc.stdout + proc.stderr

    def weights(self) -> dict[str, float]:
        answer = requests.get(f"{self.url}/plan", headers=AUTH, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()["weights"][HP2]["z-a"]


def check_ok(code: int, report: dict, output: str) -> None:
    assert code == 0, output
    assert report["errors"] == [], report["errors"]
    assert report["solver"]["formulation"] == "latency" and report["solver"]["status"] == "optimal", report["solver"]


def test_the_adapter_reads_tier_and_costs_from_node_labels(kube, caplog):
    edge = kube.add_node("a", node_class="small")
    marked_edge = kube.add_node("b", node_class="small", labels={"topology": "edge"})
    cloud = kube.add_node("c", memory_kb=4_000_000, cpu=32.0, node_class="large",
                          labels={**CLOUD, "cost-per-request": "0.001", "cost-per-instance-hour": "36"})
    cluster = kube.cluster()
    nodes = {n.name: n for n in cluster.nodes()}
    assert {name: node_tier(nodes[name]) for name in (edge, marked_edge, cloud)} == {
        edge: "edge", marked_edge: "edge", cloud: "cloud"}
    assert node_costs(nodes[cloud]) == (0.001, 36.0) and node_costs(nodes[edge]) == (0.0, 0.0)
    assert nodes[cloud].labels["node-class"] == "large" and nodes[cloud].cpu_capacity == 32.0

    # an instance on the cloud node is an ordinary one: pinned there, endpoint its InternalIP:nodePort
    dep = cluster.deploy(HP2, cloud)
    assert dep.ready and dep.endpoint.startswith(f"{kube.nodes[cloud]}:")
    pods = kube.core.list_namespaced_pod(kube.namespace, label_selector=MANAGED).items
    assert [(p.spec.node_name, p.status.phase) for p in pods] == [(cloud, "Running")]

    # a node pool relabelled on the fly: the watch brings the new tier and costs, no restart
    kube.core.patch_node(marked_edge, {"metadata": {"labels": {"topology": "cloud", "cost-per-request": "2.5"}}})
    wait_for(lambda: (lambda n: (node_tier(n), node_costs(n)))(
        {n.name: n for n in cluster.nodes()}[marked_edge]) == ("cloud", (2.5, 0.0)),
        timeout=30, what="node b relabelled cloud")

    # a label the port cannot read is logged once, naming the node, and counts as edge / 0
    with caplog.at_level(logging.WARNING, logger="cluster.kubernetes"):
        kube.core.patch_node(cloud, {"metadata": {"labels": {"cost-per-request": "cheap"}}})
        kube.core.patch_node(edge, {"metadata": {"labels": {"topology": "Cloud"}}})
        wait_for(lambda: (lambda ns: node_costs(ns[cloud])[0] == 0.0 and ns[edge].labels.get("topology") == "Cloud")(
            {n.name: n for n in cluster.nodes()}), timeout=30, what="the bad labels seen")
        for _ in range(5):
            cluster.nodes()
    warned = [r.getMessage() for r in caplog.records if r.name == "cluster.kubernetes"]
    assert warned.count(f"node {cloud}: label cost-per-request='cheap' is not a finite number >= 0; "
                        "counted as 0") == 1, warned
    assert warned.count(f"node {edge}: label topology='Cloud' is neither 'edge' nor 'cloud'; "
                        "the node counts as edge") == 1, warned
    nodes = {n.name: n for n in cluster.nodes()}
    assert node_tier(nodes[edge]) == "edge" and node_costs(nodes[cloud]) == (0.0, 36.0)


def test_backend_uses_the_cloud_when_it_is_cheaper_and_not_once_a_cost_makes_it_dearer(
        kube, catalog, standin_factory, frontend_factory):
    site = Site(kube, catalog, standin_factory, frontend_factory)
    site.seed(80)        # 80 requests in 120 s (0.67/s): 0.3 + 0.05 s in the cloud beats 0.5 s + waiting at the edge
    code, report, output = site.backend("--window", "120")
    check_ok(code, report, output)
    assert report["inputs"]["tiers"] == {site.c: "cloud"} and report["inputs"]["requests"] == 80
    assert report["plan"]["desired"] == [[HP2, site.c]]
    assert site.api_pairs() == {(HP2, site.c)}                   # the edge instance deleted, the cloud's made
    pods = kube.core.list_namespaced_pod(kube.namespace, label_selector=MANAGED).items
    assert {(p.spec.node_name, p.status.phase) for p in pods if not p.metadata.deletion_timestamp} == {
        (site.c, "Running")}
    assert site.weights() == {site.c: 1.0}
    site.steadily(lambda http: [row[:2] for row in site.listed(http)][:1] == [(site.c, "cloud")], "the cloud in /services")
    site.standin.wait_serving(HP2, site.c, timeout=60)     # (KWOK marks pods Ready before the stand-in serves)
    answer = site.predict()
    assert answer.status_code == 200 and answer.headers["X-Served-By"] == site.c

    # the same demand once the cloud charges 5 s per request (a label, read live): the edge is cheaper
    site.relabel(site.c, {"cost-per-request": "5"})
    wait_for(lambda: {n["node"]: n["cost_per_request"] for n in requests.get(
        f"{site.url}/stats/memory", headers=AUTH, timeout=10).json()["nodes"]}[site.c] == 5.0,
        timeout=30, what="the cost label in /stats/memory")
    code, report, output = site.backend("--window", "120")
    check_ok(code, report, output)
    assert report["inputs"]["requests"] == 80 + 1
    assert report["plan"]["desired"] == [[HP2, site.a], [HP2, site.b]]
    assert site.api_pairs() == {(HP2, site.a), (HP2, site.b)}    # the cloud instance deleted
    got = site.weights()
    assert set(got) == {site.a, site.b} and got[site.a] > got[site.b] > 0


def test_backend_sends_the_cloud_what_the_edge_cannot_take_even_when_priced(
        kube, catalog, standin_factory, frontend_factory):
    # 100 s per request in the cloud: used only for what two edge instances at the 0.85 ceiling cannot serve
    site = Site(kube, catalog, standin_factory, frontend_factory, cloud_labels={"cost-per-request": "100"})
    # 260 requests in a 60 s window (rates over the 60-70 s its 10 s buckets span): each edge instance
    # serves at most 0.85 x seconds / 0.5 (102 to 118)
    site.seed(260)
    code, report, output = site.backend("--window", "60")
    check_ok(code, report, output)
    total = report["inputs"]["requests"]
    assert total == 260 and report["inputs"]["tiers"] == {site.c: "cloud"}
    assert sorted(map(tuple, report["plan"]["desired"])) == [(HP2, site.a), (HP2, site.b), (HP2, site.c)]
    assert site.api_pairs() == {(HP2, site.a), (HP2, site.b), (HP2, site.c)}
    cap = int(0.85 * report["inputs"]["rates_over_seconds"] / EDGE_S + 1e-9)
    assert 2 * cap < total
    assert site.weights() == pytest.approx(                      # the plan rounds weights to 6 places
        {site.a: cap / total, site.b: cap / total, site.c: (total - 2 * cap) / total}, abs=2e-6)


def test_frontend_lists_the_cloud_tier_and_falls_back_to_it(kube, catalog, standin_factory, frontend_factory):
    # edge a has 0.3 cores: our pods' cpu requests reaching 0.9 of them (no metrics-server) make it overloaded
    site = Site(kube, catalog, standin_factory, frontend_factory, edge_cpu=0.3, policy="lowest-cpu")
    for node in (site.a, site.c):
        site.cluster.deploy(HP2, node)
        site.standin.wait_serving(HP2, node, timeout=60)
    # the edge instance first, although the cloud node's CPU fraction (0.05/32) is far below a's (0.05/0.3)
    site.steadily(lambda http: site.choice(http) == (site.a, "edge"), "the edge instance chosen")
    assert [row[:2] for row in site.listed()] == [(site.a, "edge")]
    memory = {n["node"]: n for n in requests.get(f"{site.url}/stats/memory", headers=AUTH, timeout=10).json()["nodes"]}
    assert {name: memory[name]["tier"] for name in (site.a, site.b, site.c)} == {
        site.a: "edge", site.b: "edge", site.c: "cloud"}

    failures: list[str] = []
    served: list[str] = []
    stop = threading.Event()

    def client() -> None:            # predictions all along: none may fail while the cloud can serve
        while not stop.is_set():
            answer = site.predict()
            if answer.status_code != 200:
                failures.append(f"{answer.status_code} {answer.text[:200]}")
            else:
                served.append(answer.headers["X-Served-By"])

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        # overloaded: 0.05 + 0.2 + 0.05 cores requested of a's 0.3 -> the cloud instance
        site.cluster.deploy(FOREST, site.a)
        site.cluster.deploy(HP3, site.a)
        site.steadily(lambda http: site.choice(http) == (site.c, "cloud"), "the cloud chosen once a is overloaded")
        endpoint = site.cluster.deployments()
        cloud_endpoint = next(d.endpoint for d in endpoint if (d.model, d.node) == (HP2, site.c))
        assert site.listed() == [(site.c, "cloud", cloud_endpoint)]
        assert cloud_endpoint.startswith(f"{kube.nodes[site.c]}:")
        mark = len(served)
        wait_for(lambda: len(served) >= mark + 10, timeout=30, what="predictions while a is overloaded")
        assert set(served[mark + 2:]) == {site.c}

        site.cluster.remove(FOREST, site.a)          # below the line again: back to the edge
        site.steadily(lambda http: site.choice(http) == (site.a, "edge"), "the edge chosen again")

        kube.set_node_ready(site.a, False)           # NotReady: the cloud instance
        site.steadily(lambda http: site.choice(http) == (site.c, "cloud"), "the cloud chosen once a is NotReady")
        mark = len(served)
        wait_for(lambda: len(served) >= mark + 10, timeout=30, what="predictions while a is NotReady")
        assert set(served[mark + 2:]) == {site.c}

        kube.set_node_ready(site.a, True)
        site.steadily(lambda http: site.choice(http) == (site.a, "edge"), "the edge chosen once a is Ready")
        mark = len(served)
        wait_for(lambda: len(served) >= mark + 10, timeout=30, what="predictions from the edge again")
        assert set(served[mark + 2:]) == {site.a}
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures == [] and len(served) >= 30
