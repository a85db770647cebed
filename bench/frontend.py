"""Front-end benchmark: lookup latency and throughput under gunicorn, and the proxy's overhead.

`python -m bench.frontend [--quick] [--duration S] [--connections C] [--workers W] [--threads T]`

What it measures, side by side in one run (gunicorn on loopback, load from a separate process:
`wrk` when installed, otherwise a Python keep-alive load generator):

- GET /services/<model> (one-model lookup) and GET /services (all-models list) with 1, 3, 10 and
  100 deployed models. 1 and 3 run on the real local cluster (real model-server processes); all
  four also run on a synthetic cluster adapter (`SyntheticCluster` below) that reports N ready
  models on 5 nodes (2 instances each) without starting processes: a lookup never contacts a
  model server, so this measures the front-end's lookup path against a cluster state of that
  size. Each is measured closed-loop with 1 connection (latency: the thesis measured single
  requests) and with C connections (throughput, and latency under that load).
- The thesis design read the cluster on every request: the time one read of nodes + deployments
  takes on the local cluster is printed next to the cached lookup.
- The proxy: POST :predict through the front-end vs straight to the model server (added ms at
  p50 with 1 connection, throughput ratio with C connections).

Figures to beat: thesis Tables 6.6/6.7 (213-435 ms all models, 104-155 ms one model); issue 4's
targets (one-model p50 <= 2 ms and >= 2,000 req/s; all-models with 100 models p50 <= 5 ms; proxy
adds <= 2 ms at p50 and keeps >= 60 % of direct throughput).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.port import Cluster, ClusterError, Deployment, Node

__all__ = ["main", "SyntheticCluster", "write_synthetic_catalog"]

REPO_ROOT = Path(__file__).resolve().parent.parent
THESIS_ALL = {1: 212.954, 2: 332.679, 3: 434.875}       # ms, Table 6.6
THESIS_ONE = {1: 103.695, 2: 112.181, 3: 154.776}       # ms, Table 6.7
TARGETS = {"one_p50_ms": 2.0, "one_rps": 2000.0, "all100_p50_ms": 5.0, "proxy_added_ms": 2.0,
           "proxy_ratio": 0.60}


# ---- the synthetic cluster: N ready models, no processes -------------------------------------------

def _synthetic_name(index: int) -> str:
    return f"bench-model-{index:03d}"


def write_synthetic_catalog(path: Path, models: int) -> None:
    """Write a catalog of `models` small models named bench-model-000..."""
    import yaml
    entries = [{"name": _synthetic_name(i), "image": "tensorflow/serving:2.14.1", "port": 9000 + i,
                "model_file": "half_plus_two", "memory": 1000, "cpu": 0.01,
                "exec_time": {"small": 0.004, "large": 0.002}} for i in range(models)]
    path.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))


class SyntheticCluster(Cluster):
    """A read-only cluster state of `models` ready models on `nodes` nodes (`replicas` each)."""

    def __init__(self, *, models: int, nodes: int = 5, replicas: int = 2, prefix: str = "127.250.250"):
        self._nodes = [Node(name=f"node-{n}", address=f"{prefix}.{n + 2}", ready=True, memory_total=10_000_000,
                            memory_used=models * replicas * 1000 // nodes, cpu_capacity=4.0,
                            cpu_usage=round(0.1 + 0.3 * n, 2), labels={"node-class": "small"})
                       for n in range(nodes)]
        created = time.time()
        self._deployments = [
            Deployment(model=_synthetic_name(i), node=f"node-{(i + r) % nodes}",
                       endpoint=f"{prefix}.{(i + r) % nodes + 2}:{9000 + i}", ready=True, created=created)
            for i in range(models) for r in range(min(replicas, nodes))]

    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def deployments(self) -> list[Deployment]:
        return list(self._deployments)

    def deploy(self, model: str, node: str, *, wait: bool = True, timeout: float = 60.0) -> Deployment:
        raise ClusterError("the synthetic benchmark cluster is read-only")

    def remove(self, model: str, node: str) -> None:
        raise ClusterError("the synthetic benchmark cluster is read-only")


# ---- load generation ---------------------------------------------------------------------------------

@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


_WRK_SCRIPT = r"""
local method, body = os.getenv("BENCH_METHOD") or "GET", os.getenv("BENCH_BODY")
wrk.method = method
if body and #body > 0 then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pause > 0 then
  delay = function() return pause end
