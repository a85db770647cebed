"""Node CPU from the real metrics.k8s.io: metrics-server behind kube-apiserver's aggregator.

metrics-server (built by k8s_tools.py, started by the module-scoped `metrics_server` fixture)
scrapes each node's kubelet /metrics/resource, which the stand-in serves at the node's address with
the real CPU time of the model servers it runs there (kubelet_metrics.py). Loading one node's model
server with predictions makes that node busy for real; the adapter, reading metrics.k8s.io through
the API server, and the front-end's lowest-cpu choice must follow it. metrics-server keeps a
10-second resolution (its minimum), so each change takes one or two scrapes to show.
"""
from __future__ import annotations

import threading

import pytest
import requests

from cluster.k8s_state import parse_cpu
from k8s_support import FRONTEND_TOKEN, wait_for

MODEL = "half_plus_two"
BUSY = 0.2             # cores: a node whose model server is loaded uses at least this much
IDLE = 0.1             # cores: an idle node (idle model servers) uses less than this
REQUESTED = 0.05       # cores: half_plus_two's cpu request, what the estimate charges per instance
LOAD_BODY = {"instances": [float(i) for i in range(2000)]}


class Load:
    """Threads posting predictions to one model server until the block ends: real work on its node."""

    def __init__(self, endpoint: str, *, threads: int = 3) -> None:
        self.url = f"http://{endpoint}/v1/models/{MODEL}:predict"
        self.stop = threading.Event()
        self.answers = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                answer = session.post(self.url, json=LOAD_BODY, timeout=10)
                assert answer.status_code == 200, answer.text
                self.answers += 1

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)


def _api_cpu(metrics_server, *nodes: str) -> dict[str, float] | None:
    """Cores per node as metrics.k8s.io reports them through kube-apiserver; None until all are there."""
    reported = metrics_server.node_metrics()
    return {n: parse_cpu(reported[n]) for n in nodes} if all(n in reported for n in nodes) else None


def _adapter_cpu(cluster, *nodes: str) -> dict[str, float]:
    usage = {n.name: n.cpu_usage for n in cluster.nodes()}
    return {n: usage[n] for n in nodes}


def _one_busy(usage: dict[str, float] | None, busy: str, idle: str) -> dict[str, float] | None:
    """`usage` when node `busy` uses at least BUSY cores and node `idle` less than IDLE, else None."""
    return usage if usage and usage[busy] >= BUSY and usage[idle] < IDLE else None


def _all_idle(usage: dict[str, float] | None) -> bool:
    return bool(usage) and all(value < IDLE for value in usage.values())


def _pods_reported(metrics_server, namespace: str, *pods: str) -> dict[str, float] | None:
    """Cores per pod from metrics.k8s.io's pods in `namespace`; None until every one of `pods` is there."""
    reported = metrics_server.pod_metrics(namespace)
    return reported if all(pod in reported for pod in pods) else None


def _adapter_reads_api(cluster, metrics_server, *nodes: str) -> dict[str, float] | None:
    """The adapter's node CPU when it equals what metrics.k8s.io reports (both may move: retried)."""
    api = _api_cpu(metrics_server, *nodes)
    return api if api is not None and cluster.metrics_served and _adapter_cpu(cluster, *nodes) == api else None


@pytest.fixture
def two_nodes(kube, standin_factory):
    """Nodes a and b (2 cores each), the stand-in with kubelet metrics, half_plus_two on both, serving."""
    node_a, node_b = kube.add_node("a", cpu=2.0), kube.add_node("b", cpu=2.0)
    standin = standin_factory(kubelet_metrics=True)
    cluster = kube.cluster(metrics_seconds=0.5)
    cluster.deploy(MODEL, node_a)
    cluster.deploy(MODEL, node_b)
    endpoints = {node: standin.wait_serving(MODEL, node) for node in (node_a, node_b)}
    return node_a, node_b, cluster, standin, endpoints


