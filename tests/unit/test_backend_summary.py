"""The back-end reads the window as /stats/summary aggregates: parsing, the fallback to rows for an
older front-end, the same Problem from the same requests given as rows and as their summary, and the
arrivals' index of dispersion read over HTTP."""
from __future__ import annotations

import math
import random
import statistics
import time
from collections import Counter

import pytest

from backend.alto import CostMap
from backend.build import BuildSettings, build_problem
from backend.collect import FrontendClient, FrontendError, collect, parse_requests, parse_summary
from frontend import create_app
from frontend.store import RELATIVE_ERROR, RequestRecord, StatsStore
from tests.frontend_server import ServerThread
from test_backend_build import ALTO, CATALOG, HP2, LOGREG, NODES

FOREST = "digits_forest"


def _records(seed: int, n: int) -> list[RequestRecord]:
    rng = random.Random(seed)
    out = []
    base = {HP2: 0.004, LOGREG: 0.02, FOREST: 0.05, "ghost": 0.01}
    for i in range(n):
        model = rng.choice([HP2, HP2, LOGREG, FOREST, "ghost"])
        node = rng.choice(["a", "b", "down", None])
        kind = rng.choice(["proxy", "proxy", "proxy", "lookup"])
        status = rng.choice([200] * 8 + [502, 503, 404]) if node else 503
        out.append(RequestRecord(
            time=10_000.0 + i * 0.01, model=model, kind=kind, zone=rng.choice(["z1", "z2", "far", None]),
            latency=rng.choice([None, rng.uniform(0.001, 0.2)]), node=node,
            endpoint="127.0.0.1:1" if node else None, status=status,
            duration=base[model] * rng.lognormvariate(0, 0.5) * (1 if kind == "proxy" else 0.01),
            cached=kind == "proxy" and rng.random() < 0.1, known_model=model != "ghost"))
    return out


@pytest.mark.parametrize("seed,n", [(1, 40), (2, 600), (3, 3000)])
@pytest.mark.parametrize("mode", [1, 2])
def test_rows_and_their_summary_build_the_same_problem(tmp_path, seed, n, mode):
    store = StatsStore(tmp_path / "fe.db", flush_interval=0.05)
    for record in _records(seed, n):
        store.record(request=record, increments=[])
    rows, skipped, _ = parse_requests({"requests": store.requests(limit=100_000)})
    summary = parse_summary(store.summary(window=600, now=10_000.0 + n * 0.01))
    store.close()
    assert skipped == 0 and len(rows) == n == summary.requests
    settings = BuildSettings(mode=mode, min_exec_samples=5)
    common = dict(nodes=NODES, catalog=CATALOG, deployments=[], cost_map=ALTO, settings=settings)
    from_rows = build_problem(requests=rows, **common)
    from_summary = build_problem(requests=[], summary=summary, **common)
    a, b = from_rows.problem, from_summary.problem
    assert from_rows.groups == from_summary.groups
    assert [(g.model, g.count) for g in a.requests] == [(g.model, g.count) for g in b.requests]
    for ga, gb in zip(a.requests, b.requests):
        assert ga.rtt.keys() == gb.rtt.keys()
        for node in ga.rtt:
            assert gb.rtt[node] == pytest.approx(ga.rtt[node], rel=1e-9)      # a mean: exact
    assert a.exec_time.keys() == b.exec_time.keys()
    for model in a.exec_time:
        for node, exact in a.exec_time[model].items():
            assert b.exec_time[model][node] == pytest.approx(exact, rel=RELATIVE_ERROR), (model, node)
    assert [(n.name, n.memory, n.cpu) for n in a.nodes] == [(n.name, n.memory, n.cpu) for n in b.nodes]
    for ma, mb in zip(a.models, b.models):
        assert (ma.name, ma.memory) == (mb.name, mb.memory)
        assert mb.cpu == pytest.approx(ma.cpu, rel=RELATIVE_ERROR)
    assert a.deployed == b.deployed
    same = {k: v for k, v in from_rows.summary.items() if k != "statistics"}
    assert same == {k: v for k, v in from_summary.summary.items() if k != "statistics"}
    assert (from_rows.summary["statistics"], from_summary.summary["statistics"]) == ("rows", "summary")
    b.validate()


