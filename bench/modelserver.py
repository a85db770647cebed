"""Model-server throughput and latency beside a bare ONNX Runtime session, plus startup-to-ready time.

Measured as seed 001 does: after a warm-up, N request indices go into a queue and 1, 2, 4 or 8
threads pull from it until it is empty; each request is timed on its own. Reported: req/s
(N / wall time), mean and stdev of the response time. The same calls made on a bare ONNX Runtime
session in this process (same session options, same one-row input) give the floor, so the
serving overhead (HTTP, JSON, gunicorn) shows as a ratio. Requests use a new connection each, as the
seed's `requests.post` does, and, in a second column set, one keep-alive session per thread.

Startup-to-ready is the provisioning latency the project benchmarks: from `Popen` of
`python -m modelserver ...` to the first 200 on `GET /v1/models/NAME`.

    .venv/bin/python -m bench.modelserver [--quick] [--requests N] [--models a,b]
"""
from __future__ import annotations

import argparse
import json
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
CLIENTS = (1, 2, 4, 8)


@dataclass
class Run:
    """One measurement: wall time and per-request latencies (seconds)."""

    seconds: float
    latencies: list[float]
    errors: int = 0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    @property
    def mean(self) -> float:
        return statistics.mean(self.latencies)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.latencies) if len(self.latencies) > 1 else 0.0


def measure(make_call: Callable[[], Callable[[int], bool]], *, requests_total: int, threads: int) -> Run:
    """Run `requests_total` calls from a queue with `threads` threads; each thread gets its own call."""
    work: queue.Queue[int] = queue.Queue()
    for index in range(requests_total):
        work.put(index)
    latencies = [0.0] * requests_total
    errors = [0]
    lock = threading.Lock()

    def consume() -> None:
        call = make_call()
        while True:
            try:
                index = work.get_nowait()
            except queue.Empty:
                return
            started = time.perf_counter()
            ok = call(index)
            latencies[index] = time.perf_counter() - started
            if not ok:
                with lock:
                    errors[0] += 1

    workers = [threading.Thread(target=consume) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return Run(time.perf_counter() - started, latencies, errors[0])


# ---- the server process ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Started:
    proc: subprocess.Popen
    port: int
    seconds: float          # Popen -> first 200 on the status path


def start_server(models: Path, name: str, *, attempts: int = 3) -> Started:
    """Start a model server and poll its status path as the local cluster does.

    The port is picked free just before the start; should another process take it in between,
    the server exits at once and is started again on another port.
    """
    import tempfile

    import requests

    for _ in range(attempts):
        port = free_port()
        cmd = [sys.executable, "-m", "modelserver", "--host", "127.0.0.1", "--rest_api_port", str(port),
               "--model_name", name, "--model_base_path", str(models / name)]
        with tempfile.TemporaryFile("w+") as errors:
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors)
            url = f"http://127.0.0.1:{port}/v1/models/{name}"
            deadline = started + 60
            while time.perf_counter() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    if requests.get(url, timeout=2).status_code == 200:
                        return Started(proc, port, time.perf_counter() - started)
                except requests.ConnectionError:
                    pass
                time.sleep(0.005)
            stop(proc)
            errors.seek(0)
            log = errors.read()
        if "cannot bind" not in log:
            raise RuntimeError(f"model server {name} did not start (exit {proc.returncode}): {log.strip()[-500:]}")
    raise RuntimeError(f"model server {name}: no free port after {attempts} attempts")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server and wait; SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def memory_kb(proc: subprocess.Popen) -> tuple[int, int]:
    """Return (RSS, USS) in KB of the server's process tree (master + worker)."""
    import psutil

    root = psutil.Process(proc.pid)
    rss = uss = 0
    for p in [root, *root.children(recursive=True)]:
        info = p.memory_full_info()
        rss += info.rss
        uss += info.uss
    return rss // 1024, uss // 1024


# ---- the benchmark -------------------------------------------------------------------------------

def bare_session(models: Path, name: str):
    """Return an ONNX Runtime session with the server's options on the model's latest version."""
    from modelserver.repository import load_repository

    repository = load_repository(name=name, base_path=models / name)
    return repository.servables[repository.latest].session