def test_adapter_cpu_is_metrics_server_usage_and_follows_real_load(two_nodes, kube, metrics_server):
    node_a, node_b, cluster, standin, endpoints = two_nodes
    pod_on = {p.spec.node_name: p.metadata.name for p in kube.core.list_namespaced_pod(kube.namespace).items}
    # Idle: what metrics.k8s.io reports (0 cores here), not the estimate (0.05 each).
    wait_for(lambda: _all_idle(_adapter_reads_api(cluster, metrics_server, node_a, node_b)), timeout=60,
             what="both nodes' CPU from metrics.k8s.io in the adapter")
    assert all(standin.kubelets[n].scrapes >= 2 for n in (node_a, node_b))     # metrics-server scraped them

    with Load(endpoints[node_a]) as load:
        wait_for(lambda: _one_busy(_adapter_reads_api(cluster, metrics_server, node_a, node_b), node_a, node_b),
                 timeout=60, what=f"node a busy (>= {BUSY} cores) in metrics.k8s.io and the adapter")
        assert load.answers > 0
        # The pods' metrics too (what `kubectl top pod` shows): the loaded pod's container is busy.
        by_pod = wait_for(lambda: _pods_reported(metrics_server, kube.namespace, pod_on[node_a], pod_on[node_b]),
                          timeout=30, what="pod metrics of both pods")
        assert by_pod[pod_on[node_a]] >= BUSY and by_pod[pod_on[node_b]] < IDLE, by_pod
    assert standin.node_usage(node_a)[0] > standin.node_usage(node_b)[0]

    # The load stops: the next windows show node a idle again.
    wait_for(lambda: _all_idle(_adapter_reads_api(cluster, metrics_server, node_a, node_b)), timeout=60,
             what="node a idle again")


def test_estimate_when_metrics_k8s_io_is_unavailable_or_removed(kube, standin_factory, metrics_server):
    node_a = kube.add_node("a", cpu=2.0)
    standin = standin_factory(kubelet_metrics=True)
    cluster = kube.cluster(metrics_seconds=0.5)
    cluster.deploy(MODEL, node_a)
    standin.wait_serving(MODEL, node_a)
    wait_for(lambda: _adapter_reads_api(cluster, metrics_server, node_a), timeout=60,
             what="node a's CPU from metrics.k8s.io")
    try:
        # Registered but its backend unreachable: the aggregator answers 503.
        metrics_server.unregister()
        metrics_server.register(port=metrics_server.unused_port)
        wait_for(lambda: cluster.metrics_served is False, timeout=30, what="metrics.k8s.io failing (503)")
        wait_for(lambda: _adapter_cpu(cluster, node_a)[node_a] == REQUESTED, timeout=30,
                 what="node a's CPU estimated from its pods' requests")
        # Restored, then removed: 404 from then on.
        metrics_server.unregister()
        metrics_server.register()
        metrics_server.wait_available()
        wait_for(lambda: _adapter_reads_api(cluster, metrics_server, node_a), timeout=30,
                 what="metrics.k8s.io read again")
        metrics_server.unregister()
        wait_for(lambda: cluster.metrics_served is False, timeout=30, what="metrics.k8s.io gone (404)")
        assert _adapter_cpu(cluster, node_a)[node_a] == REQUESTED
    finally:
        metrics_server.unregister()
        metrics_server.register()
        metrics_server.wait_available()


def _choice(url: str, http=requests) -> str:
    answer = http.get(f"{url}/services/{MODEL}", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["node"]


def _frontend_cpu(url: str, http=requests) -> dict[str, float]:
    """Node CPU as the answering front-end worker sees it (GET /stats/memory)."""
    answer = http.get(f"{url}/stats/memory", headers={"Authorization": f"Bearer {FRONTEND_TOKEN}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return {row["node"]: row["cpu_usage"] for row in answer.json()["nodes"]}


def test_lowest_cpu_dispatch_follows_metrics_server(two_nodes, kube, frontend_factory, metrics_server):
    # By the estimate node a is the busier one (two instances' requests against one), and on a tie
    # lowest-cpu takes the first name (node a): the first step rules out the estimate, the second the tie.
    node_a, node_b, cluster, standin, endpoints = two_nodes
    cluster.deploy("digits_forest", node_a)
    frontend = frontend_factory(policy="lowest-cpu", cluster_settings={"metrics_seconds": 0.5})
    every_worker = frontend.every_worker

    with Load(endpoints[node_b]):                  # node b is the one really working
        wait_for(lambda: _one_busy(_api_cpu(metrics_server, node_a, node_b), node_b, node_a), timeout=60,
                 what="node b busy, node a idle in metrics.k8s.io")
        wait_for(lambda: every_worker(lambda http: _choice(frontend.url, http) == node_a), timeout=30,
                 what="lowest-cpu picks node a while node b is loaded")
        assert every_worker(lambda http: _one_busy(_frontend_cpu(frontend.url, http), node_b, node_a))
    with Load(endpoints[node_a]):
        wait_for(lambda: _one_busy(_api_cpu(metrics_server, node_a, node_b), node_a, node_b), timeout=60,
                 what="node a busy, node b idle in metrics.k8s.io")
        wait_for(lambda: every_worker(lambda http: _choice(frontend.url, http) == node_b), timeout=30,
                 what="lowest-cpu moves to node b once node a is loaded")
