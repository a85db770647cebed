"""Acceptance test of issue 9 (round-trip time measured correctly), end to end.

The real client emulator (`testbed.clients.run_clients`, lookup mode) replays a small scenario
against a real front-end whose local cluster has the scenario's nodes: every call to a model server
is held for the scenario's true round trip, and the clients report what they observed with their
next lookup (X-Client-RTT / X-Client-RTT-Node). The back-end then collects the front-end's summary
and builds the problem in-process with an ALTO cost map wrong by 2x: every (zone, node) with at
least 20 reports must be within 10 % or 2 ms of the truth (plus what this host's own overhead
added to every client's observation, measured from the clients' records), the node nobody used keeps the (wrong)
ALTO prior, and the thesis's measurement (`--rtt-source latency`) is visibly not a network RTT.
Finally the back-end's real CLI pushes the measured table with the plan.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from backend.alto import load_cost_map
from backend.build import BuildSettings, build_problem
from backend.collect import FrontendClient, collect
from cluster.catalog import load_catalog
from conftest_frontend import AUTH, TOKEN, make_frontend  # noqa: F401
from testbed.clients import run_clients
from testbed.scenario import parse_scenario

HP2, HP3 = "half_plus_two", "half_plus_three"
# Seconds. Large enough that the model server's own time (~2 ms on loopback; it is in the clients'
# reports for as long as the model servers send no Server-Timing) stays well inside 10 %.
TRUTH = {"zone-1": {"node-a": 0.080, "node-b": 0.160, "node-c": 0.050},
         "zone-2": {"node-a": 0.120, "node-b": 0.090, "node-c": 0.050}}
SCENARIO = {
    "seed": 5,
    "nodes": [{"name": "node-a", "class": "small", "cpu": 2.0, "memory": 250000},
              {"name": "node-b", "class": "small", "cpu": 2.0, "memory": 250000},
              {"name": "node-c", "class": "large", "cpu": 4.0, "memory": 800000}],
    "zones": [{"name": zone, "rtt": rtt} for zone, rtt in TRUTH.items()],
    "phases": [{"duration": 5, "rate": 40, "zones": {"zone-1": 1, "zone-2": 1},
                "popularity": {HP2: 1, HP3: 1}}],
    "slo": 1.0,
}
USED = {"node-a", "node-b"}          # HP2 lives on node-a, HP3 on node-b; node-c serves nothing


def close_enough(measured: float, truth: float) -> bool:
    return abs(measured - truth) <= max(0.10 * truth, 0.002)


def host_overhead(records) -> dict:
    """Seconds this host added, per (zone, node), to what the clients observed over the truth.

    The emulated network is a sleep in a Python client calling a Python model server: on a quiet
    host that adds ~2 ms, but on a busy 2-core CI host sleeps overshoot and processes wait for a
    core (11 ms was seen). The clients cannot tell that from the network, nor should the system:
    what it must report is what they observed. So the truth to meet is the scenario's RTT plus
    the overhead measured from the same clients' own records."""
    extra: dict = {}
    for r in records:
        if r.ok and r.node in TRUTH[r.zone]:
            extra.setdefault((r.zone, r.node), []).append(r.network - TRUTH[r.zone][r.node])
    return {key: sum(values) / len(values) for key, values in extra.items()}


