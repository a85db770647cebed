"""`python -m bench.soak`: the whole system (`make run`'s supervisor) under a steady proxied load.

Why: a front-end that is fast for ten seconds can still degrade over ten minutes (statistics
growing in memory, descriptors leaking, the back-end's collection every 30 s stalling requests).
This starts the real system with scripts/run_system.py (front-end under gunicorn, back-end every
30 s, local cluster on a private loopback block), measures the proxy's maximum throughput with
`wrk`, then holds 70% of it for `--minutes` minutes, one `wrk` run per minute, and reports per
minute: requests, errors (non-2xx and socket errors), p50 and p99; and the front-end's resident
memory (master + workers) and open descriptors at the start and the end.

Targets (bench/RESULTS.md): 0 errors; last minute's p50 and p99 within 20% of the first's;
front-end RSS and descriptors at the end within 10% of the start.

    python -m bench.soak [--minutes 10] [--share 0.7] [--quick]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

from bench.frontend import LoadResult, _run_wrk

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "half_plus_two"
BODY = '{"instances": [1.0, 2.0, 5.0]}'
CONNECTIONS = 32


def _private_cluster(tmp: Path) -> Path:
    """The shipped cluster description on a loopback block of its own (never clashes with make run)."""
    doc = yaml.safe_load((REPO_ROOT / "config" / "cluster.local.yaml").read_text())
    prefix = f"127.{random.randint(100, 200)}.{random.randint(2, 254)}"
    for index, node in enumerate(doc["nodes"]):
        node["address"] = f"{prefix}.{index + 1}"
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _predict_ok(url: str) -> bool:
    request = urllib.request.Request(f"{url}/services/{MODEL}/v1/models/{MODEL}:predict", data=BODY.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status == 200 and json.loads(answer.read())["predictions"] == [2.5, 3.0, 4.5]
    except (OSError, ValueError, KeyError):
        return False


def _frontend_procs(port: int) -> list[psutil.Process]:
    """The gunicorn master listening on `port` and its workers."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                master = psutil.Process(conn.pid)
                parent = master.parent()        # workers share the listening socket: climb to the master
                while parent is not None and "frontend:create_app" in " ".join(parent.cmdline()):
                    master, parent = parent, parent.parent()
                return [master] + master.children()
            except psutil.Error:
                return []
    return []


def _footprint(port: int) -> dict[str, float]:
    procs = _frontend_procs(port)
    rss = fds = 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
            fds += proc.num_fds()
        except psutil.Error:
            pass
    return {"rss_mb": rss / 2**20, "fds": fds, "processes": len(procs)}