def test_exec_time_from_equal_durations_is_exact():
    doc = {"since": 0.0, "histogram": {"relative_error": RELATIVE_ERROR}, "groups": [
        {"model": HP2, "zone": "z1", "node": "b", "kind": "proxy", "count": 3, "ok": 3, "latency_count": 0,
         "latency_mean": None},
        {"model": HP2, "zone": "z2", "node": "b", "kind": "proxy", "count": 2, "ok": 2, "latency_count": 2,
         "latency_mean": 0.25},
        {"model": HP2, "zone": "z2", "node": "b", "kind": "lookup", "count": 9, "ok": 9, "latency_count": 0,
         "latency_mean": None}], "durations": [
        {"model": HP2, "node": "b", "kind": "proxy",
         "bins": [{"bin": 300, "count": 3, "sum": 1.5}, {"bin": 280, "count": 2, "sum": 0.2}]},
        {"model": HP2, "node": "b", "kind": "lookup", "bins": [{"bin": 100, "count": 9, "sum": 9e-5}]}]}
    built = build_problem(requests=[], summary=parse_summary(doc), nodes=NODES, catalog=CATALOG, deployments=[],
                          cost_map=ALTO, settings=BuildSettings(min_exec_samples=5, rtt_source="latency"))
    assert built.problem.exec_time[HP2] == {"a": 0.004, "b": 0.5}      # median of 0.5 x3, 0.1 x2 (lookups not)
    groups = dict(zip(built.groups, built.problem.requests))
    assert groups[(HP2, "z2")].count == 11 and groups[(HP2, "z2")].rtt["b"] == 0.25


@pytest.mark.parametrize("doc", [
    {"rows": []},
    {"groups": [{"count": 1}]},
    {"groups": [{"model": "m", "count": -1, "ok": 0, "latency_count": 0}]},
    {"groups": [{"model": "m", "count": 1, "ok": 1, "latency_count": 1, "latency_mean": None}]},
    {"groups": [], "durations": [{"model": "m", "bins": [{"bin": 1, "count": 1, "sum": "x"}]}]},
    {"groups": [], "durations": [{"bins": []}]},
])
def test_malformed_summaries_are_refused(doc):
    with pytest.raises(FrontendError):
        parse_summary(doc)


class _Fake(FrontendClient):
    """A FrontendClient answering from a dict of path -> (status, document)."""

    def __init__(self, answers):
        super().__init__("http://fake")
        self.answers = answers
        self.calls = []

    def _call(self, method, path, **kwargs):
        self.calls.append(path)
        status, doc = self.answers[path]
        if status >= 400:
            raise FrontendError(f"{path} -> {status}", status=status)
        return doc


ROW = {"id": 1, "time": 99.0, "model": HP2, "zone": "z1", "latency": 0.1, "node": "a", "status": 200,
       "duration": 0.01, "kind": "proxy", "cached": False}


def test_collect_uses_the_summary_and_falls_back_to_rows_only_on_404():
    base = {"/stats/models": (200, {"models": []}), "/stats/memory": (200, {"nodes": []}),
            "/stats/requests": (200, {"requests": [ROW]})}
    summary_doc = {"since": 90.0, "histogram": {"relative_error": RELATIVE_ERROR}, "groups": [
        {"model": HP2, "zone": "z1", "node": "a", "kind": "proxy", "count": 4, "ok": 4, "latency_count": 4,
         "latency_mean": 0.1}], "durations": [
        {"model": HP2, "node": "a", "kind": "proxy", "bins": [{"bin": 200, "count": 4, "sum": 0.04}]}]}
    new = _Fake({**base, "/stats/summary": (200, summary_doc)})
    observed = collect(new, window=600, now=100.0)
    assert observed.summary is not None and observed.requests == [] and observed.requests_read == 4
    assert "/stats/requests" not in new.calls and observed.since == 90.0 and observed.warnings == []
    old = _Fake({**base, "/stats/summary": (404, None)})
    observed = collect(old, window=600, now=100.0)
    assert observed.summary is None and len(observed.requests) == 1 and observed.requests_read == 1
    assert "/stats/requests" in old.calls and "row by row" in observed.warnings[0]
    for status in (500, 503, 403):
        with pytest.raises(FrontendError):
            collect(_Fake({**base, "/stats/summary": (status, None)}), window=600, now=100.0)


def _step_store(tmp_path) -> StatsStore:
    """1 request/s of HP2 from z1 for 20 s, then 4/s for 10 s (a rise in load at t = 10,020)."""
    store = StatsStore(tmp_path / "step.db", flush_interval=0.05)
    times = [10_000.0 + i for i in range(20)] + [10_020.0 + i * 0.25 for i in range(40)]
    for t in times:
        store.record(request=RequestRecord(time=t, model=HP2, kind="proxy", zone="z1", latency=None, node="a",
                                           endpoint="127.0.0.1:1", status=200, duration=0.004, cached=False,
                                           known_model=True), increments=[])
    return store


