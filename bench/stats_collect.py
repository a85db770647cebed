"""Statistics collection benchmark: what one back-end collection costs the front-end.

`python -m bench.stats_collect [--quick] [--rate R] [--rows-rate N] [--window S] [--phase S]`

A gunicorn front-end (default worker class and 2 workers) on a synthetic cluster (one ready model,
no model-server processes: lookups never contact one) whose database already holds `window`
seconds x `rows-rate` req/s of request rows (600 s x 800 req/s = 480,000 by default; written
straight into the store, rows and aggregates, as the workers would have). Clients in two
processes ask GET /services/<model> at `rate` req/s in total (paced, keep-alive) for the whole run,
and the run goes through these phases:

- idle: no collection;
- summary: back-end collections of the window with GET /stats/summary, one every `every` seconds
  (the back-end's is 30 s): lookups that overlap a collection are compared with those that do not;
- raw: one collection of the window row by row (GET /stats/requests, paged as the back-end did
  before /stats/summary existed);
- after: no collection again (does the raw pull leave the workers slower or bigger?).

Printed: the time of one collection each way (and the ratio), the lookups' p50/p99/max per phase
(service time: from sending to the end of the answer), the rate the clients reached, and the
workers' RSS before and after the raw pull. Targets (issue 11): a summary collection < 100 ms and
the lookup p99 not rising while it runs.
"""
from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

MODEL = "bench-model-000"
TOKEN = "bench-stats-token-0123456789"


def _prefill(path: Path, *, seconds: float, rate: float, now: float) -> int:
    """Write seconds x rate request rows ending at `now` (rows and aggregates, batches of 10,000)."""
    from frontend.store import RequestRecord, StatsStore
    store = StatsStore(path)
    rng = random.Random(11)
    total = int(seconds * rate)
    models = [f"bench-model-{i:03d}" for i in range(5)]
    batch = []
    for i in range(total):
        kind = "proxy" if rng.random() < 0.7 else "lookup"
        node = f"node-{rng.randrange(5)}"
        batch.append((RequestRecord(
            time=now - seconds + i / rate, model=rng.choice(models), kind=kind, zone=f"z{rng.randrange(4)}",
            latency=rng.uniform(0.001, 0.05), node=node, endpoint="127.250.250.2:9000",
            status=200 if rng.random() < 0.98 else 503,
            duration=rng.lognormvariate(-5.5, 0.4) if kind == "proxy" else rng.uniform(1e-4, 3e-4)), []))
        if len(batch) == 10_000:
            store._write_batch(batch)
            batch = []
    if batch:
        store._write_batch(batch)
    store.close()
    return total


def _client_proc(host: str, port: int, threads: int, rate: float, stop, queue) -> None:
    """Paced keep-alive clients; put a list of (start monotonic, service seconds, ok) on `queue`."""
    samples: list[tuple[float, float, bool]] = []
    lock = threading.Lock()
    gap = threads / rate

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine = []
        next_at = time.monotonic() + random.random() * gap
        while not stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at + gap, time.monotonic() - gap)     # catch up, but no burst
            started = time.monotonic()
            try:
                conn.request("GET", f"/services/{MODEL}")
                answer = conn.getresponse()
                answer.read()
                mine.append((started, time.monotonic() - started, answer.status == 200))
            except (OSError, http.client.HTTPException):
                mine.append((started, time.monotonic() - started, False))
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.close()
        with lock:
            samples.extend(mine)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put(samples)


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _workers(pid: int) -> list[int]:
    import psutil
    return [p.pid for p in psutil.Process(pid).children()]


