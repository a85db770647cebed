"""The load-aware formulation and the cloud tier on the real local cluster (real model servers,
the real front-end, the back-end's CLI in-process).

Two edge nodes and one cloud site (node-c, `tier: cloud`). A catalog copy makes half_plus_two cost
0.5 s on the edge class and 0.05 s on the cloud's, and the ALTO map puts the cloud 30 s away from
zone z-a: the marginal latency of one more request on an edge instance at the 0.85 ceiling (its own
time plus the waiting it adds to the others, 0.5 x (1 + h'(0.85)) ~ 22 s) stays below that, so the
cloud must receive traffic exactly when the edge cannot take it, in the plan and in dispatch.
The back-end plans with that profile (`--pace profile`): the real half_plus_two answers in
milliseconds, and its measured pace would replace the 0.5 s the scenario is built on.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import yaml

from conftest_frontend import cluster_settings
from test_backend_support import AUTH, HP2, TOKEN, System, wait_for

A, B, C = "node-a", "node-b", "node-c"
NODES = [
    {"name": A, "memory": 250000, "cpu": 2.0, "class": "small"},
    {"name": B, "memory": 250000, "cpu": 2.0, "class": "small"},
    {"name": C, "memory": 800000, "cpu": 8.0, "class": "large", "tier": "cloud", "cost_per_request": 0.001},
]
CATALOG = Path(__file__).resolve().parents[2] / "config" / "models.yaml"
EDGE_S = 0.5


@pytest.fixture
def system(local_cluster_factory, tmp_path: Path):
    from frontend import create_app
    from tests.frontend_server import ServerThread

    doc = yaml.safe_load(CATALOG.read_text())
    for model in doc["models"]:
        if model["name"] == HP2:
            model["exec_time"] = {"small": EDGE_S, "large": 0.05}
            model["exec_time_scv"] = {"small": 1.0, "large": 1.0}      # exponential, as M/M/1 assumes
            model.pop("exec_time_idle", None)
    catalog = tmp_path / "models.yaml"
    catalog.write_text(yaml.safe_dump(doc, sort_keys=False))
    cluster = local_cluster_factory(NODES, catalog_path=catalog)
    alto = tmp_path / "alto.json"
    alto.write_text(json.dumps({"meta": {"cost-type": {"cost-mode": "numerical", "cost-metric": "routingcost"}},
                                "cost-map": {"z-a": {A: 0.002, B: 0.08, C: 30.0}}}))
    config = {"cluster": "local", "cluster_settings": cluster_settings(cluster),
              "database": str(tmp_path / "frontend.db"), "token": TOKEN, "refresh_interval": 0.1}
    server = ServerThread(create_app(config)).start()
    try:
        yield System(cluster=cluster, url=server.url, tmp=tmp_path, alto=alto,
                     extra=["--catalog", str(catalog), "--formulation", "latency", "--solver", "highs",
                            "--pace", "profile"])
    finally:
        server.stop()


def weights(system: System) -> dict[str, float]:
    return system.plan()["weights"][HP2]["z-a"]


def test_cloud_takes_exactly_what_the_edge_cannot(system):
    # light: 12 requests in 60 s (0.2/s): the edge only (M/M/1 spreads some to the second edge node,
    # whose extra 78 ms is less than the waiting one more request adds on the first)
    system.seed_demand({(HP2, "z-a"): 12})
    code, report = system.backend(1, "--window", "60", "--wait-ready", "--max-utilisation", "0.85")
    assert code == 0, report["errors"]
    assert report["solver"]["formulation"] == "latency" and report["solver"]["status"] == "optimal"
    # a rate is the count over the seconds the front-end's 10 s buckets cover: 60 to 70 s here
    seconds = report["inputs"]["rates_over_seconds"]
    assert 60 <= seconds < 70 and report["inputs"]["rates"] == {f"{HP2}/z-a": pytest.approx(12 / seconds, rel=1e-4)}
    assert report["inputs"]["tiers"] == {C: "cloud"}
    light = weights(system)
    assert C not in light and light[A] >= light.get(B, 0.0) and sum(light.values()) == pytest.approx(1.0)
    assert (HP2, C) not in system.pairs()
    # the plan's predicted mean latency per request: the objective's own (M/M/1), and the queueing
    # model's for each dispatch, which sees that the 12 requests came in one burst (sent back to back:
    # per-second counts far from Poisson), so it predicts more waiting than M/M/1; a pool queues less
    predicted = report["prediction"]
    objective = report["solver"]["objective"] / report["inputs"]["requests"]
    assert set(predicted) == {"pooled", "split", "simulated"}
    assert report["inputs"]["dispersion"][HP2] > 2                 # a Poisson stream's is 1
    assert EDGE_S < predicted["pooled"] <= predicted["split"] and predicted["split"] > objective
    # expected-delay replayed: a request goes to B only once A's queue exceeds the 78 ms detour, so
    # the burst queues on A, where the closed form pools A and B as one M/M/2
    assert EDGE_S < predicted["pooled"] < predicted["simulated"]

    # heavy: 130 requests in a 30 s window (30-40 s of buckets): each edge instance takes at most
    # 0.85 x seconds / 0.5 (51 to 67), the cloud the rest
    system.seed_demand({(HP2, "z-a"): 130}, keep=list(system.pairs()))
    code, report = system.backend(1, "--window", "30", "--wait-ready")
    assert code == 0, report["errors"]
    total = report["inputs"]["requests"]
    assert total >= 130 and report["solver"]["status"] == "optimal"
    cap = int(0.85 * report["inputs"]["rates_over_seconds"] / EDGE_S + 1e-9)
    assert 2 * cap < total
    got = weights(system)
    assert got == pytest.approx({A: cap / total, B: cap / total, C: (total - 2 * cap) / total}, abs=2e-6)   # 6 decimals
    # the plan carries the service times it was made with (the expected-delay policy's input)
    assert system.plan()["service"][HP2] == {A: EDGE_S, B: EDGE_S, C: 0.05}
    assert "idle" not in system.plan()           # no low-load pace below the planned one in this catalog
    assert system.pairs() == {(HP2, A), (HP2, B), (HP2, C)}


def test_services_falls_back_to_the_cloud_when_no_edge_instance_can_serve(system):
    system.deploy([(HP2, A), (HP2, C)])
    wait_for(lambda: system.frontend_pairs(ready=True) == {(HP2, A), (HP2, C)}, what="both instances seen")
    answer = requests.get(f"{system.url}/services/{HP2}", headers={"X-Client-Zone": "z-a"}, timeout=10)
    assert answer.status_code == 200 and answer.json()["node"] == A and answer.json()["tier"] == "edge"
    listing = requests.get(f"{system.url}/services", timeout=10).json()["services"]
    assert [(s["node"], s["tier"]) for s in listing if s["model"] == HP2] == [(A, "edge")]
    memory = requests.get(f"{system.url}/stats/memory", headers=AUTH, timeout=10).json()["nodes"]
    assert {n["node"]: n["tier"] for n in memory} == {A: "edge", B: "edge", C: "cloud"}
    # the edge instance goes away: the cloud serves, never a 503
    system.remove([(HP2, A)])
    wait_for(lambda: system.frontend_pairs(ready=True) == {(HP2, C)}, what="the edge instance gone")
    answer = requests.get(f"{system.url}/services/{HP2}", headers={"X-Client-Zone": "z-a"}, timeout=10)
    assert answer.status_code == 200 and answer.json()["node"] == C and answer.json()["tier"] == "cloud"
    served = system.request(HP2, "z-a")
    assert served.status_code == 200 and served.headers.get("X-Served-By") == C