def test_a_rate_window_plans_the_load_aware_problem_for_a_rise_at_once(tmp_path):
    store = _step_store(tmp_path)
    window = parse_summary(store.summary(window=30, now=10_029.9))
    recent = parse_summary(store.summary(window=10, now=10_029.9))
    store.close()
    # whole 10 s buckets: the last 10 s ask for [10,010, 10,029.9], 19.9 s holding 10 + 40 requests
    assert window.requests == 60 and recent.requests == 50 and recent.since == 10_010.0
    common = dict(requests=[], nodes=NODES, catalog=CATALOG, deployments=[], cost_map=ALTO, summary=window,
                  recent=recent)
    plain = build_problem(settings=BuildSettings(formulation="latency", window=30), **common)
    peak = build_problem(settings=BuildSettings(formulation="latency", window=30, rate_window=10), **common)
    # the window's buckets span [9,990, 10,029.9]: 60 requests over 39.9 s (not over the 30 s asked)
    assert [g.count for g in plain.problem.requests] == [60] and plain.problem.window == pytest.approx(39.9)
    assert plain.summary["rates"] == {f"{HP2}/z1": round(60 / 39.9, 6)}
    # the step is not Poisson: its per-second counts are over-dispersed, as the report says; the
    # queueing inputs carry that and the catalog's low-load pace per node (solver.predict)
    assert window.dispersion[HP2] > 1 and plain.summary["dispersion"] == {HP2: round(window.dispersion[HP2], 3)}
    assert plain.queueing.dispersion == window.dispersion
    assert plain.queueing.idle[HP2] == {n.node: CATALOG[HP2].idle_time_on(n.node_class or "") for n in NODES if n.ready}
    assert placement_has_no_queueing(common)
    # recent: 50 / 19.9 s = 2.51 req/s, planned as ceil(2.51 * 39.9) = 101 requests over the window
    assert [g.count for g in peak.problem.requests] == [101] and peak.problem.window == pytest.approx(39.9)
    assert peak.summary["rates"] == {f"{HP2}/z1": round(101 / 39.9, 6)}
    assert peak.summary["rates_from_recent"] == [f"{HP2}/z1"] and peak.summary["rates_over_seconds"] == 39.9
    # with a rate window, the queueing model's burstiness is measured over the stretch the rates come
    # from: the recent one for a group raised to its recent rate, as here (nearly even: 1 then 4/s),
    # so the step is not taken for bursts (for the others: steady_dispersion, tested below)
    assert window.arrival_seconds > recent.arrival_seconds >= 2 and window.arrival_sumsq[HP2] > 0
    assert window.dispersion[HP2] > 1 and peak.queueing.dispersion[HP2] == recent.dispersion[HP2] < 0.5
    assert plain.queueing.dispersion == window.dispersion            # no rate window: the window's own
    # a fall is followed by the window alone (the recent rate below it changes nothing), and the
    # formulations that plan counts, not rates, never look at it
    calm = build_problem(settings=BuildSettings(formulation="latency", window=30, rate_window=10),
                         **{**common, "recent": parse_summary({"groups": []})})
    assert [g.count for g in calm.problem.requests] == [60] and calm.summary["rates_from_recent"] == []
    placement = build_problem(settings=BuildSettings(formulation="placement", window=30, rate_window=10), **common)
    assert [g.count for g in placement.problem.requests] == [60]


def placement_has_no_queueing(common: dict) -> bool:
    built = build_problem(settings=BuildSettings(formulation="placement", window=30), **common)
    return built.queueing is None and "dispersion" not in built.summary


