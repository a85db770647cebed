"""What a CPU-limited node adds to a request beside its inference: the quota on the whole server
(as before) against the quota on its inference threads only (`--inference_cgroup`, the local
cluster's default on cgroup v1) and no quota, at the same utilisation.

    sudo .venv/bin/python -m bench.node_overhead [--model digits_cnn] [--quota 0.1] [--util 0.7] [--requests 600]

One real model server per mode, started as the profile starts it (cluster/profile.py
`profiled_server`), one inference at a time as the local cluster runs it on a small node. Its
back-to-back service time is measured first (8 clients for 3 s: seconds per answer), then
`--requests` Poisson arrivals at `--util` of that rate from an open-loop client. For each answer,
the client's time minus the server's `app` time (Server-Timing) is the overhead: what the request
spent in the server's HTTP threads and in the kernel outside the timed inference. Prints per mode
the service time, the overhead's p50/p95/p99, the mean latency, and the overhead's p95 against no
quota's.
Why: with the whole server under a tenth of a core, the threads that accept and answer wait for
the next CFS period whenever the inference has spent this one's quota (docs/cluster.md).
"""
from __future__ import annotations

import argparse
import http.client
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cluster.limits import CgroupLimits, NodeLimits, detect_layout
from cluster.port import ClusterError
from cluster.profile import REPO_ROOT, _example, profiled_server
from testbed.clients import parse_server_timing

MODES = ("process", "inference", "none")


class _Client:
    """One kept-alive connection per thread; a call returns (seconds waited, server's app seconds)."""

    def __init__(self, port: int, model: str, body: bytes) -> None:
        self.port, self.path, self.body = port, f"/v1/models/{model}:predict", body
        self.local = threading.local()

    def _once(self) -> tuple[float, float]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            conn.connect()
        started = time.perf_counter()
        conn.request("POST", self.path, body=self.body, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        waited = time.perf_counter() - started
        if answer.status != 200:
            raise ClusterError(f"predict answered {answer.status}")
        app = parse_server_timing(answer.getheader("Server-Timing")).get("app")
        if app is None:
            raise ClusterError("the answer has no Server-Timing app figure")
        return waited, app

    def call(self) -> tuple[float, float]:
        try:
            return self._once()
        except (OSError, http.client.HTTPException):
            self.local.conn = None            # the server closed an idle kept-alive connection
            return self._once()


def run_mode(mode: str, model: str, quota: float, util: float, requests: int, seed: int) -> dict:
    layout, why = detect_layout()
    if layout is None:
        raise ClusterError(f"no writable cgroup tree here ({why})")
    if mode == "inference" and layout.version != 1:
        raise ClusterError("the quota on inference alone needs cgroup v1 (docs/cluster.md)")
    limits = CgroupLimits(layout, "bench-node-overhead", scope="inference" if mode == "inference" else "process")
    group = f"overhead-{mode}"
    log_path = REPO_ROOT / "build" / "bench-node-overhead.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    models_dir = REPO_ROOT / "build" / "models"
    # One inference at a time, as the local cluster runs a server on a node of less than a core.
    with profiled_server(model, models_dir / model, limits=limits, group=group, log_path=log_path,
                         flags=("--max_concurrent_inferences", "1")) as (_, port):
        limits.apply(group, NodeLimits(cpu=None if mode == "none" else quota, memory=None))
        client = _Client(port, model, _example(model))
        for _ in range(10):
            client.call()
        deadline = time.perf_counter() + 3.0

        def saturate() -> int:
            n = 0
            while time.perf_counter() < deadline:
                client.call()
                n += 1
            return n
        began = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            answers = sum(pool.map(lambda _: saturate(), range(8)))
        service = (time.perf_counter() - began) / answers
        rng = random.Random(seed)
        results: list[tuple[float, float]] = []
        lock = threading.Lock()

        def one() -> None:
            got = client.call()
            with lock:
                results.append(got)
        time.sleep(1.0)                         # the queue of the saturating run drains
        with ThreadPoolExecutor(64) as pool:
            at = time.perf_counter()
            for _ in range(requests):
                at += rng.expovariate(util / service)
                time.sleep(max(0.0, at - time.perf_counter()))
                pool.submit(one)
    extra = [1000 * (waited - app) for waited, app in results]
    latency = [1000 * waited for waited, _ in results]
    p50, p95, p99 = np.percentile(extra, [50, 95, 99])
    return {"mode": mode, "service_ms": 1000 * service, "n": len(results), "p50": p50, "p95": p95, "p99": p99,
            "mean_ms": sum(latency) / len(latency)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.node_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--quota", type=float, default=0.1, help="the node's cores (default 0.1)")
    parser.add_argument("--util", type=float, default=0.7, help="utilisation of the measured service rate")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 < args.quota <= 64 or not 0 < args.util < 1 or args.requests < 10:
        print("--quota must be in (0, 64], --util in (0, 1), --requests >= 10", file=sys.stderr)
        return 2
    try:
        rows = [run_mode(mode, args.model, args.quota, args.util, args.requests, args.seed) for mode in MODES]
    except ClusterError as exc:
        print(f"bench.node_overhead: {exc}", file=sys.stderr)
        return 1
    base = rows[-1]
    print(f"{args.model}, quota {args.quota} core, {args.util:.0%} of each mode's measured service rate, "
          f"{args.requests} Poisson arrivals")
    print(f"{'quota on':<10} {'service ms':>10} {'overhead p50':>12} {'p95':>7} {'p99':>7} {'mean latency':>12} "
          f"{'p95 / none':>10}")
    for r in rows:
        print(f"{r['mode']:<10} {r['service_ms']:>10.1f} {r['p50']:>12.1f} {r['p95']:>7.1f} {r['p99']:>7.1f} "
              f"{r['mean_ms']:>12.1f} {r['p95'] / base['p95']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
