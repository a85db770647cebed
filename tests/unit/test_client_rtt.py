"""Issue 9, round-trip time measured correctly: the X-Client-RTT / X-Client-RTT-Node reports from the
hint parser through the front-end's rows and aggregates to the back-end's recency-weighted RTT table
(ALTO as the prior), and the measured table pushed with the plan."""
from __future__ import annotations

import math
import sqlite3

import pytest

from backend.alto import CostMap
from backend.build import (BuildSettings, build_problem, recency_mean, rtt_reports_from_rows,
                           rtt_table_from_reports)
from backend.collect import FrontendError, RttStat, parse_requests, parse_summary
from frontend import create_app
from frontend.dispatch import Plan, PlanError, merge_rtt, parse_plan
from frontend.hints import HintError, parse_hints, parse_rtt_report
from frontend.store import BUCKET_SECONDS, RequestRecord, StatsStore
from test_backend_build import CATALOG, HP2, NODES, req

TOKEN = "rtt-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- hints ---------------------------------------------------------------------------------------
def test_rtt_report_from_headers_or_body_headers_win():
    h = parse_hints({"X-Client-RTT": " 0.025 ", "X-Client-RTT-Node": "nano-1"}, {"rtt": 9, "rtt_node": "x"})
    assert (h.rtt, h.rtt_node) == (0.025, "nano-1")
    h = parse_hints({}, {"zone": "z1", "rtt": 0, "rtt_node": "xavier"})
    assert (h.zone, h.rtt, h.rtt_node) == ("z1", 0.0, "xavier")
    assert parse_rtt_report({"X-Client-RTT": "60", "X-Client-RTT-Node": "n"}) == (60.0, "n")
    assert parse_rtt_report({"X-Client-RTT": "1e-3", "X-Client-RTT-Node": "n"}) == (0.001, "n")
    h = parse_hints({"X-Client-Zone": "z1"})
    assert (h.rtt, h.rtt_node) == (None, None)


@pytest.mark.parametrize("headers,body,words", [
    ({"X-Client-RTT": "0.01"}, None, ["X-Client-RTT", "X-Client-RTT-Node", "together"]),
    ({"X-Client-RTT-Node": "n"}, None, ["X-Client-RTT", "X-Client-RTT-Node", "together"]),
    ({}, {"rtt": 0.01}, ["'rtt'", "'rtt_node'", "together"]),
    ({}, {"rtt_node": "n"}, ["'rtt'", "'rtt_node'", "together"]),
    ({"X-Client-RTT": "0.01"}, {"rtt_node": "n"}, ["together"]),     # a pair does not mix sources
    ({"X-Client-RTT": "0.01", "X-Client-RTT-Node": "n"}, {"rtt": -1, "rtt_node": "n"}, ["'rtt'"]),
    ({"X-Client-Zone": "z1"}, {"zone": -147}, ["'zone'"]),     # checked although the header wins
    ({"X-Client-RTT": "", "X-Client-RTT-Node": "n"}, None, ["X-Client-RTT"]),
    ({"X-Client-RTT": "0.01", "X-Client-RTT-Node": ""}, None, ["X-Client-RTT-Node"]),
    ({"X-Client-RTT": "60.001", "X-Client-RTT-Node": "n"}, None, ["between 0 and 60"]),
    ({"X-Client-RTT": "-0.001", "X-Client-RTT-Node": "n"}, None, ["X-Client-RTT"]),
    ({"X-Client-RTT": "nan", "X-Client-RTT-Node": "n"}, None, ["X-Client-RTT"]),
    ({"X-Client-RTT": "inf", "X-Client-RTT-Node": "n"}, None, ["X-Client-RTT"]),
    ({"X-Client-RTT": "1e400", "X-Client-RTT-Node": "n"}, None, ["between 0 and 60"]),
    ({"X-Client-RTT": "1_0", "X-Client-RTT-Node": "n"}, None, ["X-Client-RTT"]),
    ({"X-Client-RTT": "0x10", "X-Client-RTT-Node": "n"}, None, ["X-Client-RTT"]),
    ({"X-Client-RTT": "0.01", "X-Client-RTT-Node": "-n"}, None, ["X-Client-RTT-Node"]),
    ({"X-Client-RTT": "0.01", "X-Client-RTT-Node": "a" * 65}, None, ["X-Client-RTT-Node"]),
    ({"X-Client-RTT": "0.01", "X-Client-RTT-Node": "n/1"}, None, ["X-Client-RTT-Node"]),
    ({}, {"rtt": True, "rtt_node": "n"}, ["'rtt'"]),
    ({}, {"rtt": "0.01", "rtt_node": 5}, ["'rtt_node'"]),
    ({}, {"rtt": float("nan"), "rtt_node": "n"}, ["'rtt'"]),
])
def test_bad_rtt_reports_are_refused_naming_the_hint(headers, body, words):
    with pytest.raises(HintError) as info:
        parse_hints(headers, body)
    for word in words:
        assert word in str(info.value)