end
done = function(summary, latency, requests)
  io.write(string.format(
    "WRKJSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, \"errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout))
end
"""


def _run_wrk(url: str, *, method: str, body: str | None, connections: int, seconds: float,
             delay_ms: float = 0.0) -> LoadResult:
    """Closed loop with `wrk`; `delay_ms` pauses each connection between requests (to pace a rate)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT)
    try:
        env = {**os.environ, "BENCH_METHOD": method, "BENCH_BODY": body or "", "BENCH_DELAY_MS": str(int(delay_ms))}
        done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                               "-s", script.name, url], capture_output=True, text=True, env=env,
                              timeout=seconds + 60)
    finally:
        os.unlink(script.name)
    match = re.search(r"WRKJSON (\{.*\})", done.stdout)
    if not match:
        raise RuntimeError(f"wrk failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    data = json.loads(match.group(1))
    return LoadResult(requests=data["requests"], seconds=data["duration_us"] / 1e6, p50_ms=data["p50_us"] / 1000,
                      p99_ms=data["p99_us"] / 1000, errors=data["errors"])


def _py_worker(url: str, method: str, body: str | None, connections: int, seconds: float, queue) -> None:
    """Closed-loop keep-alive clients in threads; put (latencies, errors, elapsed) on `queue`."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = body.encode() if body else None
    headers = {"Content-Type": "application/json"} if payload else {}
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        mine: list[float] = []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                conn.request(method, path, body=payload, headers=headers)
                answer = conn.getresponse()
                answer.read()
                if answer.status >= 400:
                    errors[0] += 1
            except (OSError, http.client.HTTPException):
                errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                continue
            mine.append(time.perf_counter() - started)
        conn.close()
        with lock:
            latencies.extend(mine)

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put((latencies, errors[0], time.perf_counter() - began))


def _run_python(url: str, *, method: str, body: str | None, connections: int, seconds: float) -> LoadResult:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_py_worker, args=(url, method, body, connections, seconds, queue))
    proc.start()
    latencies, errors, elapsed = queue.get(timeout=seconds + 60)
    proc.join(10)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")
    return LoadResult(requests=len(latencies), seconds=elapsed, p50_ms=pick(0.50), p99_ms=pick(0.99), errors=errors)


def load(url: str, *, tool: str, method: str = "GET", body: str | None = None, connections: int,
         seconds: float) -> LoadResult:
    """Drive `url` closed-loop with `connections` keep-alive connections for `seconds`."""
    runner = _run_wrk if tool == "wrk" else _run_python
    return runner(url, method=method, body=body, connections=connections, seconds=seconds)


# ---- CPU accounting: busy machines distort wall-clock figures, CPU per request much less -----------------

def _procs_of(pid: int) -> list:
    import psutil
    root = psutil.Process(pid)
    return [root] + root.children(recursive=True)


def _cpu_seconds(procs: list) -> float:
    import psutil
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _server_procs(address: str) -> list:
    """Return the model-server processes bound to `address` (for their CPU per request)."""
    import psutil
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "modelserver" in cmdline and address in cmdline:
            found.append(proc)
    return found


def _machine_load() -> float:
    return os.getloadavg()[0]


# ---- scenarios -----------------------------------------------------------------------------------------

def _free_prefix() -> str:
    return f"127.{random.randint(2, 254)}.{random.randint(2, 254)}"


def _real_cluster(tmp: Path, models: list[str]):
    """Start a local cluster on unique loopback addresses running `models` (one instance each)."""
    import yaml
    from cluster.local import LocalCluster
    prefix = _free_prefix()
    nodes = [{"name": f"node-{c}", "address": f"{prefix}.{i + 2}", "memory": 400000, "cpu": 2.0, "class": "small"}
             for i, c in enumerate("ab")]
    config = tmp / f"cluster-{len(models)}.yaml"
    config.write_text(yaml.safe_dump({"nodes": nodes}))
    cluster = LocalCluster(config, state_path=tmp / f"cluster-{len(models)}.db", stop_grace=2.0)
    for index, model in enumerate(models):
        cluster.deploy(model, nodes[index % 2]["name"])
    settings = {"config_path": str(config), "state_path": str(cluster.state_path)}
    return cluster, settings


def _cluster_read_ms(cluster, repeats: int = 15) -> float:
    """Median time of one nodes() + deployments() read: what the thesis paid on every request."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        cluster.nodes()
        cluster.deployments()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _measure_lookups(server, model: str, args, tool: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    procs = _procs_of(server.proc.pid)
    for key, path in (("one", f"/services/{model}"), ("all", "/services")):
        single = load(server.url + path, tool=tool, connections=1, seconds=args.duration)
        before = _cpu_seconds(procs)
        loaded = load(server.url + path, tool=tool, connections=args.connections, seconds=args.duration)
        cpu_us = (_cpu_seconds(procs) - before) / max(1, loaded.requests) * 1e6
        out[key] = {"p50_ms": single.p50_ms, "p99_ms": single.p99_ms, "rps": loaded.rps,
                    "loaded_p50_ms": loaded.p50_ms, "loaded_p99_ms": loaded.p99_ms, "cpu_us": cpu_us,
                    "errors": single.errors + loaded.errors}
    out["load_average"] = _machine_load()
    return out


def _serve(settings: dict, args, tmp: Path, name: str):
    from tests.frontend_server import GunicornServer
    server = GunicornServer({**settings, "database": str(tmp / f"{name}.db"), "log_level": "WARNING"},
                            workers=args.workers, threads=args.threads, log_path=tmp / f"{name}.log")
    return server.start()


def run(args) -> dict[str, Any]:
    """Run every scenario and return the figures."""
    tool = args.tool
    results: dict[str, Any] = {"tool": tool, "workers": args.workers, "threads": args.threads,
                               "connections": args.connections, "duration": args.duration,
                               "cores": os.cpu_count(), "real": {}, "synthetic": {}}
    real_models = ["half_plus_two", "half_plus_three", "digits_logreg"]
    with tempfile.TemporaryDirectory(prefix="bench-frontend-") as tmpdir:
        tmp = Path(tmpdir)
        for count in args.real_counts:
            cluster, cluster_settings = _real_cluster(tmp, real_models[:count])
            try:
                read_ms = _cluster_read_ms(cluster)
                server = _serve({"cluster": "local", "cluster_settings": cluster_settings}, args, tmp, f"real-{count}")
                try:
                    figures = _measure_lookups(server, "half_plus_two", args, tool)
                    figures["cluster_read_ms"] = read_ms
                    if count == 1:
                        results["proxy"] = _measure_proxy(server, cluster, args, tool)
                finally:
                    server.cleanup()
            finally:
                cluster.reset()
            results["real"][count] = figures
            _progress(f"real cluster, {count} model(s)", figures)
        for count in args.synthetic_counts:
            catalog = tmp / f"catalog-{count}.yaml"
            write_synthetic_catalog(catalog, count)
            settings = {"cluster": "bench.frontend:SyntheticCluster", "cluster_settings": {"models": count},
                        "catalog": str(catalog)}
            server = _serve(settings, args, tmp, f"synthetic-{count}")
            try:
                figures = _measure_lookups(server, _synthetic_name(count // 2), args, tool)
            finally:
                server.cleanup()
            results["synthetic"][count] = figures
            _progress(f"synthetic cluster, {count} model(s)", figures)
    return results


def _measure_proxy(server, cluster, args, tool: str) -> dict[str, Any]:
    endpoint = next(d.endpoint for d in cluster.deployments() if d.model == "half_plus_two")
    body = json.dumps({"instances": [1.0, 2.0, 5.0]})
    direct_url = f"http://{endpoint}/v1/models/half_plus_two:predict"
    proxy_url = f"{server.url}/services/half_plus_two/v1/models/half_plus_two:predict"
    frontend_procs = _procs_of(server.proc.pid)
    model_procs = _server_procs(endpoint.rsplit(":", 1)[0])
    out: dict[str, Any] = {}
    for key, target in (("direct", direct_url), ("proxied", proxy_url)):
        single = load(target, tool=tool, method="POST", body=body, connections=1, seconds=args.duration)
        front0, model0 = _cpu_seconds(frontend_procs), _cpu_seconds(model_procs)
        loaded = load(target, tool=tool, method="POST", body=body, connections=args.connections,
                      seconds=args.duration)
        n = max(1, loaded.requests)
        out[key] = {"p50_ms": single.p50_ms, "p99_ms": single.p99_ms, "rps": loaded.rps,
                    "loaded_p50_ms": loaded.p50_ms, "errors": single.errors + loaded.errors,
                    "frontend_cpu_us": (_cpu_seconds(frontend_procs) - front0) / n * 1e6,
                    "modelserver_cpu_us": (_cpu_seconds(model_procs) - model0) / n * 1e6}
    out["added_p50_ms"] = out["proxied"]["p50_ms"] - out["direct"]["p50_ms"]
    out["throughput_ratio"] = out["proxied"]["rps"] / out["direct"]["rps"] if out["direct"]["rps"] else 0.0
    d, p = out["direct"], out["proxied"]
    # Both share this machine's cores: what would the ratio be if the CPU were the only limit?
    direct_cpu = d["modelserver_cpu_us"]
    proxied_cpu = p["modelserver_cpu_us"] + p["frontend_cpu_us"]
    out["cpu_ratio"] = direct_cpu / proxied_cpu if proxied_cpu else 0.0
    out["load_average"] = _machine_load()
    _progress("proxy vs direct", out)
    return out


def _progress(what: str, figures: dict) -> None:
    print(f"  done: {what}", file=sys.stderr, flush=True)


# ---- report --------------------------------------------------------------------------------------------

def report(results: dict[str, Any]) -> str:
    """Render the figures as Markdown tables with the thesis's numbers and the ratios."""
    lines = [f"load: {results['tool']}, 1 connection for latency and {results['connections']} for throughput, "
             f"{results['duration']:g} s per run; gunicorn {results['workers']} workers x {results['threads']} "
             f"threads on {results['cores']} cores", ""]
    lines += ["| cluster | models | one-model p50 / p99 ms | one-model req/s | thesis one-model ms (T6.7) | "
              "thesis / ours p50 | all-models p50 / p99 ms | all-models req/s | thesis all ms (T6.6) | "
              "thesis / ours p50 | one cluster read ms |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind in ("real", "synthetic"):
        for count, f in sorted(results[kind].items(), key=lambda kv: int(kv[0])):
            count = int(count)
            one, every = f["one"], f["all"]
            t_one, t_all = THESIS_ONE.get(count), THESIS_ALL.get(count)
            ratio_one = f"{t_one / one['p50_ms']:.0f}x" if t_one else "-"
            ratio_all = f"{t_all / every['p50_ms']:.0f}x" if t_all else "-"
            read = f"{f['cluster_read_ms']:.2f}" if "cluster_read_ms" in f else "-"
            lines.append(f"| {kind} | {count} | {one['p50_ms']:.2f} / {one['p99_ms']:.2f} | {one['rps']:.0f} | "
                         f"{t_one or '-'} | {ratio_one} | {every['p50_ms']:.2f} / {every['p99_ms']:.2f} | "
                         f"{every['rps']:.0f} | {t_all or '-'} | {ratio_all} | {read} |")
    lines += ["", "Under load (C connections): p50 / p99 ms, and the front-end's CPU per request (all gunicorn "
                  "processes; req/s on N idle cores would be about N / CPU per request)", "",
              "| cluster | models | one-model | one-model CPU us/req | all-models | all-models CPU us/req | errors | load avg |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind in ("real", "synthetic"):
        for count, f in sorted(results[kind].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {kind} | {count} | {f['one']['loaded_p50_ms']:.2f} / {f['one']['loaded_p99_ms']:.2f} | "
                         f"{f['one']['cpu_us']:.0f} | "
                         f"{f['all']['loaded_p50_ms']:.2f} / {f['all']['loaded_p99_ms']:.2f} | {f['all']['cpu_us']:.0f} | "
                         f"{f['one']['errors'] + f['all']['errors']} | {f['load_average']:.1f} |")
    proxy = results.get("proxy")
    if proxy:
        d, p = proxy["direct"], proxy["proxied"]
        lines += ["", "| POST :predict (half_plus_two) | p50 ms | p99 ms | req/s | front-end CPU us/req | "
                      "model-server CPU us/req | errors |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
                  f"| direct to the model server | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | {d['rps']:.0f} | - | "
                  f"{d['modelserver_cpu_us']:.0f} | {d['errors']} |",
                  f"| through the front-end | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['rps']:.0f} | "
                  f"{p['frontend_cpu_us']:.0f} | {p['modelserver_cpu_us']:.0f} | {p['errors']} |",
                  "", f"proxy adds {proxy['added_p50_ms']:.2f} ms at p50 and keeps "
                      f"{proxy['throughput_ratio'] * 100:.0f} % of direct throughput (CPU-bound estimate: "
                      f"{proxy['cpu_ratio'] * 100:.0f} %; load average {proxy['load_average']:.1f})"]
    lines += ["", "targets (issue 4): " + _verdicts(results)]
    return "\n".join(lines)


def _verdicts(results: dict[str, Any]) -> str:
    out = []
    real1 = results["real"].get(1) or results["real"].get("1")
    if real1:
        out.append(f"one-model p50 {real1['one']['p50_ms']:.2f} ms (<= {TARGETS['one_p50_ms']:g}: "
                   f"{'met' if real1['one']['p50_ms'] <= TARGETS['one_p50_ms'] else 'MISSED'})")
        out.append(f"one-model {real1['one']['rps']:.0f} req/s (>= {TARGETS['one_rps']:.0f}: "
                   f"{'met' if real1['one']['rps'] >= TARGETS['one_rps'] else 'MISSED'})")
    syn100 = results["synthetic"].get(100) or results["synthetic"].get("100")
    if syn100:
        out.append(f"all-models with 100 p50 {syn100['all']['p50_ms']:.2f} ms (<= {TARGETS['all100_p50_ms']:g}: "
                   f"{'met' if syn100['all']['p50_ms'] <= TARGETS['all100_p50_ms'] else 'MISSED'})")
    proxy = results.get("proxy")
    if proxy:
        out.append(f"proxy +{proxy['added_p50_ms']:.2f} ms (<= {TARGETS['proxy_added_ms']:g}: "
                   f"{'met' if proxy['added_p50_ms'] <= TARGETS['proxy_added_ms'] else 'MISSED'})")
        out.append(f"proxy {proxy['throughput_ratio'] * 100:.0f} % of direct (>= {TARGETS['proxy_ratio'] * 100:.0f} %: "
                   f"{'met' if proxy['throughput_ratio'] >= TARGETS['proxy_ratio'] else 'MISSED'})")
    return "; ".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the front-end benchmark and print Markdown tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.frontend", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s runs, fewer scenarios (smoke check)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run (default 3)")
    parser.add_argument("--connections", type=int, default=16, help="connections for throughput (default 16)")
    parser.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 1), help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    parser.add_argument("--tool", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python",
                        help="load generator (default wrk when installed)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections < 1 or args.workers < 1 or args.threads < 1:
        parser.error("--duration, --connections, --workers and --threads must be positive")
    args.real_counts = [1, 3]
    args.synthetic_counts = [1, 3, 10, 100]
    if args.quick:
        args.duration = 1.0
        args.synthetic_counts = [100]
    if args.tool == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk), use --tool python")
    models_dir = REPO_ROOT / "build" / "models"
    if not (models_dir / "half_plus_two").is_dir():
        print("building the models (build/models) first", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "modelserver.build_models", "--out", str(models_dir)],
                       cwd=REPO_ROOT, check=True)
    started = time.monotonic()
    try:
        results = run(args)
    except (RuntimeError, ClusterError, OSError) as exc:
        print(f"bench.frontend: {exc}", file=sys.stderr)
        return 1
    print(report(results))
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