def test_recent_peaks_raise_only_the_groups_that_rose():
    from backend.build import recent_peaks

    # the window's pace predicts 10 of 30 in the last third: 20 is a rise (> 10 + 2 x sqrt(10)),
    # 15 is within the noise of a steady load, 5 a fall; a new group (4 > 0 + 2 x 1) rose
    counts, raised = recent_peaks({("m", "z1"): 30, ("m", "z2"): 30, ("m", "z3"): 30},
                                  {("m", "z1"): 20, ("m", "z2"): 15, ("m", "z3"): 5, ("n", "z1"): 4}, scale=3.0)
    assert counts == {("m", "z1"): 60, ("m", "z2"): 30, ("m", "z3"): 30, ("n", "z1"): 12}
    assert raised == {("m", "z1"): 60, ("n", "z1"): 12}
    assert recent_peaks({("m", "z1"): 30}, {("m", "z1"): 1}, scale=3.0)[1] == {}
    # bursty arrivals (index of dispersion 9): a deviation is 3 Poisson ones, so 20 is a burst, 40 a rise
    bursty = {"m": 9.0}
    assert recent_peaks({("m", "z1"): 30}, {("m", "z1"): 20}, scale=3.0, dispersion=bursty)[1] == {}
    assert recent_peaks({("m", "z1"): 30}, {("m", "z1"): 40}, scale=3.0, dispersion=bursty)[1] == {("m", "z1"): 120}
    assert recent_peaks({("m", "z1"): 30}, {("m", "z1"): 20}, scale=3.0, dispersion={"m": 0.2})[1] == {
        ("m", "z1"): 60}                                 # smoother than Poisson: never a narrower test than Poisson's


def test_collect_reads_the_recent_summary_only_when_asked():
    doc = {"since": 90.0, "groups": [{"model": HP2, "zone": "z1", "node": "a", "kind": "proxy", "count": 4,
                                      "ok": 4, "latency_count": 0}]}
    fake = _Fake({"/stats/models": (200, {"models": []}), "/stats/memory": (200, {"nodes": []}),
                  "/stats/summary": (200, doc)})
    assert collect(fake, window=600, now=100.0).recent is None and fake.calls.count("/stats/summary") == 1
    observed = collect(fake, window=600, now=100.0, recent=10)
    assert observed.recent is not None and observed.recent.requests == 4 and fake.calls.count("/stats/summary") == 3


def test_the_rate_window_flag():
    from backend.__main__ import build_parser, config_from_args
    from backend.pipeline import UsageError

    parser = build_parser()
    base = ["--mode", "1", "--frontend", "http://x", "--formulation", "latency", "--window", "30"]
    assert config_from_args(parser.parse_args(base)).build.rate_window == 0.0
    assert config_from_args(parser.parse_args(base + ["--rate-window", "10"])).build.rate_window == 10.0
    with pytest.raises(UsageError, match="--rate-window 40 is longer than --window 30"):
        config_from_args(parser.parse_args(base + ["--rate-window", "40"]))


def _arrival_times(start: float, end: float, gap) -> list[float]:
    times, t = [], start + gap()
    while t < end:
        times.append(t)
        t += gap()
    return times


def test_a_frontend_over_http_gives_poisson_arrivals_a_dispersion_near_1_and_bursty_ones_more(tmp_path):
    """5 requests/s for 300 s: exponential gaps (Poisson, index 1) and Gamma gaps with CV 3 (shape
    1/9: index CV^2 = 9 over long counts, less over 1 s), recorded by a front-end served on loopback."""
    rng = random.Random(11)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("nodes:\n  - {name: a, address: 127.254.254.2, memory: 1000, cpu: 1.0, class: small}\n")
    token = "arrivals-token-0123456789"
    app = create_app({"cluster_settings": {"config_path": str(cluster), "state_path": str(tmp_path / "c.db")},
                      "database": str(tmp_path / "fe.db"), "token": token})
    window = 300
    with ServerThread(app) as server:
        start = math.floor(time.time()) - window
        # arrivals run on 60 s past now: on a busy machine the summary is asked a few seconds later
        # than planned, and its window must then hold arrivals, not empty seconds, at its end
        end = start + window + 60
        times = {HP2: _arrival_times(start, end, lambda: rng.expovariate(5.0)),
                 LOGREG: _arrival_times(start, end, lambda: rng.gammavariate(1 / 9, 9 / 5))}
        for model, ts in times.items():
            for t in ts:
                app.extensions["frontend"].store.record(request=RequestRecord(
                    time=t, model=model, kind="proxy", zone="z1", latency=None, node="a", endpoint="127.0.0.1:1",
                    status=200, duration=0.004), increments=[])
        client = FrontendClient(server.url, token=token)
        try:
            summary = client.summary(window)
        finally:
            client.close()
    since = math.floor(summary.until - window)          # the whole seconds the answer covers
    seconds = range(since, math.floor(summary.until))
    for model, ts in times.items():
        per_second = Counter(math.floor(t) for t in ts)
        counts = [per_second[s] for s in seconds]
        assert summary.arrival_count[model] == sum(counts)
        assert summary.dispersion[model] == pytest.approx(statistics.pvariance(counts) / statistics.mean(counts))
    # a Poisson sample's index over 300 s has a standard deviation of sqrt(2 / 299) = 0.08: 3 of them
    assert 0.75 < summary.dispersion[HP2] < 1.25 and summary.dispersion[LOGREG] > 4, summary.dispersion
    # both models together, per second: their index, which for independent streams is the models'
    # count-weighted mean (variances add, and so do means)
    together = [sum(Counter(math.floor(t) for t in ts)[s] for ts in times.values()) for s in seconds]
    assert summary.arrival_total == (sum(together), sum(n * n for n in together))
    assert summary.joint_dispersion == pytest.approx(statistics.pvariance(together) / statistics.mean(together))
    weighted = sum(summary.dispersion[m] * summary.arrival_count[m] for m in times) / sum(together)
    assert summary.joint_dispersion == pytest.approx(weighted, rel=0.35)


