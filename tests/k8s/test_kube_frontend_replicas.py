"""Three front-end replicas on the real control plane: the plan reaches all, statistics from all.

The replicas are a Deployment of three pods behind a Service `frontend`, as k8s/30-frontend.yaml
runs them. KWOK runs no containers, so this module is their kubelet stand-in: it starts the real
front-end (gunicorn) at each pod's IP (KWOK's pod CIDR is a loopback block, 127.64.0.0/14) on the
container port, as the model-server stand-in does for model pods. The back-end runs as its own
process with `--frontend-service frontend`, as the CronJob does: it finds the replicas through the
API (the Service's selector, the ready pods' IPs), merges their statistics and writes the plan to
the ConfigMap `edge-inference-plan` that every replica watches.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from k8s_support import CATALOG, FRONTEND_TOKEN, NODE_CLASS_LABEL, REPO_ROOT, wait_for

MODEL = "half_plus_two"
BODY = {"instances": [1.0, 2.0, 5.0]}
AUTH = {"Authorization": f"Bearer {FRONTEND_TOKEN}"}
LABELS = {"app.kubernetes.io/name": "frontend", "app.kubernetes.io/part-of": "edge-inference"}
PORT = 5000


def _frontend_objects(namespace: str) -> list[tuple[str, dict]]:
    """The Deployment (3 replicas), Service and plan ConfigMap, shaped as k8s/ has them."""
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "frontend", "labels": LABELS},
        "spec": {"replicas": 3, "selector": {"matchLabels": LABELS}, "template": {
            "metadata": {"labels": LABELS},
            "spec": {"containers": [{"name": "frontend", "image": "edge-inference/frontend:0.1.0",
                                     "ports": [{"name": "http", "containerPort": PORT}],
                                     "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
                     "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                                    "whenUnsatisfiable": "ScheduleAnyway",
                                                    "labelSelector": {"matchLabels": LABELS}}]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "frontend", "labels": LABELS},
               "spec": {"type": "NodePort", "selector": LABELS,
                        "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]}}
    plan = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "edge-inference-plan"}}
    return [("deployment", deployment), ("service", service), ("configmap", plan)]


class Replicas:
    """The kubelet stand-in for the front-end pods: one real gunicorn per pod, at the pod's IP."""

    def __init__(self, kube) -> None:
        self.kube = kube
        self.servers: dict[str, object] = {}       # pod IP -> GunicornServer

    def start(self) -> list[str]:
        from tests.frontend_server import GunicornServer

        selector = ",".join(f"{k}={v}" for k, v in LABELS.items())

        def ready_ips():
            pods = self.kube.core.list_namespaced_pod(self.kube.namespace, label_selector=selector).items
            ips = [p.status.pod_ip for p in pods if p.status.pod_ip and any(
                c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
            return ips if len(ips) == 3 else None

        ips = sorted(wait_for(ready_ips, timeout=90, what="three ready front-end pods with IPs"))
        assert all(ip.startswith("127.") for ip in ips) and len(set(ips)) == 3
        for index, ip in enumerate(ips):
            config = {"cluster": "kubernetes",
                      "cluster_settings": {"kubeconfig": str(self.kube.kubeconfig), "namespace": self.kube.namespace,
                                           "catalog_path": str(CATALOG), "node_class_label": NODE_CLASS_LABEL},
                      "database": str(self.kube.tmp_path / f"replica-{index}.db"), "token": FRONTEND_TOKEN,
                      "refresh_interval": 0.2}
            self.servers[ip] = GunicornServer(config, host=ip, port=PORT, workers=1, threads=4,
                                              log_path=self.kube.tmp_path / f"replica-{index}.log")
        for server in self.servers.values():
            server.start(timeout=90)
        return [server.url for server in self.servers.values()]

    def kill(self, url: str) -> None:
        """SIGKILL one replica's whole process group (a pod lost with its node: no flush)."""
        server = next(s for s in self.servers.values() if s.url == url)
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        # The harness holds the listening socket it handed to gunicorn: close it too, or the kernel
        # would keep accepting connections nobody answers (a dead pod's address refuses them).
        server._sock.close()

    def stop(self) -> None:
        for server in self.servers.values():
            try:
                server.cleanup()
            except Exception:
                pass


@pytest.fixture
def replicas(kube, standin_factory):
    """Yield (Replicas, urls, node) with half_plus_two served on a node and three replicas up."""
    from kubernetes.utils import create_from_dict

    nodes = [kube.add_node(short, memory_kb=1_000_000, cpu=4.0) for short in ("a", "b", "c")]
    for _, obj in _frontend_objects(kube.namespace):
        create_from_dict(kube.api, obj, namespace=kube.namespace)
    standin = standin_factory()
    kube.cluster().deploy(MODEL, nodes[0], timeout=60)
    standin.wait_serving(MODEL, nodes[0], timeout=60)
    harness = Replicas(kube)
    try:
        urls = harness.start()
        yield harness, urls, nodes[0]
    finally:
        harness.stop()


def _predict(urls: list[str], start: int, counts: dict[str, int], lock: threading.Lock) -> bool:
    """One client request: to urls[start], and on a failure once more to the next replica."""
    for attempt in range(2):
        url = urls[(start + attempt) % len(urls)]
        try:
            answer = requests.post(f"{url}/services/{MODEL}/v1/models/{MODEL}:predict", json=BODY,
                                   headers={"X-Client-Zone": "z-a"}, timeout=30)
        except requests.RequestException:
            continue
        if answer.status_code == 200 and answer.json()["predictions"] == [2.5, 3.0, 4.5]:
            with lock:
                counts[url] += 1
            return True
    return False


def _backend(kube, *extra: str) -> tuple[int, dict, str]:
    report = kube.tmp_path / f"report-{len(list(kube.tmp_path.glob('report-*.json')))}.json"
    argv = [sys.executable, "-m", "backend", "--mode", "1", "--frontend-service", "frontend",
            "--cluster", "kubernetes", "--catalog", str(CATALOG),
            "--cluster-setting", f"kubeconfig={kube.kubeconfig}", "--cluster-setting", f"namespace={kube.namespace}",
            "--cluster-setting", f"node_class_label={NODE_CLASS_LABEL}", "--lock", str(kube.tmp_path / "backend.lock"),
            "--alto", "", "--report", str(report), "--solver", "highs", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "KUBECONFIG"))}
    env["BACKEND_TOKEN"] = FRONTEND_TOKEN
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    return proc.returncode, (json.loads(report.read_text()) if report.is_file() else {}), proc.stdout + proc.stderr