def bench_model(models: Path, name: str, *, total: int, warmup: int, lines: list[str]) -> list[dict]:
    import numpy as np
    import requests

    from modelserver.build_models import digits_split

    _, _, x_test, _ = digits_split()
    rows = [x_test[i % len(x_test)] for i in range(total)]
    bodies = [json.dumps({"instances": [row.tolist()]}).encode() for row in rows]
    feeds = [{"x": row.reshape(1, 64).astype(np.float32)} for row in rows]
    session = bare_session(models, name)

    def bare_call():
        return lambda i: bool(session.run(None, feeds[i]))

    server = start_server(models, name)
    url = f"http://127.0.0.1:{server.port}/v1/models/{name}:predict"

    def new_connection_call():
        return lambda i: requests.post(url, data=bodies[i], timeout=30).status_code == 200

    def keepalive_call():
        http = requests.Session()
        return lambda i: http.post(url, data=bodies[i], timeout=30).status_code == 200

    results = []
    try:
        rss, uss = memory_kb(server.proc)
        lines.append(f"\n{name}: {total} requests per level after {warmup} warm-up requests; "
                     f"server memory after start RSS {rss} KB (USS {uss} KB), master + worker")
        lines.append(f"{'clients':>7} | {'bare req/s':>10} {'mean ms':>8} {'sd ms':>7} | "
                     f"{'server req/s':>12} {'mean ms':>8} {'sd ms':>7} | {'keep-alive req/s':>16} "
                     f"{'mean ms':>8} {'sd ms':>7} | {'lat x':>6} {'tput x':>6} {'ka lat x':>8} {'ka tput x':>9}")
        for clients in CLIENTS:
            row = {"model": name, "clients": clients}
            for label, make_call in (("bare", bare_call), ("server", new_connection_call),
                                     ("keepalive", keepalive_call)):
                measure(make_call, requests_total=warmup, threads=clients)
                run = measure(make_call, requests_total=total, threads=clients)
                if run.errors:
                    raise RuntimeError(f"{name} {label}: {run.errors} failed requests")
                row[label] = {"req_s": run.throughput, "mean_ms": run.mean * 1e3, "sd_ms": run.stdev * 1e3}
            b, s, k = row["bare"], row["server"], row["keepalive"]
            row["latency_ratio"] = s["mean_ms"] / b["mean_ms"]
            row["keepalive_latency_ratio"] = k["mean_ms"] / b["mean_ms"]
            row["throughput_ratio"] = b["req_s"] / s["req_s"]
            row["keepalive_throughput_ratio"] = b["req_s"] / k["req_s"]
            lines.append(f"{clients:>7} | {b['req_s']:>10.0f} {b['mean_ms']:>8.3f} {b['sd_ms']:>7.3f} | "
                         f"{s['req_s']:>12.0f} {s['mean_ms']:>8.3f} {s['sd_ms']:>7.3f} | {k['req_s']:>16.0f} "
                         f"{k['mean_ms']:>8.3f} {k['sd_ms']:>7.3f} | {row['latency_ratio']:>6.0f} "
                         f"{row['throughput_ratio']:>6.0f} {row['keepalive_latency_ratio']:>8.0f} "
                         f"{row['keepalive_throughput_ratio']:>9.0f}")
            print(lines[-1], file=sys.stderr, flush=True)
            results.append(row)
    finally:
        stop(server.proc)
    return results


def bench_startup(models: Path, names: list[str], *, repeats: int, lines: list[str]) -> dict:
    import statistics as st

    lines.append(f"\nstartup to ready (Popen -> first 200 on GET /v1/models/NAME), {repeats} starts each")
    lines.append(f"{'model':>15} | {'mean s':>7} {'sd s':>6} {'min s':>6} {'max s':>6}")
    out = {}
    for name in names:
        times = []
        for _ in range(repeats):
            server = start_server(models, name)
            times.append(server.seconds)
            stop(server.proc)
        out[name] = times
        lines.append(f"{name:>15} | {st.mean(times):>7.3f} {(st.stdev(times) if len(times) > 1 else 0):>6.3f} "
                     f"{min(times):>6.3f} {max(times):>6.3f}")
        print(lines[-1], file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the model-server benchmark and print its tables; return 0, or 1 on failure."""
    parser = argparse.ArgumentParser(prog="python -m bench.modelserver", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (smoke check)")
    parser.add_argument("--requests", type=int, help="requests per level (default 1000, quick 100)")
    parser.add_argument("--models", default="digits_logreg,digits_forest", help="comma-separated models")
    parser.add_argument("--models-dir", default=str(REPO / "build" / "models"), help="built models")
    parser.add_argument("--starts", type=int, help="server starts timed per model (default 5, quick 2)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    total = args.requests or (100 if args.quick else 1000)
    warmup = max(10, total // 10)
    starts = args.starts or (2 if args.quick else 5)
    names = [n for n in args.models.split(",") if n]
    models = Path(args.models_dir)

    from modelserver.build_models import build_all

    build_all(out=models, log=lambda _m: None)
    lines = [f"bench.modelserver: {time.strftime('%Y-%m-%d %H:%M')}, python {sys.version.split()[0]}, "
             f"{_cpus()} CPUs; client threads and the server share the machine"]
    print(lines[0], file=sys.stderr, flush=True)
    report: dict = {"requests": total, "warmup": warmup, "levels": []}
    try:
        for name in names:
            report["levels"] += bench_model(models, name, total=total, warmup=warmup, lines=lines)
        report["startup"] = bench_startup(models, ["half_plus_two", *names], repeats=starts, lines=lines)
    except (RuntimeError, OSError) as exc:
        print(f"bench.modelserver: error: {exc}", file=sys.stderr)
        return 1
    lines.append("\nlat x = server mean latency / bare ONNX Runtime mean latency; tput x = bare req/s / "
                 "server req/s (new connection per request, as seed 001); ka = the same with one keep-alive "
                 "session per client thread")
    print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    sys.exit(main())
