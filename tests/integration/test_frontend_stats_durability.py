"""Statistics when a gunicorn worker dies under load: SIGTERM loses nothing, SIGKILL at most the
killed worker's unflushed buffer (the requests it answered in the last stats_flush_interval plus the
time of its last write; see frontend/store.py)."""
from __future__ import annotations

import http.client
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest_frontend import AUTH, TOKEN, cluster_settings, wait_for
from tests.frontend_server import GunicornServer

HP2 = "half_plus_two"
FLUSH = 0.05          # stats_flush_interval (the default)
SLACK = 0.15          # seconds added for the worker's last write(s) and scheduling on a shared machine
RATE = 200.0          # requests per second the clients aim at, in total


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


class Load:
    """Clients on keep-alive connections asking GET /services/<model> at about RATE in total; every
    answered request is kept as (monotonic time, the worker's request-id prefix)."""

    def __init__(self, host: str, port: int, *, clients: int = 4):
        self.host, self.port = host, port
        self.answered: list[tuple[float, str]] = []
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(clients,), daemon=True) for _ in range(clients)]

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, clients: int) -> None:
        gap = clients / RATE
        conn = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += gap
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("GET", f"/services/{HP2}")
                response = conn.getresponse()
                response.read()
                done = time.monotonic()
                if response.status == 200:
                    with self._lock:
                        self.answered.append((done, response.getheader("X-Request-Id", "")[:10]))
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.failed += 1
                if conn is not None:
                    conn.close()
                conn = None
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()

    def answered_by_worker_in(self, start: float, end: float) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for t, prefix in self.answered:
                if start <= t <= end:
                    out[prefix] = out.get(prefix, 0) + 1
        return out


@pytest.fixture(params=["gevent", "gthread"])
def frontend(request, local_cluster_factory, tmp_path):
    cluster = local_cluster_factory([{"name": "node-a"}])
    cluster.deploy(HP2, "node-a")
    settings = {"cluster": "local", "cluster_settings": cluster_settings(cluster), "token": TOKEN,
                "database": str(tmp_path / "frontend.db"), "refresh_interval": 0.5,
                "stats_flush_interval": FLUSH}
    server = GunicornServer(settings, workers=2, threads=4, log_path=tmp_path / "gunicorn.log",
                            env={"FRONTEND_WORKER_CLASS": request.param})
    server.start()
    yield server
    server.cleanup()


def _rows(server) -> int:
    doc = requests.get(f"{server.url}/stats/summary?window=3600", headers=AUTH, timeout=30).json()
    total = sum(m["count"] for m in doc["models"])
    raw = requests.get(f"{server.url}/stats/requests?limit=100000", headers=AUTH, timeout=30).json()["requests"]
    assert len(raw) == total, "the aggregates and the rows disagree"
    arrivals = doc["arrivals"]           # whole seconds only: the rows of the answer's current second are not in
    whole = sum(arrivals["since"] <= math.floor(r["time"]) < arrivals["since"] + arrivals["seconds"] for r in raw)
    assert sum(m["count"] for m in arrivals["models"]) == whole, "the arrivals and the rows disagree"
    return total


def _kill_one_worker(server, sig: int) -> tuple[int, float]:
    workers = wait_for(lambda: len(_children(server.proc.pid)) == 2 and _children(server.proc.pid),
                       what="two workers")
    victim = workers[0]
    at = time.monotonic()
    os.kill(victim, sig)
    return victim, at


def _run(server, sig: int) -> tuple[Load, float]:
    host, port = server.host, server.port
    with Load(host, port) as load:
        time.sleep(2.0)
        victim, killed_at = _kill_one_worker(server, sig)
        time.sleep(2.5)
        wait_for(lambda: len(set(_children(server.proc.pid)) - {victim}) == 2, what="the replacement worker")
        time.sleep(0.5)
    time.sleep(4 * FLUSH + 0.5)          # the surviving workers' buffers reach the file
    return load, killed_at


def test_sigterm_of_a_worker_loses_no_statistics(frontend):
    load, _ = _run(frontend, signal.SIGTERM)
    rows = _rows(frontend)
    answered = len(load.answered)
    print(f"SIGTERM: {answered} answered ({answered / 5.0:.0f}/s), {rows} rows, {load.failed} failed calls")
    assert answered > 300
    assert rows >= answered, f"{answered - rows} answered requests have no row"


def test_sigkill_of_a_worker_loses_at_most_its_unflushed_buffer(frontend):
    load, killed_at = _run(frontend, signal.SIGKILL)
    rows = _rows(frontend)
    answered = len(load.answered)
    per_worker = load.answered_by_worker_in(killed_at - FLUSH - SLACK, killed_at)
    bound = max(per_worker.values(), default=0)
    missing = answered - rows
    print(f"SIGKILL: {answered} answered ({answered / 5.0:.0f}/s), {rows} rows, {missing} missing, "
          f"bound {bound} (busiest worker's answers in the last {FLUSH + SLACK:g} s), {load.failed} failed calls")
    assert answered > 300
    assert missing <= bound, f"{missing} rows lost, more than the {bound} a {FLUSH} s buffer can hold"
