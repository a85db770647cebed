"""Parsing the front-end's /stats answers into the back-end's dataclasses; the report document."""
from __future__ import annotations

import json

import pytest

from backend.collect import (FrontendError, index_of_dispersion, parse_memory, parse_models, parse_requests,
                             parse_summary)
from backend.report import RunReport, write_report


def test_requests_are_parsed_and_malformed_rows_counted():
    doc = {"requests": [
        {"id": 1, "time": 10.0, "model": "m", "zone": "z1", "latency": 0.02, "node": "a", "status": 200,
         "duration": 0.004, "kind": "proxy", "cached": False},
        {"id": 2, "time": 11.0, "model": "m", "zone": None, "latency": None, "node": None, "status": 503,
         "duration": None},
        {"id": 3, "time": "later", "model": "m"},
        "junk",
        {"id": 4, "time": 12.0, "model": "m", "latency": -3, "duration": float("inf"), "status": True},
        {"id": 5, "time": 13.0, "model": "m", "zone": "", "node": "", "kind": "", "future_field": 1},
    ]}
    rows, skipped, last_id = parse_requests(doc)
    assert skipped == 3 and last_id == 5 and len(rows) == 3
    assert rows[0].zone == "z1" and rows[0].latency == 0.02 and rows[0].kind == "proxy"
    assert rows[1].zone is None and rows[1].status == 503
    # "" means not known; a field a newer front-end adds is ignored
    assert rows[2].zone is None and rows[2].node is None and rows[2].kind is None and rows[2].latency is None
    with pytest.raises(FrontendError):
        parse_requests({"rows": []})


def test_models_and_memory():
    models = parse_models({"models": [{"model": "m", "count": 5, "last_requested": 9.0, "instances": [
        {"node": "a", "provisioned": 1.0, "count": 3, "last_requested": 8.0}]}, {"model": "n"}]})
    assert models[0].instances[0].count == 3 and models[1].count == 0 and models[1].instances == ()
    nodes = parse_memory({"nodes": [{"node": "a", "ready": True, "class": "small", "total": 100, "used": 40,
                                     "available": 60, "cpu_capacity": 4, "cpu_usage": 0.5},
                                    {"node": "b", "ready": False, "total": 50, "used": 10}]})
    assert nodes[0].available == 60 and nodes[0].node_class == "small"
    assert nodes[1].available == 40 and not nodes[1].ready and nodes[1].node_class is None
    with pytest.raises(FrontendError, match=r"/stats/memory: nodes\[0\]\.total: missing"):
        parse_memory({"nodes": [{"node": "a"}]})
    with pytest.raises(FrontendError, match=r"models\[0\]\.model: missing"):
        parse_models({"models": [{"count": 1}]})


