"""CPU per proxied call of the proxy's upstream HTTP client: h11 (now) vs the old hand-written one vs urllib3.

Each client makes the same keep-alive POST to a server in another process (so the process's CPU
time is the client's alone): by default a minimal keep-alive HTTP/1.1 server started here, with
`--server model` a real model server (`half_plus_two` :predict). For every client, N calls after
a warm-up, in rounds that alternate the clients (median of the rounds): CPU microseconds per call
(time.process_time) and wall microseconds per call. Two answer sizes with the minimal server: a
small JSON answer like a prediction, a 16 KiB and a 256 KiB one (how large bodies fare).

    .venv/bin/python -m bench.upstream [--quick] [--calls N] [--rounds R] [--server minimal|model]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
BODY = b'{"instances": [1.0, 2.0, 5.0]}'
PATH = "/v1/models/half_plus_two:predict"
HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity", "X-Request-Id": "0123456789abcdef",
           "X-Forwarded-For": "127.0.0.1"}

# A minimal keep-alive server: one thread per connection, a fixed answer whose body size the path's
# last segment names (/.../small or /.../large), headers like a gunicorn/Flask model server's.
_SERVER = r"""
import socket, sys, threading
SIZES = {b"small": 40, b"medium": 16 * 1024, b"large": 256 * 1024}
def answer(size):
    body = (b'{"predictions": [2.5, 3.0, 4.5]}' + b" " * size)[:size]
    return (b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nDate: Sat, 28 Nov 2026 07:00:00 GMT\r\n"
            b"Connection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size) + body
ANSWERS = {k: answer(v) for k, v in SIZES.items()}
def serve(conn):
    data = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(data) < length:
                data += conn.recv(65536)
            data = data[length:]
            conn.sendall(ANSWERS[lines[0].split(b" ")[1].rsplit(b"/", 1)[1]])
sock = socket.create_server(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
while True:
    conn, _ = sock.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def _clients(port: int) -> dict[str, Callable[[str], Callable[[], bytes]]]:
    """Name -> factory(path) -> call() returning the body; each factory builds its own pool."""
    from bench._old_upstream import UpstreamPool as OldPool
    from frontend.upstream import UpstreamPool

    def h11_client(path: str):
        pool = UpstreamPool("127.0.0.1", port, connect_timeout=1.0, call_timeout=30.0)
        return lambda: pool.request("POST", path, headers=HEADERS, body=BODY).body

    def old_client(path: str):
        pool = OldPool("127.0.0.1", port, connect_timeout=1.0, read_timeout=30.0)
        return lambda: pool.request("POST", path, headers=HEADERS, body=BODY).body

    def urllib3_client(path: str):
        import urllib3
        pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False,
                                          timeout=urllib3.Timeout(connect=1.0, read=30.0))
        return lambda: pool.request("POST", path, body=BODY, headers=HEADERS).data

    def requests_client(path: str):
        import requests
        session = requests.Session()
        url = f"http://127.0.0.1:{port}{path}"
        return lambda: session.post(url, data=BODY, headers=HEADERS, timeout=(1.0, 30.0)).content

    return {"h11 (frontend.upstream, now)": h11_client, "hand-written (before)": old_client,
            "urllib3.HTTPConnectionPool": urllib3_client, "requests.Session": requests_client}


def _measure(call: Callable[[], bytes], calls: int) -> tuple[float, float]:
    """(CPU us per call, wall us per call) over `calls` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        call()
    return ((time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6)


def _run(port: int, path: str, *, calls: int, rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    made = {name: factory(path) for name, factory in _clients(port).items()}
    sizes = {name: len(call()) for name, call in made.items()}
    if len(set(sizes.values())) != 1:
        raise RuntimeError(f"the clients read different bodies: {sizes}")
    for call in made.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in made}
    for _ in range(rounds):
        for name, call in made.items():
            samples[name].append(_measure(call, calls))
    return {name: {"cpu_us": statistics.median(s[0] for s in got), "wall_us": statistics.median(s[1] for s in got),
                   "body_bytes": sizes[name]}
            for name, got in samples.items()}


def _table(title: str, results: dict[str, dict[str, float]]) -> list[str]:
    base = results["h11 (frontend.upstream, now)"]["cpu_us"]
    lines = [f"\n{title}", f"| client | CPU us/call | wall us/call | CPU vs h11 |", "| --- | ---: | ---: | ---: |"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['cpu_us']:.1f} | {row['wall_us']:.1f} | {row['cpu_us'] / base:.2f}x |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (smoke check)")
    parser.add_argument("--calls", type=int, help="calls per client per round (default 2000, quick 200)")
    parser.add_argument("--rounds", type=int, help="rounds, clients alternating (default 5, quick 2)")
    parser.add_argument("--server", choices=("minimal", "model"), default="minimal",
                        help="minimal keep-alive server (default) or a real half_plus_two model server")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    calls = args.calls or (200 if args.quick else 2000)
    rounds = args.rounds or (2 if args.quick else 5)
    load = os.getloadavg()[0]
    print(f"bench.upstream: {time.strftime('%Y-%m-%d %H:%M %Z')}, python {sys.version.split()[0]}, "
          f"{calls} calls x {rounds} rounds per client, server {args.server}, load average {load:.1f}")
    out: dict[str, dict] = {}
    if args.server == "model":
        from bench.modelserver import start_server, stop
        started = start_server(REPO / "build" / "models", "half_plus_two")
        try:
            out["small (half_plus_two :predict)"] = _run(started.port, PATH, calls=calls, rounds=rounds,
                                                         warmup=min(200, calls))
        finally:
            stop(started.proc)
    else:
        proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
        try:
            port = int(proc.stdout.readline())
            out["small answer (40-byte JSON body, like a prediction)"] = _run(
                port, PATH.replace(":predict", "/small"), calls=calls, rounds=rounds, warmup=min(200, calls))
            out["16 KiB answer"] = _run(port, PATH.replace(":predict", "/medium"), calls=calls, rounds=rounds,
                                        warmup=min(200, calls))
            out["256 KiB answer"] = _run(port, PATH.replace(":predict", "/large"),
                                                      calls=max(20, calls // 10), rounds=rounds, warmup=20)
        finally:
            proc.kill()
            proc.wait()
    for title, results in out.items():
        print("\n".join(_table(title, results)))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"calls": calls, "rounds": rounds, "server": args.server,
                                               "load": load, "results": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