def _paced_inputs(window_extra: dict, recent_extra: dict) -> dict:
    """build_problem's inputs for 30 HP2 requests from z1 over a 30 s window (10_000-10_030) and its
    last 10 s, each summary with the given pace lists."""
    groups = [{"model": HP2, "zone": "z1", "node": "a", "kind": "lookup", "count": 30, "ok": 30,
               "latency_count": 0, "latency_sum": 0.0, "duration_count": 0, "duration_sum": 0.0, "last": 10_029.0}]
    window = parse_summary({"groups": groups, "since": 10_000.0, "until": 10_030.0, **window_extra})
    recent = parse_summary({"groups": groups, "since": 10_020.0, "until": 10_030.0, **recent_extra})
    return dict(requests=[], nodes=NODES, catalog=CATALOG, deployments=[], cost_map=ALTO, summary=window,
                recent=recent)


def test_the_load_aware_problem_plans_with_the_pace_the_servers_reported():
    """--pace measured (the default): the model servers' reported pace replaces the catalog's profile
    where it has --min-exec-samples answers, the rate window's where that holds enough."""
    common = _paced_inputs({"pace": [{"model": HP2, "node": "a", "count": 12, "sum": 12 * 0.5},
                                     {"model": HP2, "node": "b", "count": 2, "sum": 2 * 0.9},
                                     {"model": LOGREG, "node": "a", "count": 20, "sum": 20 * 0.2}]},
                           {"pace": [{"model": HP2, "node": "a", "count": 6, "sum": 6 * 0.7},
                                     {"model": LOGREG, "node": "a", "count": 3, "sum": 3 * 0.1}]})
    built = build_problem(settings=BuildSettings(formulation="latency", window=30, min_exec_samples=5), **common)
    exec_time = built.problem.exec_time
    assert exec_time[HP2]["a"] == pytest.approx(0.7)        # the last 10 s: 6 answers, a slower pace at once
    assert exec_time[LOGREG]["a"] == pytest.approx(0.2)     # 3 recent answers are too few: the window's
    assert exec_time[HP2]["b"] == CATALOG[HP2].exec_time_on("large")        # 2 answers: the profile
    assert built.summary["exec_time_sources"] == {"measured": 2, "profile": 2 * len(CATALOG) - 2}
    assert built.summary["paces"] == {f"{HP2}/a": 0.7, f"{LOGREG}/a": 0.2}     # in the report
    profile = build_problem(settings=BuildSettings(formulation="latency", window=30, pace=False), **common)
    assert profile.problem.exec_time[HP2]["a"] == CATALOG[HP2].exec_time_on("small")
    assert profile.summary["exec_time_sources"]["measured"] == 0
    # the formulations with fixed times never take the pace (their execution time is the proxy's)
    placement = build_problem(settings=BuildSettings(formulation="placement", window=30), **common)
    assert placement.problem.exec_time[HP2]["a"] == CATALOG[HP2].exec_time_on("small")