# -- the front-end's rows and aggregates ---------------------------------------------------------
def rec(t, *, zone="z1", rtt=None, rtt_node=None, model="m"):
    return RequestRecord(time=t, model=model, kind="lookup", zone=zone, latency=None, node="n-a", endpoint="e",
                         status=200, duration=0.001, rtt=rtt, rtt_node=rtt_node)


def test_reports_are_recorded_and_summed_per_bucket_zone_and_node(tmp_path):
    store = StatsStore(tmp_path / "fe.db", flush_interval=0.05)
    for t, zone, rtt, node in [(1000.0, "z1", 0.010, "a"), (1001.0, "z1", 0.030, "a"), (1012.0, "z1", 0.040, "a"),
                               (1003.0, "z1", 0.100, "b"), (1004.0, None, 0.5, "a"), (1005.0, "z2", None, None)]:
        store.record(request=rec(t, zone=zone, rtt=rtt, rtt_node=node), increments=[])
    rows = store.requests()
    assert [(r["rtt"], r["rtt_node"]) for r in rows][:2] == [(0.010, "a"), (0.030, "a")]
    assert (rows[-1]["rtt"], rows[-1]["rtt_node"]) == (None, None)
    doc = store.summary(window=600, now=1020.0)
    pairs = {(p["zone"], p["node"]): p for p in doc["rtt"]}
    assert set(pairs) == {("z1", "a"), ("z1", "b"), (None, "a")}
    z1a = pairs[("z1", "a")]
    assert z1a["count"] == 3 and z1a["mean"] == pytest.approx(0.08 / 3)
    assert z1a["stddev"] == pytest.approx(math.sqrt(sum((x - 0.08 / 3) ** 2 for x in (0.01, 0.03, 0.04)) / 3))
    assert z1a["buckets"] == [[1000.0, 2, pytest.approx(0.04)], [1010.0, 1, pytest.approx(0.04)]]
    # the window is whole buckets, as for the groups; pruning drops old buckets
    assert [p["buckets"] for p in store.summary(window=5, now=1016.0)["rtt"]] == [[[1010.0, 1, pytest.approx(0.04)]]]
    store.prune(older_than=1010.0)
    assert [(p["zone"], p["node"], p["count"]) for p in store.summary(window=600, now=1020.0)["rtt"]] == [("z1", "a", 1)]
    store.close()


def test_an_old_database_gets_the_rtt_columns_and_table(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, time REAL NOT NULL, model TEXT NOT NULL,"
                 " kind TEXT NOT NULL, zone TEXT, latency REAL, node TEXT, endpoint TEXT, status INTEGER NOT NULL,"
                 " duration REAL NOT NULL, cached INTEGER NOT NULL DEFAULT 0)")
    conn.executemany("INSERT INTO requests (time, model, kind, zone, latency, node, endpoint, status, duration)"
                     " VALUES (?, 'm', 'proxy', 'z1', 0.01, 'n-a', 'e', 200, 0.02)", [(1000.0 + i,) for i in range(4)])
    conn.commit()
    conn.close()
    store = StatsStore(path)
    assert [(r["rtt"], r["rtt_node"]) for r in store.requests()] == [(None, None)] * 4
    store.record(request=rec(1005.0, rtt=0.02, rtt_node="a"), increments=[])
    doc = store.summary(window=600, now=1010.0)
    assert doc["models"][0]["count"] == 5 and doc["rtt"][0]["count"] == 1
    store.close()
    again = StatsStore(path)                                    # opening again changes nothing
    assert again.summary(window=600, now=1010.0)["rtt"][0]["count"] == 1
    again.close()
    # agg_rtt missing but rows with reports: they are aggregated once
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE agg_rtt")
    conn.commit()
    conn.close()
    store = StatsStore(path)
    assert store.summary(window=600, now=1010.0)["rtt"][0]["buckets"] == [[1000.0, 1, 0.02]]
    store.close()


