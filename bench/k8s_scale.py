"""The system at scale on a real Kubernetes control plane: 1,000 KWOK nodes and 50 models.

Why: the tests prove behaviour on a handful of nodes; this measures what changes with size, on the
same loopback control plane the tests use (tests/k8s/controlplane.py: etcd, kube-apiserver,
controller-manager, scheduler, kwok). One run, side by side:

1. front-end lookup latency (GET /services/<model>, gunicorn, 2 workers) with a cache of 10 nodes
   and then of N nodes and thousands of pods; the p50 ratio (target: within 20%);
2. the back-end's full Mode 2 cycle (`python -m backend`, as the CronJob runs it: collect, build,
   solve, plan, apply) at N nodes and M models: wall time per step (target: <= 60 s) and the API
   calls it made, counted by the API server's audit log (the back-end has its own client
   certificate, so only its requests are counted);
3. provisioning latency of 1 and of 4 models on one node by the back-end's executor with
   --wait-ready (thesis: 2,548 ms and 11,848 ms; target: 4 models <= 1.5 x 1 model), ours
   (concurrent) beside the thesis's way (one after another, --concurrency 1), on nodes whose pods
   are Ready as soon as KWOK sees them (the control plane's share alone) and on nodes where KWOK
   holds each pod back --start-delay ms, standing in for the container start and model load a
   real kubelet waits for (the thesis's 1-model time is mostly that).

Usage: python -m bench.k8s_scale [--quick] [--nodes N] [--models M] [--instances K] [--solver S]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "k8s"))

NAMESPACE = "edge-scale"
NODE_CLASS_LABEL = "edge-inference/node-class"
TOKEN = "k8s-scale-bench-token-0123456789"
BACKEND_USER = "edge-backend"
THESIS_MS = {1: 2548.240, 4: 11848.184}
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Metadata
    users: ["{BACKEND_USER}"]
  - level: None
"""


def say(message: str) -> None:
    """Print a progress line."""
    print(f"[k8s_scale] {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0..100) of `values` (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]


# -- setup ---------------------------------------------------------------------------------------

def write_catalog(path: Path, models: int) -> list[str]:
    """Write a catalog of `models` synthetic models (TF Serving image, distinct ports); return names."""
    names = [f"m{i:02d}" for i in range(models)]
    entries = [{"name": name, "image": "tensorflow/serving:2.14.1", "port": 8501 + i, "model_file": "half_plus_two",
                "memory": 40000 + 10000 * (i % 5), "cpu": 0.05, "exec_time": {"small": 0.004, "large": 0.002}}
               for i, name in enumerate(names)]
    path.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
    return names


def write_alto(path: Path, nodes: list[str], zones: int) -> list[str]:
    """Write an ALTO cost map: zone k is near (2 ms) its own tenth of the nodes, far (40 ms) from the rest."""
    names = [f"z{k}" for k in range(zones)]
    per_zone = max(1, len(nodes) // zones)
    cost = {}
    for k, zone in enumerate(names):
        near = set(nodes[k * per_zone:(k + 1) * per_zone])
        cost[zone] = {n: (0.002 if n in near else 0.04) for n in nodes}
    path.write_text(json.dumps({"meta": {"cost-type": {"cost-mode": "numerical", "cost-metric": "delay"}},
                                "cost-map": cost}))
    return names


def create_nodes(core, names: list[str], addresses: list[str], *, large_every: int = 10) -> None:
    """Create KWOK nodes (loopback InternalIPs; every large_every-th one of class large), 16 at a time."""
    from controlplane import node_manifest

    def one(item: tuple[int, str, str]) -> None:
        index, name, address = item
        large = index % large_every == 0
        body = node_manifest(name, address=address, cpu=8.0 if large else 4.0,
                             memory_kib=(16 if large else 4) * 1024 * 1024, pods=110,
                             labels={NODE_CLASS_LABEL: "large" if large else "small"})
        core.create_node(body)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, [(i, n, a) for i, (n, a) in enumerate(zip(names, addresses))]))