def _plan(url: str) -> dict | None:
    answer = requests.get(f"{url}/plan", headers=AUTH, timeout=10)
    return answer.json() if answer.status_code == 200 else None


def test_replicas_share_the_plan_and_the_backend_counts_every_live_replica(kube, replicas):
    harness, urls, node = replicas
    counts = {url: 0 for url in urls}
    lock = threading.Lock()
    # Load through all three; the back-end's plan then reaches every replica through the ConfigMap.
    assert all(_predict(urls, i, counts, lock) for i in range(30))
    assert all(counts[url] == 10 for url in urls)
    code, report, output = _backend(kube)
    assert code == 0 and report["errors"] == [], output
    assert report["inputs"]["requests_read"] == 30
    assert report["plan_pushed"] is True
    stored = json.loads(kube.core.read_namespaced_config_map("edge-inference-plan", kube.namespace).data["plan.json"])
    assert node in json.dumps(stored["weights"][MODEL])

    def served_everywhere():
        plans = [_plan(url) for url in urls]
        return all(p and p["created"] == stored["created"] and p["weights"] == stored["weights"] for p in plans)

    wait_for(served_everywhere, timeout=10, interval=0.2, what="the plan on all three replicas")

    # A plan the front-end refuses (a model outside the catalog) is logged and ignored by each replica.
    bad = {**stored, "created": stored["created"] + 1, "weights": {"no-such-model": {"z-a": {node: 1.0}}}}
    kube.core.patch_namespaced_config_map("edge-inference-plan", kube.namespace,
                                          {"data": {"plan.json": json.dumps(bad)}})
    logs = sorted(kube.tmp_path.glob("replica-*.log"))
    wait_for(lambda: all("cluster_plan_invalid" in log.read_text() for log in logs), timeout=10,
             what="every replica refusing the bad plan")
    assert all(_plan(url)["created"] == stored["created"] for url in urls)

    # A replica killed mid-load: clients retrying once on another replica lose nothing.
    victim = urls[0]
    done = threading.Event()
    finished = [0]

    def one(i: int) -> bool:
        ok = _predict(urls, i, counts, lock)
        with lock:
            finished[0] += 1
            if finished[0] == 60:
                done.set()
        return ok

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(one, i) for i in range(180)]
        assert done.wait(120)
        harness.kill(victim)
        results = [f.result() for f in futures]
    assert results.count(False) == 0
    assert sum(counts.values()) == 30 + 180
    live = [url for url in urls if url != victim]
    assert all(counts[url] > 10 for url in live)        # the survivors took load after the kill

    # The back-end reads the two live replicas (the dead one is left out, not fatal) and counts
    # exactly the requests they recorded: nothing twice, nothing they answered missing.
    code, report, output = _backend(kube, "--dry-run")
    assert code == 0, output
    assert report["inputs"]["requests_read"] == sum(counts[url] for url in live)
    assert any(victim in w and "left out" in w for w in report["warnings"]), report["warnings"]
    assert any("merged from 2 of 3" in w for w in report["warnings"]), report["warnings"]
