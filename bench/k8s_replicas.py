"""Front-end replicas on the real control plane: 3 replicas beside 1, and a replica killed mid-load.

Why: issue 13 scales the front-end out (k8s/30-frontend.yaml: 3 replicas). This measures, side by
side in one run on the tests/k8s control plane (etcd, kube-apiserver, controller-manager,
scheduler, kwok; pods get loopback IPs), the real front-end (gunicorn, 2 workers, as the manifest
runs it) started at each pod's IP:

1. lookups (GET /services/<model>) and proxied predictions (POST .../predict to a real model
   server) with `wrk` (closed loop, the same total connections): one replica, then the three
   replicas at once (one wrk per replica, connections split); requests/s ratio, p50 and p99;
2. a replica killed (SIGKILL to its process group, no flush) while clients send predictions
   through the three, each retrying once on the next replica on a failure: failed requests, and
   statistics lost = answers the killed replica gave minus the rows its database holds afterwards
   (its unflushed buffer; the file itself survives a kill, a deleted pod's emptyDir would not).

On 2 cores every replica shares the same CPUs, so 3 replicas cannot triple throughput here; the
ratio says what replication costs or gains on one small machine, not on three nodes.

Usage: python -m bench.k8s_replicas [--quick] [--seconds S] [--connections C] [--kill-requests N] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "k8s"))

NAMESPACE = "edge-replicas"
MODEL = "half_plus_two"
BODY = json.dumps({"instances": [1.0, 2.0, 5.0]})
TOKEN = "k8s-replicas-bench-token-0123456789"
LABELS = {"app.kubernetes.io/name": "frontend", "app.kubernetes.io/part-of": "edge-inference"}
PORT = 5000


def say(message: str) -> None:
    """Print a progress line."""
    print(f"[k8s_replicas] {message}", flush=True)


def _wait(check, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def _objects() -> list[dict]:
    pod = {"containers": [{"name": "frontend", "image": "edge-inference/frontend:0.1.0",
                           "ports": [{"name": "http", "containerPort": PORT}],
                           "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
           "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                          "whenUnsatisfiable": "ScheduleAnyway",
                                          "labelSelector": {"matchLabels": LABELS}}]}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "frontend", "labels": LABELS},
         "spec": {"replicas": 3, "selector": {"matchLabels": LABELS},
                  "template": {"metadata": {"labels": LABELS}, "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "frontend", "labels": LABELS},
         "spec": {"type": "NodePort", "selector": LABELS, "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "edge-inference-plan"}},
    ]


def _combine(parts: list) -> dict[str, float]:
    """Sum throughput over concurrent wrk runs; p50 weighted by requests, p99 the worst."""
    total = sum(p.requests for p in parts)
    seconds = max(p.seconds for p in parts)
    return {"rps": total / seconds if seconds else 0.0,
            "p50_ms": sum(p.p50_ms * p.requests for p in parts) / total if total else float("nan"),
            "p99_ms": max(p.p99_ms for p in parts), "errors": sum(p.errors for p in parts), "requests": total}


def _measure(urls: list[str], path: str, *, method: str, body: str | None, connections: int,
             seconds: float) -> dict[str, float]:
    from bench.frontend import load

    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        share = max(1, connections // len(urls))
        parts = list(pool.map(lambda u: load(u + path, tool="wrk", method=method, body=body,
                                               connections=share, seconds=seconds), urls))
    return _combine(parts)


def _kill_test(servers: dict[str, Any], urls: list[str], *, requests_total: int, kill_after: int) -> dict[str, Any]:
    import requests

    def rows(url: str) -> int:
        with sqlite3.connect(servers[url].settings["database"]) as conn:
            return conn.execute("SELECT count(*) FROM requests WHERE kind = 'proxy'").fetchone()[0]

    time.sleep(1.0)                               # the earlier loads' buffers are flushed (50 ms)
    before = rows(urls[0])
    counts = {u: 0 for u in urls}
    failed = retried = 0
    lock = threading.Lock()
    finished = [0]
    kill_now = threading.Event()
    victim = urls[0]

    def one(i: int) -> None:
        nonlocal failed, retried
        for attempt in range(2):
            url = urls[(i + attempt) % len(urls)]
            try:
                answer = requests.post(f"{url}/services/{MODEL}/v1/models/{MODEL}:predict", data=BODY,
                                       headers={"Content-Type": "application/json", "X-Client-Zone": "z1"}, timeout=10)
                if answer.status_code == 200:
                    with lock:
                        counts[url] += 1
                        retried += attempt
                    break
            except requests.RequestException:
                pass
        else:
            with lock:
                failed += 1
        with lock:
            finished[0] += 1
            if finished[0] == kill_after:
                kill_now.set()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(one, i) for i in range(requests_total)]
        kill_now.wait(300)
        server = servers[victim]
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        server._sock.close()                        # the dead pod's address refuses connections
        for future in futures:
            future.result()
    elapsed = time.monotonic() - started
    stored = rows(victim) - before
    return {"requests": requests_total, "seconds": elapsed, "failed_with_one_retry": failed,
            "answered_after_a_retry": retried, "answered_by_killed_replica": counts[victim],
            "rows_in_killed_replica_db": stored, "statistics_lost": counts[victim] - stored,
            "answered_by_live_replicas": sum(c for u, c in counts.items() if u != victim)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.utils import create_from_dict

    from cluster.kubernetes import KubernetesCluster
    from controlplane import ControlPlane, node_addresses, node_manifest
    from tests.frontend_server import GunicornServer
    from standin import ModelServerStandIn

    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "out"}}
    work = Path(tempfile.mkdtemp(prefix="edge-k8s-replicas-"))
    plane = ControlPlane.start(timeout=180, log=lambda m: say(f"control plane: {m}"))
    servers: dict[str, Any] = {}
    standin = cluster = None
    try:
        api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
        core = k8s_client.CoreV1Api(api)
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        _wait(lambda: core.read_namespaced_service_account("default", NAMESPACE), timeout=60, what="service account")
        nodes = [f"kwok-{i}" for i in range(1, 4)]
        for name, address in zip(nodes, node_addresses(3)):
            core.create_node(node_manifest(name, address=address, cpu=4.0, memory_kib=4 * 1024 * 1024,
                                           labels={"edge-inference/node-class": "small"}))
        catalog = REPO_ROOT / "config" / "models.yaml"
        standin = ModelServerStandIn(kubeconfig=plane.kubeconfig, namespace=NAMESPACE, catalog_path=catalog,
                                     models_dir=REPO_ROOT / "build" / "models", log_dir=work / "standin").start()
        cluster = KubernetesCluster(kubeconfig=plane.kubeconfig, namespace=NAMESPACE, catalog_path=catalog)
        _wait(lambda: cluster.wait_synced(5) and all(n.ready for n in cluster.nodes()) and len(cluster.nodes()) == 3,
              timeout=60, what="three ready nodes")
        cluster.deploy(MODEL, nodes[0], timeout=60)
        standin.wait_serving(MODEL, nodes[0], timeout=60)
        for obj in _objects():
            create_from_dict(api, obj, namespace=NAMESPACE)
        selector = ",".join(f"{k}={v}" for k, v in LABELS.items())

        def ips():
            pods = core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
            found = sorted(p.status.pod_ip for p in pods if p.status.pod_ip)
            return found if len(found) == 3 else None

        for index, ip in enumerate(_wait(ips, timeout=90, what="three front-end pods")):
            config = {"cluster": "kubernetes", "cluster_settings": {
                          "kubeconfig": str(plane.kubeconfig), "namespace": NAMESPACE, "catalog_path": str(catalog)},
                      "database": str(work / f"replica-{index}.db"), "token": TOKEN}
            servers[f"http://{ip}:{PORT}"] = GunicornServer(config, host=ip, port=PORT, workers=2, threads=4,
                                                            log_path=work / f"replica-{index}.log")
        for server in servers.values():
            server.start(timeout=120)
        urls = list(servers)
        say(f"replicas at {', '.join(urls)}")
        for url in urls:          # warm up each replica's proxy pool and cluster cache
            _measure([url], f"/services/{MODEL}/v1/models/{MODEL}:predict", method="POST", body=BODY,
                     connections=2, seconds=2)
        for name, path, method, body in (("lookup", f"/services/{MODEL}", "GET", None),
                                         ("predict", f"/services/{MODEL}/v1/models/{MODEL}:predict", "POST", BODY)):
            one = _measure(urls[:1], path, method=method, body=body, connections=args.connections,
                           seconds=args.seconds)
            three = _measure(urls, path, method=method, body=body, connections=args.connections,
                             seconds=args.seconds)
            results[name] = {"one": one, "three": three, "ratio": three["rps"] / one["rps"] if one["rps"] else None}
            say(f"{name}: 1 replica {one['rps']:.0f}/s p50 {one['p50_ms']:.1f} p99 {one['p99_ms']:.1f} ms; "
                f"3 replicas {three['rps']:.0f}/s p50 {three['p50_ms']:.1f} p99 {three['p99_ms']:.1f} ms")
        results["kill"] = _kill_test(servers, urls, requests_total=args.kill_requests,
                                     kill_after=args.kill_requests // 3)
        say(f"kill: {results['kill']}")
    finally:
        for server in servers.values():
            try:
                server.cleanup()
            except Exception:
                pass
        if standin is not None:
            standin.stop()
        if cluster is not None:
            cluster.close()
        plane.stop()
    return results


def report(results: dict[str, Any]) -> list[str]:
    """Return the Markdown lines of bench/RESULTS.md's section."""
    lines = ["| what | 1 replica: req/s, p50, p99 | 3 replicas: req/s, p50, p99 | ratio (3/1) |", "| --- | --- | --- | --- |"]
    for name in ("lookup", "predict"):
        one, three = results[name]["one"], results[name]["three"]
        lines.append(f"| {name} | {one['rps']:.0f}/s, {one['p50_ms']:.1f} ms, {one['p99_ms']:.1f} ms | "
                     f"{three['rps']:.0f}/s, {three['p50_ms']:.1f} ms, {three['p99_ms']:.1f} ms | "
                     f"{results[name]['ratio']:.2f} |")
    kill = results["kill"]
    lines.append("")
    lines.append(f"Replica killed after {kill['requests'] // 3} of {kill['requests']} predictions (8 clients, one retry "
                 f"on the next replica): {kill['failed_with_one_retry']} failed, {kill['answered_after_a_retry']} "
                 f"answered after a retry; the killed replica had answered {kill['answered_by_killed_replica']} and its "
                 f"database holds {kill['rows_in_killed_replica_db']}: statistics lost = {kill['statistics_lost']} "
                 f"(its unflushed buffer).")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the results (JSON to --out when given)."""
    parser = argparse.ArgumentParser(prog="python -m bench.k8s_replicas", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=24, help="total wrk connections (split over replicas)")
    parser.add_argument("--kill-requests", type=int, default=1200, help="predictions in the kill test")
    parser.add_argument("--quick", action="store_true", help="3 s runs and 300 predictions (a smoke check)")
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.kill_requests = 3.0, 300
    results = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    print("\n".join(report(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