def test_measured_rtt_is_within_10_percent_of_the_truth_with_a_2x_wrong_alto(make_frontend, tmp_path):
    scenario = parse_scenario(SCENARIO)
    fe = make_frontend(nodes=scenario.cluster_nodes(), deploy=((HP2, "node-a"), (HP3, "node-b")))
    results = run_clients(fe.url, scenario, mode="lookup", clients_per_zone=2)
    assert results.ok == results.scheduled, [r.error for r in results.records if not r.ok][:5]
    overhead = host_overhead(results.records)
    # the run can tell a measurement from the 2x ALTO prior only while the host adds far less than that
    assert all(extra < 0.5 * TRUTH[z][n] for (z, n), extra in overhead.items()), overhead

    def observed_truth(zone: str, node: str) -> float:
        return TRUTH[zone][node] + overhead[(zone, node)]

    # the front-end's aggregates hold >= 20 reports for every (zone, used node) pair
    summary = requests.get(f"{fe.url}/stats/summary", headers=AUTH, timeout=10).json()
    counts = {(p["zone"], p["node"]): p["count"] for p in summary["rtt"]}
    assert set(counts) == {(z, n) for z in TRUTH for n in USED}
    assert min(counts.values()) >= 20, counts

    wrong = {zone: {node: 2 * rtt for node, rtt in row.items()} for zone, row in TRUTH.items()}
    alto_path = tmp_path / "alto-2x.json"
    alto_path.write_text(json.dumps({"meta": {"cost-type": {"cost-mode": "numerical", "cost-metric": "delay"}},
                                     "cost-map": wrong}))
    cost_map = load_cost_map(alto_path)
    catalog = load_catalog(fe.cluster.catalog_path)
    client = FrontendClient(fe.url, token=TOKEN)
    try:
        observed = collect(client, window=600, recent=5)
    finally:
        client.close()
    assert observed.summary is not None and observed.summary.rtt
    # the rate window's second summary, read over HTTP: a part of the window, the same store
    assert observed.recent is not None and observed.recent.store == observed.summary.store
    assert 0 < observed.recent.requests <= observed.summary.requests and observed.recent.since >= observed.summary.since

    def build(**settings):
        return build_problem(requests=observed.requests, nodes=observed.nodes, catalog=catalog,
                             deployments=fe.cluster.deployments(), cost_map=cost_map,
                             settings=BuildSettings(**settings), summary=observed.summary)

    built = build()
    tables = {zone: group.rtt for (_, zone), group in zip(built.groups, built.problem.requests)}
    assert set(tables) == set(TRUTH)
    for zone, row in tables.items():
        for node, seconds in row.items():
            if node in USED:                 # measured: the truth, not the 2x ALTO value
                assert close_enough(seconds, observed_truth(zone, node)), (zone, node, seconds, overhead)
            else:                            # nobody reported it: the ALTO prior, as given
                assert seconds == pytest.approx(wrong[zone][node]), (zone, node, seconds)
    assert built.summary["rtt_sources"] == {"measured": 4, "alto": 2, "default": 0}
    assert built.measured_rtt == {zone: {node: tables[zone][node] for node in sorted(USED)} for zone in TRUTH}

    # the thesis's measurement: the previous request's end-to-end time, whatever node it went to
    thesis = build(rtt_source="latency")
    thesis_tables = {zone: group.rtt for (_, zone), group in zip(thesis.groups, thesis.problem.requests)}
    assert any(not close_enough(thesis_tables[z][n], observed_truth(z, n)) for z in TRUTH for n in USED)

    # the real back-end run pushes the measured table with its plan
    from backend.__main__ import main

    report_path = tmp_path / "report.json"
    code = main(["--mode", "1", "--frontend", fe.url, "--token", TOKEN,
                 "--cluster-config", str(fe.cluster.config_path), "--cluster-state", str(fe.cluster.state_path),
                 "--models-dir", str(fe.cluster.models_dir), "--catalog", str(fe.cluster.catalog_path),
                 "--lock", str(tmp_path / "backend.lock"), "--alto", str(alto_path), "--max-deletions", "0",
                 "--report", str(report_path)])
    report = json.loads(report_path.read_text())
    assert code == 0, report["errors"]
    assert report["inputs"]["rtt_source"] == "reports" and report["inputs"]["rtt_sources"]["measured"] == 4
    assert report["plan_pushed"]
    pushed = requests.get(f"{fe.url}/plan", headers=AUTH, timeout=10).json()["rtt"]
    assert set(pushed) == set(TRUTH)
    for zone, row in pushed.items():
        assert set(row) == USED
        for node, seconds in row.items():
            assert close_enough(seconds, observed_truth(zone, node)), (zone, node, seconds, overhead)