def ready_nodes(core) -> int:
    """Return how many nodes report Ready."""
    count = 0
    for node in core.list_node().items:
        if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
            count += 1
    return count


def wait_until(check, *, timeout: float, what: str, every: float = 1.0) -> float:
    """Poll `check` until true; return seconds waited; raise RuntimeError on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


def deploy_many(api, catalog, pairs: list[tuple[str, str]], *, threads: int = 32) -> float:
    """Create the adapter's own objects for (model, node) pairs straight through the API; return seconds.

    Set-up only: the same rendered Deployment + Service the adapter sends, without its per-call
    memory check, so thousands of instances appear in a minute or two. What is measured (lookups,
    the back-end's cycle, provisioning) goes through the real adapter."""
    from kubernetes import client as k8s_client

    from cluster.k8s_render import RenderSettings, render_instance

    apps, core = k8s_client.AppsV1Api(api), k8s_client.CoreV1Api(api)
    settings = RenderSettings(namespace=NAMESPACE)

    def one(pair: tuple[str, str]) -> None:
        rendered = render_instance(catalog[pair[0]], pair[1], settings, hostname=pair[1])
        for response in (apps.create_namespaced_deployment(NAMESPACE, rendered.deployment, _preload_content=False),
                         core.create_namespaced_service(NAMESPACE, rendered.service, _preload_content=False)):
            response.read()                 # skip the client's slow model deserialisation
            response.release_conn()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, pairs))
    return time.monotonic() - started


def delayed_stages(nodes: list[str], delay_ms: int) -> str:
    """Return the test suite's KWOK stages with pods on `nodes` made Ready only after `delay_ms`."""
    from controlplane import KWOK_STAGES

    stages = list(yaml.safe_load_all(KWOK_STAGES.read_text()))
    ready = next(stage for stage in stages if stage["metadata"]["name"] == "pod-ready")
    slow = json.loads(json.dumps(ready))
    slow["metadata"]["name"] = "pod-ready-after-start-delay"
    slow["spec"]["selector"]["matchExpressions"].append({"key": ".spec.nodeName", "operator": "In", "values": nodes})
    slow["spec"]["delay"] = {"durationMilliseconds": delay_ms}
    ready["spec"]["selector"]["matchExpressions"].append({"key": ".spec.nodeName", "operator": "NotIn",
                                                          "values": nodes})
    stages.insert(stages.index(ready) + 1, slow)
    return yaml.safe_dump_all(stages, sort_keys=False)


# -- measurements --------------------------------------------------------------------------------

def measure_lookups(url: str, models: list[str], zones: list[str], *, count: int, seed: int) -> dict[str, Any]:
    """Time `count` GET /services/<model> (random model and zone) after a warm-up; latencies in ms."""
    import requests

    rng = random.Random(seed)
    session = requests.Session()
    for model in models:                                  # warm-up: every model once per worker
        for _ in range(2):
            session.get(f"{url}/services/{model}", timeout=30)
    times = []
    failures = 0
    for _ in range(count):
        model, zone = rng.choice(models), rng.choice(zones)
        started = time.perf_counter()
        answer = session.get(f"{url}/services/{model}", headers={"X-Client-Zone": zone, "X-Client-Latency": "0.01"},
                             timeout=30)
        times.append((time.perf_counter() - started) * 1000)
        failures += answer.status_code != 200
    listing = []
    for _ in range(max(10, count // 10)):
        started = time.perf_counter()
        session.get(f"{url}/services", timeout=30)
        listing.append((time.perf_counter() - started) * 1000)
    return {"count": count, "failures": failures, "p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95),
            "mean_ms": statistics.fmean(times), "list_p50_ms": percentile(listing, 50)}


def audit_calls(path: Path, since: float) -> Counter:
    """Count the back-end's completed API requests (verb resource) in the audit log after `since`."""
    counts: Counter = Counter()
    if not path.is_file():
        return counts
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("user", {}).get("username") != BACKEND_USER or event.get("stage") != "ResponseComplete":
            continue
        stamp = event.get("requestReceivedTimestamp", "")
        try:
            from datetime import datetime
            received = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            received = since
        if received < since:
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource") or event.get("requestURI", "?")
        if ref.get("apiGroup"):
            resource = f"{resource}.{ref['apiGroup']}"
        counts[f"{event.get('verb')} {resource}"] += 1
    return counts


def run_backend(*, mode: int, frontend_url: str, kubeconfig: Path, catalog: Path, alto: Path, work: Path,
                solver: str, extra: list[str]) -> dict[str, Any]:
    """Run `python -m backend` once as its own process; return the report plus wall time and exit code."""
    report = work / f"report-{solver}-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "backend", "--mode", str(mode), "--frontend", frontend_url,
            "--cluster", "kubernetes", "--catalog", str(catalog),
            "--cluster-setting", f"kubeconfig={kubeconfig}", "--cluster-setting", f"namespace={NAMESPACE}",
            "--cluster-setting", f"node_class_label={NODE_CLASS_LABEL}",
            "--lock", str(work / "backend.lock"), "--alto", str(alto), "--report", str(report),
            "--solver", solver, *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "KUBECONFIG"))}
    env["BACKEND_TOKEN"] = TOKEN
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    doc = json.loads(report.read_text()) if report.is_file() else {}
    return {"wall_s": wall, "exit": proc.returncode, "stderr": proc.stderr.strip()[-800:], "report": doc}