@pytest.mark.parametrize("parse, doc, expect", [
    (parse_memory, {"nodes": [{"node": "a", "total": float("nan")}]}, "nodes[0].total: must be a finite number"),
    (parse_memory, {"nodes": [{"node": "a", "total": 9, "tier": "fog"}]}, "nodes[0].tier: must be one of edge, cloud"),
    (parse_memory, {"nodes": [{"node": "a", "total": 9, "ready": "yes"}]}, "nodes[0].ready: must be true or false"),
    (parse_models, {"models": [{"model": "m", "count": True}]}, "models[0].count: must be an integer >= 0"),
    (parse_models, {"models": [{"model": "m", "instances": [{"node": 3}]}]}, "models[0].instances[0].node"),
    (parse_summary, {"groups": [{"model": "m", "count": 1, "ok": 1, "latency_count": 1}]},
     "groups[0]: latency_mean is required when latency_count > 0"),
    (parse_summary, {"groups": [], "durations": [{"model": "m", "bins": [{"bin": 1, "count": 1, "sum": -1}]}]},
     "durations[0].bins[0].sum: must be a non-negative number, got -1"),
    (parse_summary, {"groups": [], "arrivals": {"since": 0, "seconds": 10, "models": [
        {"model": "m", "count": -1, "sumsq": 1}]}}, "arrivals.models[0].count: must be a non-negative number, got -1"),
    (parse_summary, {"groups": [], "arrivals": {"since": 0, "seconds": 9.5, "models": []}},
     "arrivals.seconds: must be an integer, got 9.5"),
    (parse_summary, {"groups": [], "arrivals": {"since": "0", "seconds": 10, "models": []}},
     "arrivals.since: must be a number, got '0'"),
    (parse_summary, {"groups": [], "arrivals": {"since": 0, "seconds": 10}}, "arrivals.models: missing"),
    (parse_summary, {"groups": [], "arrivals": [1, 2]}, "arrivals: must be an object"),
    (parse_summary, {"groups": [], "arrivals": {"since": 0, "seconds": 10, "models": [
        {"model": "m", "count": 20, "sumsq": 20}]}},         # 20 requests in 10 s: some second had 2
     "arrivals: models[0]: sumsq 20 is impossible for 20 requests in 10 seconds"),
    (parse_summary, {"groups": [], "arrivals": {"since": 0, "seconds": 10, "models": [
        {"model": "m", "count": 3, "sumsq": 10}]}}, "arrivals: models[0]: sumsq 10 is impossible"),
    (parse_summary, {"groups": [], "arrivals": {"since": 0, "seconds": 10, "models": [
        {"model": "m", "count": 1, "sumsq": 1}, {"model": "m", "count": 1, "sumsq": 1}]}},
     "arrivals: models[1]: model 'm' is listed twice"),
    (parse_summary, {"groups": [], "pace": [{"model": "m", "count": 1, "sum": 0.02}]}, "pace[0].node: missing"),
    (parse_summary, {"groups": [], "pace": [{"model": "m", "node": "a", "count": 1.5, "sum": 0.02}]},
     "pace[0].count: must be an integer"),
    (parse_summary, {"groups": [], "pace": [{"model": "m", "node": "a", "count": 1, "sum": -0.02}]},
     "pace[0].sum: must be a non-negative number, got -0.02"),
    (parse_summary, {"groups": [], "pace": [{"model": "m", "node": "a", "count": 1, "sum": float("inf")}]},
     "pace[0].sum: must be a finite number"),
    (parse_summary, {"groups": [], "pace": [{"model": "m", "node": "a", "count": 2, "sum": 121}]},
     "pace[0]: sum 121 is more than 60 s per report"),
    (parse_summary, {"groups": [], "pace": [{"model": "m", "node": "a", "count": 2, "sum": 0}]},
     "pace[0]: sum 0 is impossible for 2 reports"),
    (parse_summary, {"groups": [], "pace": {"model": "m"}}, "pace: must be a list"),
    (parse_summary, {"groups": [], "arrivals": {"since": 0, "seconds": 10, "models": [],
                                                "total": {"count": 10, "sumsq": 5}}},
     "arrivals: total: sumsq 5 is impossible for 10 requests in 10 seconds"),
    (parse_summary, {"groups": [], "pace_idle": [{"model": "m", "node": "a", "count": 2, "sum": 121}]},
     "pace_idle[0]: sum 121 is more than 60 s per report"),
    (parse_summary, {"groups": [], "pace_idle": [{"model": "m", "count": 1, "sum": 0.02}]},
     "pace_idle[0].node: missing"),
])
def test_a_malformed_answer_names_its_route_and_field(parse, doc, expect):
    with pytest.raises(FrontendError) as caught:
        parse(doc)
    assert expect in str(caught.value) and "\n" not in str(caught.value)


def test_arrivals_become_each_models_index_of_dispersion():
    # per-second counts over 10 s: a [0, 0, 0, 15, 0, 0, 0, 0, 10, 0], b [2, 3] x 5, c one request
    doc = {"groups": [], "arrivals": {"since": 1000, "seconds": 10, "future_field": True, "models": [
        {"model": "a", "count": 25, "sumsq": 325, "future_field": 1}, {"model": "b", "count": 25, "sumsq": 65},
        {"model": "c", "count": 1, "sumsq": 1}, {"model": "d", "count": 0, "sumsq": 0}]}}
    summary = parse_summary(doc)
    # (sumsq/n - (count/n)^2) / (count/n): a (32.5 - 6.25) / 2.5, b (6.5 - 6.25) / 2.5, c (0.1 - 0.01) / 0.1
    assert summary.dispersion == {"a": pytest.approx(10.5), "b": pytest.approx(0.1), "c": pytest.approx(0.9)}
    assert summary.arrival_count == {"a": 25, "b": 25, "c": 1}          # d: no request, no entry
    # one whole second says nothing about the variance; a front-end without `arrivals` is accepted
    one = {"groups": [], "arrivals": {"since": 1000, "seconds": 1, "models": [{"model": "a", "count": 4, "sumsq": 16}]}}
    assert parse_summary(one).dispersion == {} and parse_summary(one).arrival_count == {"a": 4}
    older = parse_summary({"groups": [], "since": 990.0})
    assert older.dispersion == {} and older.arrival_count == {} and older.since == 990.0