@pytest.fixture
def app(tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("nodes:\n  - {name: n-a, address: 127.254.254.2, memory: 1000, cpu: 1.0, class: small}\n"
                       "  - {name: n-b, address: 127.254.254.3, memory: 1000, cpu: 1.0, class: small}\n")
    app = create_app({"cluster_settings": {"config_path": str(cluster), "state_path": str(tmp_path / "c.db")},
                      "database": str(tmp_path / "fe.db"), "token": TOKEN,
                      "rtt": {"z1": {"n-a": 0.001, "n-b": 0.002}, "z2": {"n-a": 0.003}}})
    yield app
    app.extensions["frontend"].close()


def test_lookups_and_proxied_calls_record_the_report_and_bad_ones_are_400(app):
    http = app.test_client()
    report = {"X-Client-Zone": "z1", "X-Client-RTT": "0.0125", "X-Client-RTT-Node": "n-b"}
    assert http.get("/services/ghost", headers=report).status_code == 404
    assert http.post("/services/ghost/v1/models/ghost:predict", headers=report, json={"instances": [1]}
                     ).status_code == 404
    assert http.get("/services", json={"model": "ghost", "zone": "z2", "rtt": 0.5, "rtt_node": "n-a"}
                    ).status_code == 404
    rows = http.get("/stats/requests", headers=AUTH).get_json()["requests"]
    assert [(r["kind"], r["zone"], r["rtt"], r["rtt_node"]) for r in rows] == [
        ("lookup", "z1", 0.0125, "n-b"), ("proxy", "z1", 0.0125, "n-b"), ("lookup", "z2", 0.5, "n-a")]
    summary = http.get("/stats/summary", headers=AUTH).get_json()
    assert {(p["zone"], p["node"], p["count"]) for p in summary["rtt"]} == {("z1", "n-b", 2), ("z2", "n-a", 1)}
    for path, method in (("/services/ghost", "get"), ("/services/ghost/v1/models/ghost:predict", "post"),
                         ("/services", "get")):
        for headers in ({"X-Client-RTT": "0.01"}, {"X-Client-RTT-Node": "n-a"},
                        {"X-Client-RTT": "", "X-Client-RTT-Node": "n-a"}, {"X-Client-RTT": "61", "X-Client-RTT-Node": "n"}):
            answer = getattr(http, method)(path, headers=headers, json={"instances": [1]} if method == "post" else None)
            assert answer.status_code == 400, (path, headers)
            assert "X-Client-RTT" in answer.get_json()["error"]
    answer = http.get("/services/ghost", headers={"X-Client-RTT": "0.01"})
    assert "X-Client-RTT-Node" in answer.get_json()["error"]


def test_the_plans_measured_rtt_overrides_the_configured_table_where_it_has_entries(app):
    http = app.test_client()
    cache = app.extensions["frontend"].cache
    plan = {"created": 1.0, "mode": 1, "solver": "s", "weights": {}, "rtt": {"z1": {"n-a": 0.05}, "z3": {"n-b": 0.2}}}
    assert http.put("/plan", headers=AUTH, json=plan).status_code == 200
    assert cache.rtt == {"z1": {"n-a": 0.05, "n-b": 0.002}, "z2": {"n-a": 0.003}, "z3": {"n-b": 0.2}}
    assert http.get("/plan", headers=AUTH).get_json()["rtt"] == plan["rtt"]
    without = {"created": 2.0, "mode": 1, "solver": "s", "weights": {}}
    assert http.put("/plan", headers=AUTH, json=without).status_code == 200
    assert cache.rtt == {"z1": {"n-a": 0.001, "n-b": 0.002}, "z2": {"n-a": 0.003}}
    assert "rtt" not in http.get("/plan", headers=AUTH).get_json()
    for bad in ({"z1": {"n-a": -1}}, {"z1": {"n-a": 61}}, {"z1": {"n-a": "x"}}, {"z1": {"n-a": True}}, {"z1": 5},
                [1], {"": {"n-a": 1}}, {"z1": {"bad/node": 1}}):
        answer = http.put("/plan", headers=AUTH, json={**without, "rtt": bad})
        assert answer.status_code == 400 and "rtt" in answer.get_json()["error"], bad


def test_parse_plan_rtt_and_merge():
    plan = parse_plan({"created": 1, "mode": 2, "solver": "x", "weights": {}, "rtt": {"z": {"n": 0.01}}},
                      known_models=[])
    assert plan.rtt == {"z": {"n": 0.01}} and plan.to_json()["rtt"] == {"z": {"n": 0.01}}
    assert "rtt" not in Plan(1.0, 1, "x", {}).to_json()
    with pytest.raises(PlanError, match=r"rtt\.z\.n: must be a number of seconds in 0\.\.60"):
        parse_plan({"created": 1, "mode": 2, "solver": "x", "weights": {}, "rtt": {"z": {"n": math.inf}}},
                   known_models=[])
    configured = {"z": {"a": 1.0, "b": 2.0}}
    assert merge_rtt(configured, {"z": {"b": 0.5}, "y": {"a": 0.1}}) == {"z": {"a": 1.0, "b": 0.5}, "y": {"a": 0.1}}
    assert merge_rtt(configured, None) == configured and configured == {"z": {"a": 1.0, "b": 2.0}}


# -- the back-end: weighting, prior, parsing -----------------------------------------------------
def test_recency_mean_weighs_each_report_by_its_buckets_age():
    assert recency_mean([], 60) is None and recency_mean([(0.0, 0, 0.0)], 60) is None
    assert recency_mean([(0.0, 4, 0.4)], 60) == pytest.approx(0.1)
    # a bucket one half-life older weighs each of its reports half: (0.5 * 0.2 + 0.4) / (0.5 * 2 + 1)
    assert recency_mean([(0.0, 2, 0.2), (60.0, 1, 0.4)], 60) == pytest.approx(0.25)
    # the bucket count matters: twice the reports, twice the weight
    assert recency_mean([(0.0, 1, 0.1), (0.0, 1, 0.1), (60.0, 1, 0.4)], 60) == pytest.approx(0.25)
    # no clock: shifting every bucket changes nothing; a long half-life is the plain mean
    assert recency_mean([(1e9, 2, 0.2), (1e9 + 60, 1, 0.4)], 60) == pytest.approx(0.25)
    assert recency_mean([(0.0, 2, 0.2), (600.0, 1, 0.4)], 1e12) == pytest.approx(0.2)
    # a short half-life follows a change: 10 minutes of 0.1 s, then one bucket of 0.02 s
    old = [(float(t), 10, 1.0) for t in range(0, 600, 10)]
    assert recency_mean(old + [(600.0, 10, 0.2)], 10) == pytest.approx(0.02, abs=0.045)
    assert recency_mean(old + [(600.0, 10, 0.2)], 10) < recency_mean(old + [(600.0, 10, 0.2)], 60) < 0.1


ALTO = CostMap({"z1": {"a": 0.02, "b": 0.04}, "default": {"a": 0.3}})


def test_reports_then_the_alto_prior_then_the_default():
    reports = [RttStat("z1", "a", ((0.0, 3, 0.015),)), RttStat(None, "b", ((0.0, 1, 0.07),)),
               RttStat("z1", "gone", ((0.0, 5, 1.0),))]
    table, sources = rtt_table_from_reports(reports, ["z1", "default", "z9"], ["a", "b"], cost_map=ALTO,
                                            default_rtt=0.05, half_life=60)
    assert table == {"z1": {"a": pytest.approx(0.005), "b": 0.04},        # measured, ALTO
                     "default": {"a": 0.3, "b": pytest.approx(0.07)},     # ALTO default row, measured (no zone)
                     "z9": {"a": 0.3, "b": 0.05}}                         # ALTO default row, default
    assert sources == {"measured": 2, "alto": 3, "default": 1}


def test_build_uses_reports_not_latency_and_exec_time_once():
    # latency (end-to-end, execution included) is what the thesis used; reports are the network alone
    rows = [req(node="a", latency=0.9, rtt=0.010, rtt_node="a", time=1000.0, duration=0.2),
            req(node="a", latency=0.9, rtt=0.012, rtt_node="a", time=1001.0, duration=0.2),
            req(node="b", zone="z1", rtt=0.5, rtt_node="down", time=1002.0)]        # a node not ready
    settings = dict(nodes=NODES, catalog=CATALOG, deployments=[], cost_map=ALTO)
    built = build_problem(requests=rows, settings=BuildSettings(min_exec_samples=2), **settings)
    group = built.problem.requests[0]
    assert group.rtt == {"a": pytest.approx(0.011), "b": 0.04}
    assert built.problem.exec_time[HP2]["a"] == pytest.approx(0.2)     # once, from the proxy's durations
    assert built.summary["rtt_sources"] == {"measured": 1, "alto": 1, "default": 0}
    assert built.summary["rtt_source"] == "reports" and built.summary["rtt_half_life"] == 60.0
    assert built.measured_rtt == {"z1": {"a": pytest.approx(0.011)}}
    thesis = build_problem(requests=rows, settings=BuildSettings(min_exec_samples=2, rtt_source="latency"), **settings)
    assert thesis.problem.requests[0].rtt == {"a": pytest.approx(0.9), "b": 0.04}
    assert thesis.measured_rtt == {"z1": {"a": pytest.approx(0.9)}}
    with pytest.raises(ValueError):
        BuildSettings(rtt_source="ping")
    with pytest.raises(ValueError):
        BuildSettings(rtt_half_life=0)


def test_rows_and_the_summary_give_the_same_reports(tmp_path):
    store = StatsStore(tmp_path / "fe.db")
    for i in range(50):
        store.record(request=rec(1000.0 + i * 0.7, zone=[None, "z1", "z2"][i % 3], rtt=0.001 * i,
                                 rtt_node=["a", "b"][i % 2]), increments=[])
    rows, _, _ = parse_requests({"requests": store.requests()})
    summary = parse_summary(store.summary(window=600, now=1040.0))
    store.close()
    from_rows = {(r.zone, r.node): r.buckets for r in rtt_reports_from_rows(rows)}
    from_summary = {(r.zone, r.node): r.buckets for r in summary.rtt}
    assert from_rows.keys() == from_summary.keys() and len(from_rows) == 6
    for key, buckets in from_rows.items():
        assert [(t, c) for t, c, _ in buckets] == [(t, c) for t, c, _ in from_summary[key]]
        assert [s for _, _, s in buckets] == pytest.approx([s for _, _, s in from_summary[key]])
    assert summary.until == 1040.0 and BUCKET_SECONDS == 10


@pytest.mark.parametrize("rtt", [
    [{"zone": "z", "buckets": []}],
    [{"zone": "z", "node": "a"}],
    [{"zone": 5, "node": "a", "buckets": []}],
    [{"zone": "z", "node": "a", "buckets": [[0, 1]]}],
    [{"zone": "z", "node": "a", "buckets": [[0, -1, 0.1]]}],
    [{"zone": "z", "node": "a", "buckets": [[0, 1, -0.1]]}],
    [{"zone": "z", "node": "a", "buckets": [[0, 1, 61.0]]}],
    [{"zone": "z", "node": "a", "buckets": [["x", 1, 0.1]]}],
    ["junk"],
])
def test_malformed_rtt_summaries_are_refused(rtt):
    with pytest.raises(FrontendError, match="rtt"):
        parse_summary({"groups": [], "rtt": rtt})


def test_a_summary_without_reports_and_rows_with_odd_reports():
    assert parse_summary({"groups": []}).rtt == []
    rows, skipped, _ = parse_requests({"requests": [
        {"time": 1.0, "model": "m", "rtt": 0.01, "rtt_node": "a"},
        {"time": 1.0, "model": "m", "rtt": 0.01, "rtt_node": None},
        {"time": 1.0, "model": "m", "rtt": -1, "rtt_node": "a"},      # malformed: the row is skipped
        {"time": 1.0, "model": "m", "rtt": 61, "rtt_node": "a"},      # more than the front-end takes
        {"time": 1.0, "model": "m"}]})
    assert skipped == 1 and [(r.rtt, r.rtt_node) for r in rows] == [(0.01, "a")] + [(None, None)] * 3


def test_the_cli_takes_the_rtt_options():
    from backend.__main__ import build_parser, config_from_args

    parser = build_parser()
    base = ["--mode", "1", "--frontend", "http://x", "--alto", ""]
    cfg = config_from_args(parser.parse_args(base))
    assert (cfg.build.rtt_source, cfg.build.rtt_half_life) == ("reports", 60.0)
    cfg = config_from_args(parser.parse_args(base + ["--rtt-source", "latency", "--rtt-half-life", "15"]))
    assert (cfg.build.rtt_source, cfg.build.rtt_half_life) == ("latency", 15.0)
    for bad in (["--rtt-source", "ping"], ["--rtt-half-life", "0"], ["--rtt-half-life", "nan"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(base + bad)
        assert info.value.code == 2

