"""The front-end (gunicorn, two workers) on the Kubernetes adapter against a real API server."""
from __future__ import annotations

import requests

from k8s_support import FRONTEND_TOKEN
from k8s_support import wait_for  # noqa: E402

MODEL = "half_plus_two"
AUTH = {"Authorization": f"Bearer {FRONTEND_TOKEN}"}


def _services(url: str, http=requests) -> list[dict]:
    answer = http.get(f"{url}/services", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["services"]


def _choice(url: str, model: str, http=requests) -> dict:
    answer = http.get(f"{url}/services/{model}", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_new_deployment_appears_in_services_without_restart(kube, frontend_factory):
    node_a, node_b = kube.add_node("a"), kube.add_node("b")
    frontend = frontend_factory()
    assert _services(frontend.url) == []

    cluster = kube.cluster()
    dep = cluster.deploy(MODEL, node_a)
    wait_for(lambda: frontend.every_worker(lambda http: [s["endpoint"] for s in _services(frontend.url, http)]
                                   == [dep.endpoint]), timeout=30, what="the new deployment in /services")
    listed = _services(frontend.url)[0]
    assert listed["model"] == MODEL and listed["node"] == node_a
    assert listed["endpoint"] == f"{kube.nodes[node_a]}:{dep.endpoint.split(':')[1]}"
    assert listed["url"] == f"http://{dep.endpoint}/v1/models/{MODEL}"

    second = cluster.deploy("digits_logreg", node_b)
    wait_for(lambda: frontend.every_worker(lambda http: {(s["model"], s["node"]) for s in _services(frontend.url, http)}
                                   == {(MODEL, node_a), ("digits_logreg", node_b)}),
             timeout=30, what="the second deployment in /services")
    assert _choice(frontend.url, "digits_logreg")["endpoint"] == second.endpoint

    cluster.remove("digits_logreg", node_b)          # and a removed one disappears
    wait_for(lambda: frontend.every_worker(lambda http: {s["model"] for s in _services(frontend.url, http)} == {MODEL}),
             timeout=30, what="the removed deployment gone from /services")


def test_memory_stats_come_from_the_api(kube, frontend_factory):
    node_a = kube.add_node("a", memory_kb=400_000, cpu=2.0, node_class="large")
    cluster = kube.cluster()
    cluster.deploy(MODEL, node_a)
    frontend = frontend_factory()

    def row() -> dict | None:
        answer = requests.get(f"{frontend.url}/stats/memory", headers=AUTH, timeout=10)
        assert answer.status_code == 200, answer.text
        rows = {r["node"]: r for r in answer.json()["nodes"]}
        got = rows.get(node_a)
        return got if got and got["used"] >= 60000 else None

    got = wait_for(row, timeout=30, what="memory row of node a")
    assert got["total"] == 400_000 and got["used"] == 60000 and got["available"] == 340_000
    assert got["ready"] is True and got["class"] == "large" and got["cpu_capacity"] == 2.0


def test_lowest_cpu_choice_follows_the_cluster_cpu(kube, frontend_factory):
    # No metrics.k8s.io in this module: node CPU is estimated from our pods' requests over
    # allocatable (test_kube_metrics.py has lowest-cpu follow a real metrics-server).
    node_a, node_b = kube.add_node("a", cpu=2.0), kube.add_node("b", cpu=2.0)
    cluster = kube.cluster()
    cluster.deploy(MODEL, node_a)
    cluster.deploy(MODEL, node_b)
    cluster.deploy("digits_forest", node_a)          # node a is the busier one
    frontend = frontend_factory(policy="lowest-cpu")
    wait_for(lambda: frontend.every_worker(lambda http: _choice(frontend.url, MODEL, http)["node"] == node_b),
             timeout=30, what="lowest-cpu picks node b")
    usage = {n.name: n.cpu_usage for n in cluster.nodes()}
    assert usage[node_a] > usage[node_b] > 0

    cluster.deploy("digits_forest", node_b)           # now node b carries more
    cluster.deploy("digits_logreg", node_b)
    wait_for(lambda: frontend.every_worker(lambda http: _choice(frontend.url, MODEL, http)["node"] == node_a),
             timeout=30, what="lowest-cpu switches to node a")


def test_not_ready_node_is_never_returned(kube, frontend_factory):
    node_a, node_b = kube.add_node("a"), kube.add_node("b")
    cluster = kube.cluster()
    cluster.deploy(MODEL, node_a)
    cluster.deploy(MODEL, node_b)
    cluster.deploy("digits_forest", node_b)           # lowest-cpu alone would prefer node a
    frontend = frontend_factory(policy="lowest-cpu")
    wait_for(lambda: frontend.every_worker(lambda http: _choice(frontend.url, MODEL, http)["node"] == node_a),
             timeout=30, what="node a chosen while ready")

    def only_b(http) -> bool:
        return (_choice(frontend.url, MODEL, http)["node"] == node_b
                and node_a not in {s["node"] for s in _services(frontend.url, http)})

    kube.set_node_ready(node_a, False)
    wait_for(lambda: frontend.every_worker(only_b), timeout=30, what="node b chosen once node a is NotReady")
    for _ in range(10):                               # and never node a again, in any worker
        assert frontend.every_worker(only_b)
    memory = requests.get(f"{frontend.url}/stats/memory", headers=AUTH, timeout=10).json()["nodes"]
    assert {r["node"]: r["ready"] for r in memory}[node_a] is False

    kube.set_node_ready(node_a, True)
    wait_for(lambda: frontend.every_worker(lambda http: _choice(frontend.url, MODEL, http)["node"] == node_a),
             timeout=30, what="node a chosen again once Ready")