def test_the_load_aware_prediction_charges_an_idle_node_the_service_time_measured_after_idleness():
    """A request that finds its node idle is charged the service time the nodes measured for such
    answers (summary `pace_idle`), the rate window's where it holds --min-exec-samples reports, else
    the window's; the profile's elsewhere and with --pace profile."""
    common = _paced_inputs({"pace": [{"model": HP2, "node": "a", "count": 12, "sum": 12 * 0.5}],
                            "pace_idle": [{"model": HP2, "node": "a", "count": 8, "sum": 8 * 0.3},
                                          {"model": HP2, "node": "a", "count": 2, "sum": 2 * 0.4},
                                          {"model": LOGREG, "node": "a", "count": 9, "sum": 9 * 0.15},
                                          {"model": HP2, "node": "b", "count": 2, "sum": 2 * 0.1}]},
                           {"pace_idle": [{"model": HP2, "node": "a", "count": 5, "sum": 5 * 0.25},
                                          {"model": LOGREG, "node": "a", "count": 2, "sum": 2 * 0.12}]})
    assert common["summary"].pace_idle[(HP2, "a")] == (10, pytest.approx(0.32))      # listed twice: both count
    built = build_problem(settings=BuildSettings(formulation="latency", window=30, min_exec_samples=5), **common)
    idle = built.queueing.idle
    assert idle[HP2]["a"] == pytest.approx(0.25)          # the last 10 s hold 5 reports: theirs
    assert idle[LOGREG]["a"] == pytest.approx(0.15)       # 2 recent reports are too few: the window's
    assert idle[HP2]["b"] == CATALOG[HP2].idle_time_on("large")      # 2 reports: the profile
    assert built.summary["idle_paces"] == {f"{HP2}/a": 0.25, f"{LOGREG}/a": 0.15}     # in the report
    assert built.problem.exec_time[HP2]["a"] == pytest.approx(0.5)    # the back-to-back pace is apart
    profile = build_problem(settings=BuildSettings(formulation="latency", window=30, pace=False), **common)
    assert profile.queueing.idle[HP2]["a"] == CATALOG[HP2].idle_time_on("small")
    assert profile.summary["idle_paces"] == {}


def test_the_pace_flag():
    from backend.__main__ import build_parser, config_from_args

    parser = build_parser()
    base = ["--mode", "1", "--frontend", "http://x", "--formulation", "latency"]
    assert config_from_args(parser.parse_args(base)).build.pace is True
    assert config_from_args(parser.parse_args(base + ["--pace", "profile"])).build.pace is False
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--pace", "fast"])


def test_steady_dispersion_leaves_a_steady_stream_alone_and_takes_the_step_out():
    from backend.build import steady_dispersion
    from backend.collect import Summary, index_of_dispersion

    def summary(counts: list[int]) -> Summary:
        c, ss, n = sum(counts), sum(x * x for x in counts), len(counts)
        return Summary(groups=[], durations=[], since=0.0, relative_error=0.0,
                       dispersion={HP2: index_of_dispersion(c, ss, n)}, arrival_count={HP2: c},
                       arrival_sumsq={HP2: ss}, arrival_seconds=n)

    draw = random.Random(5)

    def poisson(rate: float, seconds: int) -> list[int]:
        out = []
        for _ in range(seconds):
            k, t = 0, draw.expovariate(rate)
            while t < 1:
                k, t = k + 1, t + draw.expovariate(rate)
            out.append(k)
        return out

    steady = poisson(20, 300)
    assert steady_dispersion(summary(steady), summary(steady[-100:]))[HP2] == pytest.approx(1.0, abs=0.25)
    step = poisson(5, 200) + poisson(40, 100)                   # Poisson within each stretch
    whole = summary(step)
    assert whole.dispersion[HP2] > 5
    assert steady_dispersion(whole, summary(step[-100:]))[HP2] == pytest.approx(1.0, abs=0.25)
    assert steady_dispersion(whole, summary(step[-1:])) == whole.dispersion     # a stretch of 1 s: unknown



def test_steady_joint_takes_the_step_out_of_all_models_together():
    from backend.build import steady_joint
    from backend.collect import Summary, index_of_dispersion

    def summary(counts: list[int], total: bool = True) -> Summary:
        c, ss, n = sum(counts), sum(x * x for x in counts), len(counts)
        return Summary(groups=[], durations=[], since=0.0, relative_error=0.0, arrival_seconds=n,
                       arrival_total=(c, ss) if total else None,
                       joint_dispersion=index_of_dispersion(c, ss, n) if total else None)

    draw = random.Random(7)
    step = [sum(draw.random() < p for _ in range(60)) for p in [0.1] * 200 + [0.6] * 100]   # binomial: index < 1
    whole = summary(step)
    assert whole.joint_dispersion > 5
    assert steady_joint(whole, summary(step[-100:])) == pytest.approx(0.7, abs=0.3)
    assert steady_joint(whole, summary(step[-1:])) == whole.joint_dispersion       # a stretch of 1 s: unknown
    assert steady_joint(whole, summary(step[-100:], total=False)) == whole.joint_dispersion
