"""The front-end under gunicorn with several workers: shared statistics, metrics, restarts."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest_frontend import AUTH, TOKEN, cluster_settings, predict_body, wait_for
from tests.frontend_server import REPO_ROOT, GunicornServer

HP2 = "half_plus_two"


@pytest.fixture
def gunicorn_frontend(local_cluster_factory, tmp_path):
    cluster = local_cluster_factory([{"name": "node-a"}, {"name": "node-b"}])
    cluster.deploy(HP2, "node-a")
    settings = {"cluster": "local", "cluster_settings": cluster_settings(cluster), "token": TOKEN,
                "database": str(tmp_path / "frontend.db"), "refresh_interval": 0.5}
    server = GunicornServer(settings, workers=2, threads=4, log_path=tmp_path / "gunicorn.log")
    server.start()
    yield server, cluster
    server.cleanup()


def metric(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_counts_are_shared_by_workers_and_survive_a_restart(gunicorn_frontend):
    server, cluster = gunicorn_frontend
    pids = set()
    lookups = 0
    for _ in range(200):                      # new connections: the kernel spreads them over workers
        assert requests.get(f"{server.url}/services/{HP2}", timeout=10).status_code == 200
        lookups += 1
        pids.add(requests.get(f"{server.url}/healthz", timeout=10).json()["pid"])
        if len(pids) >= 2 and lookups >= 30:
            break
    assert len(pids) == 2, "both workers should have answered"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda v: requests.post(f"{server.url}/services/{HP2}/v1/models/{HP2}:predict",
                                    data=predict_body([float(v)]), timeout=30), range(80)))
    assert [a.status_code for a in answers] == [200] * 80
    assert [a.json()["predictions"][0] for a in answers] == [v / 2 + 2 for v in range(80)]
    labels_lookup = f'kind="lookup",model="{HP2}",status="200"'
    labels_proxy = f'kind="proxy",model="{HP2}",status="200"'
    # Each worker writes its buffered statistics every stats_flush_interval (0.05 s): wait for
    # both to have flushed, then whichever worker answers, the totals are the same.
    wait_for(lambda: metric(requests.get(f"{server.url}/metrics", timeout=10).text,
                            "frontend_model_requests_total", labels_proxy) == 80, what="all workers flushed")
    for _ in range(6):
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        assert metric(text, "frontend_model_requests_total", labels_lookup) == lookups
        assert metric(text, "frontend_model_requests_total", labels_proxy) == 80
    rows = requests.get(f"{server.url}/stats/requests", headers=AUTH, timeout=10).json()["requests"]
    assert len(rows) == lookups + 80 and all(r["node"] == "node-a" for r in rows)

    server.restart()
    after = requests.get(f"{server.url}/stats/requests", headers=AUTH, timeout=10).json()["requests"]
    assert after == rows
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    assert metric(text, "frontend_model_requests_total", labels_proxy) == 80
    models = requests.get(f"{server.url}/stats/models", headers=AUTH, timeout=10).json()["models"]
    hp2 = next(m for m in models if m["model"] == HP2)
    assert hp2["count"] == lookups + 80 and hp2["instances"][0]["count"] == lookups + 80


def test_every_worker_asks_each_worker_on_a_connection_of_its_own(gunicorn_frontend):
    # The tests' helper for "all workers agree": a check that holds in one worker only is false.
    server, _ = gunicorn_frontend
    pid = lambda http: http.get(f"{server.url}/healthz", timeout=10).json()["pid"]  # noqa: E731
    seen: list[int] = []
    assert server.every_worker(lambda http: seen.append(pid(http)) or True)
    assert len(seen) == 2 and len(set(seen)) == 2
    assert not server.every_worker(lambda http: pid(http) == seen[0])
    assert server.every_worker(lambda http: pid(http) in seen)


def test_python_m_frontend_refuses_a_bad_config(tmp_path):
    bad = tmp_path / "frontend.yaml"
    bad.write_text("policy: fastest\n")
    done = subprocess.run([sys.executable, "-m", "frontend", "--config", str(bad), "--port", "1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "policy" in done.stderr


@pytest.mark.parametrize("shared", [True, False])
def test_expected_delay_counts_the_other_workers_dispatches(local_cluster_factory, tmp_path, shared):
    # Two instances of 0.5 s (node-a) and 0.9 s (node-b) of work each; node-b is nearer. The first
    # lookup, in one worker, goes to node-a (10 + 500 ms against 1 + 900) and leaves it 0.5 s of
    # backlog: with the shared backlog the other worker sees it and sends the next request to node-b;
    # with one backlog per worker (backlog_shared: false) it does not, and node-a gets both.
    cluster = local_cluster_factory([{"name": "node-a"}, {"name": "node-b"}])
    cluster.deploy(HP2, "node-a")
    cluster.deploy(HP2, "node-b")
    settings = {"cluster": "local", "cluster_settings": cluster_settings(cluster), "token": TOKEN,
                "database": str(tmp_path / "frontend.db"), "refresh_interval": 0.3, "policy": "expected-delay",
                "backlog_shared": shared, "backlog_drain": 0.1,
                "rtt": {"zone-1": {"node-a": 0.010, "node-b": 0.001}}}
    server = GunicornServer(settings, workers=2, threads=4, log_path=tmp_path / "gunicorn.log")
    server.start()
    try:
        plan = {"created": time.time(), "mode": 1, "solver": "highs", "weights": {HP2: {"zone-1": {"node-b": 1.0}}},
                "service": {HP2: {"node-a": 0.5, "node-b": 0.9}}}
        assert requests.put(f"{server.url}/plan", json=plan, headers=AUTH, timeout=10).json() == {"ok": True}
        zone = {"X-Client-Zone": "zone-1"}

        def listed(http) -> str:           # GET /services charges nothing
            services = http.get(f"{server.url}/services", headers=zone, timeout=10).json()["services"]
            return next(s["node"] for s in services if s["model"] == HP2)
        # every worker has the plan: without it the catalog's profile times (under a millisecond on
        # either node) would give the nearer node-b
        wait_for(lambda: server.every_worker(lambda http: listed(http) == "node-a"), what="both workers read the plan")
        picks = []
        assert server.every_worker(lambda http: picks.append(
            http.get(f"{server.url}/services/{HP2}", headers=zone, timeout=10).json()["node"]) or True)
        assert picks == (["node-a", "node-b"] if shared else ["node-a", "node-a"])
        assert (tmp_path / "frontend.db-backlog").exists() is shared
    finally:
        server.cleanup()