def _stats(samples: list[tuple[float, float, bool]], start: float, end: float,
           during: list[tuple[float, float]] | None = None, overlapping: bool = True) -> dict[str, Any]:
    """Latency figures of the lookups started in [start, end); with `during`, only those that overlap
    one of those intervals (overlapping=True) or none of them (False)."""
    def keep(t: float, s: float) -> bool:
        if during is None:
            return True
        hit = any(t < b and t + s > a for a, b in during)
        return hit == overlapping
    picked = [(s, ok) for t, s, ok in samples if start <= t < end and keep(t, s)]
    inside = sorted(s for s, _ in picked)
    n = len(inside)
    pick = lambda q: inside[min(n - 1, int(q * n))] * 1000 if n else float("nan")
    rate = sum(1 for t, _, _ in samples if start <= t < end) / (end - start) if end > start else 0.0
    return {"n": n, "rate": rate, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": inside[-1] * 1000 if n else float("nan"), "errors": sum(1 for _, ok in picked if not ok)}


def run(args) -> dict[str, Any]:
    from backend.collect import FrontendClient
    from bench.frontend import write_synthetic_catalog
    from tests.frontend_server import GunicornServer

    results: dict[str, Any] = {"rate": args.rate, "rows_rate": args.rows_rate, "window": args.window,
                               "cores": os.cpu_count(), "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmpdir:
        tmp = Path(tmpdir)
        db = tmp / "frontend.db"
        started = time.perf_counter()
        rows = _prefill(db, seconds=args.window, rate=args.rows_rate, now=time.time())
        results["prefill"] = {"rows": rows, "seconds": time.perf_counter() - started,
                              "db_mb": db.stat().st_size / 1e6}
        print(f"prefilled {rows:,} rows in {results['prefill']['seconds']:.1f} s", flush=True)
        catalog = tmp / "catalog.yaml"
        write_synthetic_catalog(catalog, 5)
        settings = {"cluster": "bench.frontend:SyntheticCluster", "cluster_settings": {"models": 5},
                    "catalog": str(catalog), "database": str(db), "token": TOKEN, "log_level": "WARNING"}
        server = GunicornServer(settings, workers=args.workers, log_path=tmp / "gunicorn.log").start()
        client = FrontendClient(server.url, token=TOKEN, timeout=120)
        ctx = multiprocessing.get_context("spawn")
        stop, queue = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_client_proc, args=(server.host, server.port, args.threads,
                                                        args.rate / args.procs, stop, queue))
                 for _ in range(args.procs)]
        try:
            client.summary(60)                        # warm both sides up
            for p in procs:
                p.start()
            time.sleep(2.0)
            workers = _workers(server.proc.pid)
            phases: dict[str, tuple[float, float]] = {}

            t = time.monotonic()
            time.sleep(args.phase)
            phases["idle"] = (t, time.monotonic())

            summary_times, intervals = [], []
            t = time.monotonic()
            while time.monotonic() - t < args.phase:
                a = time.monotonic()
                doc = client.summary(args.window)
                b = time.monotonic()
                summary_times.append(b - a)
                intervals.append((a, b))
                time.sleep(max(0.0, args.every - (time.monotonic() - a)))
            phases["summary"] = (t, time.monotonic())
            results["summary_groups"] = len(doc.groups)
            results["summary_requests"] = doc.requests

            time.sleep(2.0)
            rss_before = _rss_mb(workers)
            t = time.monotonic()
            s = time.perf_counter()
            raw_rows, truncated, _ = client.requests_since(time.time() - args.window)
            raw_seconds = time.perf_counter() - s
            phases["raw"] = (t, time.monotonic())
            rss_after = _rss_mb(workers)
            results["raw_rows"] = len(raw_rows)
            del raw_rows

            time.sleep(2.0)
            t = time.monotonic()
            time.sleep(args.phase)
            phases["after"] = (t, time.monotonic())
            stop.set()
            samples = []
            for _ in procs:
                samples.extend(queue.get(timeout=120))
            for p in procs:
                p.join(30)
        finally:
            stop.set()
            client.close()
            server.cleanup()
        results["summary_ms"] = {"median": statistics.median(summary_times) * 1000,
                                 "max": max(summary_times) * 1000, "n": len(summary_times)}
        results["raw_ms"] = raw_seconds * 1000
        results["ratio"] = raw_seconds / statistics.median(summary_times)
        results["rss_mb"] = {"before_raw": rss_before, "after_raw": rss_after}
        results["load_average"] = os.getloadavg()[0]
        results["phases"] = {name: _stats(samples, a, b) for name, (a, b) in phases.items()}
        results["phases"]["summary_during"] = _stats(samples, *phases["summary"], intervals, True)
        results["phases"]["summary_between"] = _stats(samples, *phases["summary"], intervals, False)
    return results


def report(r: dict[str, Any]) -> str:
    lines = [f"\n## one collection of a {r['window']:g} s window ({r['summary_requests']:,} requests; "
             f"{r['prefill']['rows']:,} prefilled at {r['rows_rate']:g} req/s, database {r['prefill']['db_mb']:.0f} MB)\n",
             "| read | time of one collection | answer |", "|---|---:|---|",
             f"| GET /stats/summary | {r['summary_ms']['median']:.1f} ms median, {r['summary_ms']['max']:.1f} ms max "
             f"(n = {r['summary_ms']['n']}) | {r['summary_groups']} groups |",
             f"| GET /stats/requests (paged, 100,000 a page) | {r['raw_ms']:,.0f} ms | {r['raw_rows']:,} rows |",
             f"\nraw / summary: **{r['ratio']:,.0f}x**\n",
             f"## lookups (GET /services/<model>) at {r['rate']:g} req/s asked, {r['workers']} gunicorn workers, "
             f"{r['cores']} cores\n",
             "| phase | lookups | rate reached | p50 | p99 | max | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"idle": "no collection", "summary_during": "while a summary collection runs",
             "summary_between": "summary phase, between collections",
             "raw": "while the raw-rows collection runs", "after": "no collection, after the raw pull"}
    for key, label in names.items():
        p = r["phases"][key]
        lines.append(f"| {label} | {p['n']:,} | {p['rate']:.0f}/s | {p['p50_ms']:.2f} ms | {p['p99_ms']:.2f} ms | "
                     f"{p['max_ms']:.1f} ms | {p['errors']} |")
    lines.append("\n(rate reached: lookups started per second in that phase; latency: from sending the "
                 f"request to the end of the answer; load average {r['load_average']:.1f} at the end)")
    rss = r["rss_mb"]
    lines.append(f"\nworkers' RSS: {rss['before_raw']:.0f} MB before the raw pull, {rss['after_raw']:.0f} MB after")
    ok_time = r["summary_ms"]["median"] < 100
    ok_p99 = r["phases"]["summary_during"]["p99_ms"] <= max(2 * r["phases"]["idle"]["p99_ms"], r["phases"]["idle"]["p99_ms"] + 5)
    lines.append(f"\ntarget summary collection < 100 ms: {'met' if ok_time else 'MISSED'}; "
                 f"lookup p99 not rising during summary collections (within 2x or +5 ms of idle): "
                 f"{'met' if ok_p99 else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stats_collect", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 s of rows and 3 s phases")
    parser.add_argument("--rate", type=float, default=800.0, help="lookups per second asked (default 800)")
    parser.add_argument("--rows-rate", type=float, default=800.0, help="req/s the prefilled window holds")
    parser.add_argument("--window", type=float, default=600.0, help="seconds of rows (the back-end's window)")
    parser.add_argument("--phase", type=float, default=10.0, help="seconds of each measured phase")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between two summary collections")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--threads", type=int, default=8, help="client threads (connections) per process")
    args = parser.parse_args(argv)
    if args.quick:
        args.window, args.phase = 60.0, 3.0
    results = run(args)
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