def test_all_models_together_become_the_joint_index_of_dispersion():
    # a [0, 0, 0, 15, 0, 0, 0, 0, 10, 0] and b [0, 0, 0, 5, 0, 0, 0, 0, 5, 0]: bursts at the same seconds
    doc = {"groups": [], "arrivals": {"since": 1000, "seconds": 10, "models": [
        {"model": "a", "count": 25, "sumsq": 325}, {"model": "b", "count": 10, "sumsq": 50}],
        "total": {"count": 35, "sumsq": 20 ** 2 + 15 ** 2}}}
    summary = parse_summary(doc)
    assert summary.arrival_total == (35, 625)
    assert summary.joint_dispersion == pytest.approx((62.5 - 3.5 ** 2) / 3.5)        # 14.36
    weighted = sum(summary.dispersion[m] * summary.arrival_count[m] for m in "ab") / 35
    assert summary.joint_dispersion > weighted            # together burstier than independent streams would be
    # a front-end without `total`: unknown
    del doc["arrivals"]["total"]
    assert parse_summary(doc).joint_dispersion is None and parse_summary(doc).arrival_total is None


def test_pace_becomes_each_model_and_nodes_count_and_mean():
    doc = {"groups": [], "pace": [
        {"model": "m", "node": "a", "count": 4, "sum": 0.2, "future_field": 1},
        {"model": "m", "node": "b", "count": 1, "sum": 0.03},
        {"model": "n", "node": "a", "count": 0, "sum": 0}]}            # no report: no entry
    assert parse_summary(doc).pace == {("m", "a"): (4, pytest.approx(0.05)), ("m", "b"): (1, pytest.approx(0.03))}
    # a front-end from before the pace reports: none
    assert parse_summary({"groups": []}).pace == {} and parse_summary({"groups": [], "pace": []}).pace == {}


def test_index_of_dispersion_is_none_without_requests_or_two_seconds_and_never_negative():
    assert index_of_dispersion(0, 0, 10) is None and index_of_dispersion(5, 9, 1) is None
    assert index_of_dispersion(5, 5, 10) == pytest.approx(0.5)
    # equal counts every second: variance 0, however the floats round
    assert all(index_of_dispersion(c * n, c * c * n, n) == 0.0 for c in (1, 3, 7, 10**6) for n in (2, 3, 10, 86400))
    assert index_of_dispersion(20, 20, 10) == 0.0              # an impossible answer still gives no negative


def test_report_document_counts_actions_and_is_strict_json(tmp_path):
    r = RunReport(mode=2, started=1.0, frontend="http://f")
    r.actions = [{"kind": "provision", "model": "m", "node": "a", "ok": True},
                 {"kind": "delete", "model": "m", "node": "b", "ok": True},
                 {"kind": "delete", "model": "n", "node": "b", "ok": False, "error": "x"},
                 {"kind": "delete", "model": "o", "node": "b", "ok": False, "skipped": "cap"}]
    r.provisioning_seconds = 1.2345
    doc = json.loads(r.to_json())
    assert doc["summary"] == {"provisioned": 1, "deleted": 1, "failed": 1, "skipped": 1}
    assert doc["provisioning_latency_ms"] == 1234.5
    for key in ("inputs", "solver", "plan", "actions", "errors", "exit_code", "timings_ms"):
        assert key in doc
    write_report(r.to_json(), tmp_path / "sub" / "r.json")
    assert json.loads((tmp_path / "sub" / "r.json").read_text())["mode"] == 2