def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "run_system.log", "wb")
    system = subprocess.Popen([sys.executable, str(REPO_ROOT / "scripts" / "run_system.py"), "--port", str(port),
                               "--state-dir", str(tmp / "state"), "--cluster-config", str(_private_cluster(tmp)),
                               "--every", str(args.every)],
                              cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _predict_ok(url):
            if system.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the system did not serve a prediction; see {tmp / 'run_system.log'}")
            time.sleep(0.5)
        print(f"system up on {url} (state {tmp / 'state'})", flush=True)
        predict_url = f"{url}/services/{MODEL}/v1/models/{MODEL}:predict"
        # Let the back-end see the load and settle its placement first (it adds instances, on
        # nodes with their own CPU quotas): the maximum and the soak then measure one system.
        warm = _run_wrk(predict_url, method="POST", body=BODY, connections=CONNECTIONS, seconds=args.warmup,
                        delay_ms=CONNECTIONS * 1000.0 / 400)
        print(f"warm-up {args.warmup:g} s at {warm.rps:.0f} req/s; instances: {_instances(tmp / 'state')}",
              flush=True)
        best = _run_wrk(f"{url}/services/{MODEL}/v1/models/{MODEL}:predict", method="POST", body=BODY,
                        connections=CONNECTIONS, seconds=args.calibrate)
        target = args.share * best.rps
        print(f"maximum {best.rps:.0f} req/s (p50 {best.p50_ms:.1f} ms, errors {best.errors}); "
              f"holding {target:.0f} req/s", flush=True)
        pause, paced = _calibrate(predict_url, target, args.calibrate)
        print(f"pause {pause:.0f} ms per connection -> {paced.rps:.0f} req/s", flush=True)
        start = _footprint(port)
        placed_start = _instances(tmp / "state")
        minutes = []
        for index in range(args.minutes):
            result = _run_wrk(predict_url, method="POST", body=BODY, connections=CONNECTIONS,
                              seconds=args.minute, delay_ms=pause)
            row = {"minute": index + 1, "requests": result.requests, "rps": result.rps, "errors": result.errors,
                   "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, **_footprint(port)}
            minutes.append(row)
            print(f"  minute {index + 1}: {result.rps:.0f} req/s, errors {result.errors}, p50 {result.p50_ms:.2f} ms,"
                  f" p99 {result.p99_ms:.2f} ms, front-end RSS {row['rss_mb']:.0f} MB, fds {row['fds']}", flush=True)
        end = _footprint(port)
        backend_runs = _backend_runs(tmp / "state")
        return {"max_rps": best.rps, "target_rps": target, "pause_ms": pause, "minutes": minutes,
                "instances_start": placed_start, "instances_end": _instances(tmp / "state"),
                "start": start, "end": end, "backend_runs": backend_runs, "every": args.every,
                "minute_seconds": args.minute}
    finally:
        from cluster.local_proc import stop_group
        stop_group(system, grace=30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _calibrate(url: str, target: float, seconds: float) -> tuple[float, LoadResult]:
    """Pick the per-connection pause that holds about `target` req/s (closed loop: rate = C / (pause + latency))."""
    pause = max(0.0, CONNECTIONS * 1000.0 / target - 2.0)
    result = _run_wrk(url, method="POST", body=BODY, connections=CONNECTIONS, seconds=seconds, delay_ms=pause)
    for _ in range(3):
        if abs(result.rps - target) <= 0.05 * target:
            break
        service_ms = max(0.0, CONNECTIONS * 1000.0 / max(result.rps, 1.0) - pause)
        pause = max(0.0, CONNECTIONS * 1000.0 / target - service_ms)
        result = _run_wrk(url, method="POST", body=BODY, connections=CONNECTIONS, seconds=seconds, delay_ms=pause)
    return pause, result


def _instances(state: Path) -> str:
    """The ready instances of the model, per node, from the local cluster's state file."""
    import sqlite3
    try:
        with sqlite3.connect(f"file:{state / 'cluster.db'}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT node FROM instances WHERE model = ?", (MODEL,)).fetchall()
    except sqlite3.Error as exc:
        return f"unknown ({exc})"
    return ", ".join(sorted(r[0] for r in rows)) or "none"


def _backend_runs(state: Path) -> int:
    try:
        return sum(1 for line in (state / "backend.log").read_text(errors="replace").splitlines() if '"actions"' in line)
    except OSError:
        return 0


def report(results: dict) -> str:
    rows = ["| minute | req/s | errors | p50 ms | p99 ms | front-end RSS MB | fds |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in results["minutes"]:
        rows.append(f"| {m['minute']} | {m['rps']:.0f} | {m['errors']} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                    f"{m['rss_mb']:.0f} | {m['fds']} |")
    first, last = results["minutes"][0], results["minutes"][-1]
    start, end = results["start"], results["end"]
    errors = sum(m["errors"] for m in results["minutes"])

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    verdicts = [
        f"- errors: {errors} of {sum(m['requests'] for m in results['minutes'])} (target 0): "
        f"{'met' if errors == 0 else 'MISSED'}",
        f"- last/first minute p50 {ratio(last['p50_ms'], first['p50_ms']):.2f}x, p99 "
        f"{ratio(last['p99_ms'], first['p99_ms']):.2f}x (target <= 1.20): "
        f"{'met' if ratio(last['p50_ms'], first['p50_ms']) <= 1.2 and ratio(last['p99_ms'], first['p99_ms']) <= 1.2 else 'MISSED'}",
        f"- front-end RSS {start['rss_mb']:.0f} -> {end['rss_mb']:.0f} MB ({ratio(end['rss_mb'], start['rss_mb']):.2f}x), "
        f"fds {start['fds']} -> {end['fds']} ({ratio(end['fds'], start['fds']):.2f}x) (target <= 1.10): "
        f"{'met' if ratio(end['rss_mb'], start['rss_mb']) <= 1.1 and ratio(end['fds'], start['fds']) <= 1.1 else 'MISSED'}",
    ]
    head = (f"maximum {results['max_rps']:.0f} req/s through the proxy ({CONNECTIONS} connections, wrk); held "
            f"{results['target_rps']:.0f} req/s ({results['pause_ms']:.0f} ms pause per connection), "
            f"{results['minute_seconds']:.0f} s per row; back-end every {results['every']:g} s; "
            f"{MODEL} instances: {results['instances_start']} at the start, {results['instances_end']} at the end")
    return "\n".join([head, "", *rows, "", *verdicts])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10, help="rows of load (default 10)")
    parser.add_argument("--minute", type=float, default=60.0, help="seconds per row (default 60)")
    parser.add_argument("--share", type=float, default=0.7, help="share of the measured maximum (default 0.7)")
    parser.add_argument("--calibrate", type=float, default=10.0, help="seconds per calibration run (default 10)")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between back-end runs (default 30)")
    parser.add_argument("--warmup", type=float, default=75.0,
                        help="seconds of load before measuring, so the back-end settles (default 75)")
    parser.add_argument("--quick", action="store_true", help="3 rows of 20 s (smoke check)")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.minute, args.calibrate, args.warmup = 3, 20.0, 5.0, 35.0
    if args.minutes < 1 or not 0 < args.share <= 1 or args.minute < 1 or args.calibrate < 1 or args.every <= 0 \
            or args.warmup < 1:
        parser.error("--minutes >= 1, 0 < --share <= 1, --minute >= 1, --calibrate >= 1, --every > 0, --warmup >= 1")
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk; `make bench` installs it)")
    try:
        results = run(args)
    except (RuntimeError, OSError) as exc:
        print(f"bench.soak: {exc}", file=sys.stderr)
        return 1
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