def provisioning(cluster, catalog, pairs: list[tuple[str, str]], *, concurrency: int) -> float:
    """Provision `pairs` with the back-end's executor (--wait-ready); return ms, then remove them."""
    from backend.apply import ExecSettings, execute
    from backend.plan import PROVISION, Action

    actions = [Action(PROVISION, model, node, "bench") for model, node in pairs]
    nodes = {n.name: n for n in cluster.nodes()}
    result = execute(actions, cluster=cluster, settings=ExecSettings(wait_ready=True, concurrency=concurrency, ready_timeout=120),
                     available={n: nodes[n].memory_available for n in nodes},
                     model_memory={m: catalog[m].memory for m, _ in pairs})
    errors = [r.error for r in result.results if r.error]
    if errors:
        raise RuntimeError(f"provisioning failed: {errors[:3]}")
    ms = result.seconds * 1000
    for model, node in pairs:
        cluster.remove(model, node)
    wait_until(lambda: not any((d.model, d.node) in set(pairs) for d in cluster.deployments()), timeout=120,
               what="bench instances removed", every=0.2)
    return ms


# -- the run -------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    from cluster.catalog import load_catalog
    from cluster.kubernetes import KubernetesCluster
    from controlplane import ControlPlane, node_addresses
    from tests.frontend_server import GunicornServer

    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "out"}}
    work = Path(tempfile.mkdtemp(prefix="edge-k8s-scale-"))
    audit_policy, audit_log = work / "audit-policy.yaml", work / "audit.log"
    audit_policy.write_text(AUDIT_POLICY)
    names = [f"kwok-{i:04d}" for i in range(1, args.nodes + 1)]
    slow_nodes = names[-args.repeats:]            # kept free of other instances, pods start late
    started = time.monotonic()
    # Node leases every 150 s (not 10 s) so 1,000 simulated kubelets do not saturate 2 cores; the
    # node controller's grace period is raised to match.
    plane = ControlPlane.start(
        timeout=180, kwok_options={"nodeLeaseDurationSeconds": 600, "nodeLeaseParallelism": 32,
                                   "nodePlayStageParallelism": 32, "podPlayStageParallelism": 32},
        extra_args={"kube-apiserver": [f"--audit-policy-file={audit_policy}", f"--audit-log-path={audit_log}",
                                       "--audit-log-format=json", "--audit-log-mode=blocking"],
                    "kube-controller-manager": ["--node-monitor-grace-period=700s"]},
        kwok_stages=delayed_stages(slow_nodes, args.start_delay), log=lambda m: say(f"control plane: {m}"))
    frontend = None
    cluster = None
    try:
        results["control_plane_start_s"] = time.monotonic() - started
        api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
        core = k8s_client.CoreV1Api(api)
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        wait_until(lambda: any(sa.metadata.name == "default" for sa in
                               core.list_namespaced_service_account(NAMESPACE).items), timeout=60, what="default SA")
        catalog_path = work / "models.yaml"
        models = write_catalog(catalog_path, args.models)
        catalog = load_catalog(catalog_path)
        addresses = node_addresses(args.nodes)
        alto = work / "alto.json"
        zones = write_alto(alto, names, args.zones)
        rng = random.Random(7)

        # ---- phase A: 10 nodes ----
        small = names[:args.small_nodes]
        create_nodes(core, small, addresses[:args.small_nodes])
        wait_until(lambda: ready_nodes(core) == len(small), timeout=120, what="small cluster ready")
        cluster = KubernetesCluster(kubeconfig=plane.kubeconfig, namespace=NAMESPACE, catalog_path=catalog_path,
                                    node_class_label=NODE_CLASS_LABEL)
        per_model_small = min(2, len(small))
        pairs_small = [(m, n) for m in models for n in rng.sample(small, per_model_small)]
        deploy_many(api, catalog, pairs_small)
        wait_until(lambda: sum(d.ready for d in cluster.deployments()) == len(pairs_small), timeout=300,
                   what="small instances ready")
        frontend = GunicornServer({"cluster": "kubernetes", "catalog": str(catalog_path),
                                   "cluster_settings": {"kubeconfig": str(plane.kubeconfig), "namespace": NAMESPACE,
                                                        "catalog_path": str(catalog_path),
                                                        "node_class_label": NODE_CLASS_LABEL},
                                   "database": str(work / "frontend.db"), "token": TOKEN, "refresh_interval": 1.0},
                                  workers=2, threads=4, log_path=work / "frontend.log").start(timeout=120)
        time.sleep(3)                                       # both workers' caches filled
        say(f"phase A: {len(small)} nodes, {len(pairs_small)} instances; measuring {args.lookups} lookups")
        results["lookup_small"] = {"nodes": len(small), "instances": len(pairs_small),
                                   **measure_lookups(frontend.url, models, zones, count=args.lookups, seed=1)}

        # ---- phase B: N nodes, K instances ----
        t0 = time.monotonic()
        create_nodes(core, names[len(small):], addresses[len(small):])
        results["nodes_created_s"] = time.monotonic() - t0
        results["nodes_ready_s"] = results["nodes_created_s"] + wait_until(
            lambda: ready_nodes(core) == len(names), timeout=600, what=f"{len(names)} nodes ready", every=2.0)
        say(f"{len(names)} nodes Ready after {results['nodes_ready_s']:.1f} s")
        per_model = max(1, args.instances // len(models))
        pairs_big = []
        for m in models:
            have = {n for model, n in pairs_small if model == m}
            fresh = [n for n in rng.sample(names, min(len(names), per_model + len(have) + len(slow_nodes)))
                     if n not in have and n not in slow_nodes]
            pairs_big += [(m, n) for n in fresh[:max(0, per_model - len(have))]]
        t0 = time.monotonic()
        results["instances_create_s"] = deploy_many(api, catalog, pairs_big)
        total = len(pairs_small) + len(pairs_big)
        say(f"created {len(pairs_big)} more instances in {results['instances_create_s']:.1f} s; waiting for Running")
        results["instances_ready_s"] = time.monotonic() - t0 + wait_until(
            lambda: sum(d.ready for d in cluster.deployments()) == total, timeout=900,
            what=f"{total} instances ready", every=2.0)
        pods = len(core.list_namespaced_pod(NAMESPACE).items)
        say(f"{total} instances ({pods} pods) ready after {results['instances_ready_s']:.1f} s; measuring lookups")
        time.sleep(3)
        results["lookup_large"] = {"nodes": len(names), "instances": total, "pods": pods,
                                   **measure_lookups(frontend.url, models, zones, count=args.lookups, seed=2)}

        # ---- the back-end's full Mode 2 cycle ----
        backend_config = plane.client_kubeconfig(BACKEND_USER)
        cycles = []
        for solver in args.solvers:
            since = time.time() - 1
            say(f"back-end Mode 2 cycle with --solver {solver} ...")
            outcome = run_backend(mode=2, frontend_url=frontend.url, kubeconfig=backend_config, catalog=catalog_path,
                                  alto=alto, work=work, solver=solver,
                                  extra=["--time-limit", str(args.time_limit), "--window", "3600"])
            time.sleep(1)
            outcome["api_calls"] = dict(sorted(audit_calls(audit_log, since).items()))
            report = outcome.pop("report")
            outcome["timings_ms"] = report.get("timings_ms")
            outcome["summary"] = report.get("summary")
            outcome["solver_status"] = (report.get("solver") or {}).get("status")
            outcome["inputs"] = {k: v for k, v in (report.get("inputs") or {}).items()
                                 if isinstance(v, (int, float, str))}
            outcome["errors"] = (report.get("errors") or [])[:3]
            outcome["solver"] = solver
            cycles.append(outcome)
            say(f"  {solver}: exit {outcome['exit']}, {outcome['wall_s']:.1f} s, "
                f"{sum(outcome['api_calls'].values())} API calls, status {outcome['solver_status']}")
        results["backend_cycles"] = cycles

        # ---- provisioning latency, 1 and 4 models, concurrent and one after another ----
        used = {p[1] for p in pairs_small + pairs_big} | set(slow_nodes)
        fast_nodes = [n for n in names if n not in used][:args.repeats] or names[:args.repeats]
        prov: dict[str, list[float]] = {}
        for rep in range(args.repeats):
            for start, node in (("instant", fast_nodes[rep % len(fast_nodes)]), ("delayed", slow_nodes[rep])):
                for how, concurrency in (("concurrent", 8), ("sequential", 1)):
                    for k in (1, 4):
                        if k == 1 and how == "sequential":
                            continue                # one action: the same either way
                        present = {(d.model, d.node) for d in cluster.deployments()}
                        chosen = [m for m in models if (m, node) not in present][:k]
                        prov.setdefault(f"{start} {how} {k}", []).append(
                            provisioning(cluster, catalog, [(m, node) for m in chosen], concurrency=concurrency))
        results["provisioning_ms"] = {key: {"runs": v, "median": statistics.median(v)} for key, v in prov.items()}
    finally:
        if frontend is not None:
            frontend.cleanup()
        if cluster is not None:
            cluster.close()
        plane.stop(keep_logs=args.keep_logs)
        if args.keep_logs:
            say(f"logs kept in {plane.run_dir} and {work}")
        else:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
    results["total_s"] = time.monotonic() - started
    return results


def report(results: dict[str, Any]) -> list[str]:
    """Return the result lines (table, ratios, targets met or missed)."""
    lines = []
    small, large = results["lookup_small"], results["lookup_large"]
    ratio = large["p50_ms"] / small["p50_ms"] if small["p50_ms"] else float("inf")
    lines.append("front-end lookup GET /services/<model> (gunicorn 2 workers, 1 client, keep-alive):")
    lines.append(f"  {'nodes':>6} {'instances':>9} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'list p50 ms':>11} failures")
    for row in (small, large):
        lines.append(f"  {row['nodes']:>6} {row['instances']:>9} {row['p50_ms']:>8.2f} {row['p95_ms']:>8.2f} "
                     f"{row['mean_ms']:>8.2f} {row['list_p50_ms']:>11.2f} {row['failures']}")
    lines.append(f"  p50 ratio {large['nodes']}/{small['nodes']} nodes: {ratio:.2f} "
                 f"(target <= 1.20: {'met' if ratio <= 1.2 else 'MISSED'})")
    lines.append(f"setup: control plane {results['control_plane_start_s']:.1f} s; {large['nodes']} nodes Ready "
                 f"{results['nodes_ready_s']:.1f} s; {large['instances']} instances created "
                 f"{results['instances_create_s']:.1f} s, Running {results['instances_ready_s']:.1f} s")
    for number, cycle in enumerate(results["backend_cycles"], 1):
        calls = cycle["api_calls"]
        lines.append(f"back-end Mode 2 full cycle {number}, --solver {cycle['solver']}: {cycle['wall_s']:.1f} s wall, "
                     f"exit {cycle['exit']}, "
                     f"solver {cycle['solver_status']} (target <= 60 s: {'met' if cycle['wall_s'] <= 60 else 'MISSED'})")
        lines.append(f"  steps ms: {cycle['timings_ms']}")
        lines.append(f"  summary: {cycle['summary']}; API calls {sum(calls.values())}: {calls}")
        if cycle["errors"] or cycle["exit"]:
            lines.append(f"  errors: {cycle['errors'] or cycle['stderr']}")
    prov = {key: value["median"] for key, value in results["provisioning_ms"].items()}
    runs = len(next(iter(results["provisioning_ms"].values()))["runs"])
    delay = results["settings"]["start_delay"]
    lines.append(f"provisioning latency on one node (executor, --wait-ready, median of {runs}; thesis "
                 f"{THESIS_MS[1]:.0f} ms for 1, {THESIS_MS[4]:.0f} ms for 4, ratio {THESIS_MS[4] / THESIS_MS[1]:.2f}):")
    lines.append(f"  {'pods Ready':<28} {'1 model':>8} {'4 concurrent':>13} {'4 sequential':>13} "
                 f"{'ratio ours':>10} {'ratio seq':>9}")
    for start, label in (("instant", "at once (control plane only)"), ("delayed", f"after {delay} ms (start)")):
        one, four, seq = prov[f"{start} concurrent 1"], prov[f"{start} concurrent 4"], prov[f"{start} sequential 4"]
        lines.append(f"  {label:<28} {one:>6.0f}ms {four:>11.0f}ms {seq:>11.0f}ms {four / one:>10.2f} {seq / one:>9.2f}"
                     f"  (target 4 <= 1.5 x 1: {'met' if four <= 1.5 * one else 'MISSED'})")
    lines.append(f"total bench time {results['total_s']:.0f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the scale benchmark; print the table and ratios; return 0 (1 when the run itself failed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.k8s_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 nodes, 10 models, 200 instances")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--instances", type=int, default=2000, help="model instances (pods) in the large cluster")
    parser.add_argument("--small-nodes", type=int, default=10, help="nodes of the small cluster lookups are compared with")
    parser.add_argument("--zones", type=int, default=10, help="client zones in the ALTO map and the requests")
    parser.add_argument("--lookups", type=int, default=400, help="timed lookups per cluster size")
    parser.add_argument("--solvers", type=lambda s: s.split(","), default=["highs", "highs", "ipopt"],
                        help="back-end Mode 2 cycles to run, one per solver named, comma separated (default "
                             "highs,highs,ipopt: converging from the random start, then steady, then the "
                             "thesis's solver)")
    parser.add_argument("--time-limit", type=float, default=30.0, help="solver time limit, seconds")
    parser.add_argument("--repeats", type=int, default=3, help="provisioning latency repetitions")
    parser.add_argument("--start-delay", type=int, default=2000,
                        help="ms KWOK waits before a pod on the delayed nodes is Ready (container start stand-in)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the control plane's and the run's files")
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.models, args.instances, args.lookups, args.repeats = 100, 10, 200, 200, 2
    if not 1 <= args.small_nodes <= args.nodes - args.repeats or args.models < 4 or args.instances < args.models:
        parser.error("need 1 <= --small-nodes <= --nodes - --repeats, --models >= 4, --instances >= --models")
    if args.repeats < 1 or args.start_delay < 0:
        parser.error("need --repeats >= 1 and --start-delay >= 0")
    try:
        results = run(args)
    except Exception as exc:        # a bench run that breaks says why in one line
        print(f"k8s_scale: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for line in report(results):
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
