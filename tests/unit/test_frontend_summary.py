"""GET /stats/summary: aggregates kept at write time, the duration histogram, the arrivals per second,
the pace reports per (model, node) (back to back and idle start), retention, upgrade of an old database, the route's validation and its OpenAPI schema; /stats/requests
refuses out-of-range numbers with 400."""
from __future__ import annotations

import math
import random
import sqlite3
import statistics
from dataclasses import replace

import pytest

from frontend import create_app
from frontend.store import (BUCKET_SECONDS, DURATION_BINS, HISTOGRAM_SECONDS, RELATIVE_ERROR, RequestRecord,
                            StatsStore, bin_quantile, duration_bin)

TOKEN = "summary-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def rec(t, model="m", *, kind="proxy", zone="z1", node="n-a", latency=0.01, status=200, duration=0.02,
        cached=False):
    return RequestRecord(time=t, model=model, kind=kind, zone=zone, latency=latency, node=node,
                         endpoint="127.0.0.1:1", status=status, duration=duration, cached=cached)


def group(doc, part="groups", **key):
    found = [g for g in doc[part] if all(g[k] == v for k, v in key.items())]
    assert len(found) == 1, (key, doc["groups"])
    return found[0]


def test_bins_are_log_spaced_and_quantiles_stay_within_the_stated_error():
    assert duration_bin(0.0) == 0 and duration_bin(-1.0) == 0 and duration_bin(float("nan")) == 0
    assert duration_bin(1e9) == DURATION_BINS - 1
    assert duration_bin(0.001) < duration_bin(0.0011) < duration_bin(0.002)
    assert RELATIVE_ERROR == pytest.approx(0.0443, abs=1e-4)
    rng = random.Random(7)
    for _ in range(50):
        samples = [rng.lognormvariate(math.log(0.01), 1.0) for _ in range(rng.randint(1, 400))]
        bins: dict[int, list] = {}
        for d in samples:
            acc = bins.setdefault(duration_bin(d), [0, 0.0])
            acc[0] += 1
            acc[1] += d
        entries = [(b, c, s) for b, (c, s) in bins.items()]
        exact = statistics.median(samples)
        assert abs(bin_quantile(entries, 0.5) - exact) <= RELATIVE_ERROR * exact
        p95 = sorted(samples)[math.ceil(0.95 * len(samples)) - 1]
        assert abs(bin_quantile(entries, 0.95) - p95) <= RELATIVE_ERROR * p95
    assert bin_quantile([], 0.5) is None
    assert bin_quantile([(5, 3, 0.3)], 0.5) == pytest.approx(0.1)        # equal values: exact


def test_summary_groups_counts_latency_durations_and_models(tmp_path):
    store = StatsStore(tmp_path / "fe.db", flush_interval=0.05)
    for i in range(10):
        store.record(request=rec(1000.0 + i, duration=0.01 * (i + 1), latency=0.1 if i % 2 else None), increments=[])
    store.record(request=rec(1001.5, status=502, duration=5.0), increments=[])          # not a served duration
    store.record(request=rec(1002.5, cached=True, duration=1e-5), increments=[])         # cache hit: neither
    store.record(request=rec(1003.0, kind="lookup", duration=1e-4, latency=0.3), increments=[])
    store.record(request=rec(1004.0, zone=None, node=None, status=503, latency=None), increments=[])
    store.record(request=rec(1005.0, model="ghost", status=404, node=None), increments=[])
    doc = store.summary(window=600, now=1010.0)       # flushes this process's buffer first
    proxy = group(doc, model="m", zone="z1", node="n-a", kind="proxy")
    assert proxy["count"] == 12 and proxy["ok"] == 11
    assert proxy["latency_count"] == 7 and proxy["latency_mean"] == pytest.approx((5 * 0.1 + 2 * 0.01) / 7)
    assert proxy["duration_count"] == 10
    assert proxy["duration_mean"] == pytest.approx(0.055)
    assert proxy["last_request"] == 1009.0
    hist = group(doc, "durations", model="m", node="n-a", kind="proxy")
    assert hist["count"] == 10 and hist["mean"] == pytest.approx(0.055)
    assert hist["p50"] == pytest.approx(0.055, rel=RELATIVE_ERROR)
    assert hist["p95"] == pytest.approx(0.1, rel=RELATIVE_ERROR)
    assert sum(b["count"] for b in hist["bins"]) == 10
    lookup = group(doc, model="m", kind="lookup")
    assert lookup["count"] == 1 and lookup["duration_mean"] == pytest.approx(1e-4)
    assert group(doc, "durations", model="m", kind="lookup")["p50"] == pytest.approx(1e-4)
    nowhere = group(doc, model="m", zone=None, node=None)
    assert nowhere["ok"] == 0 and nowhere["duration_count"] == 0 and nowhere["duration_mean"] is None
    assert nowhere["latency_mean"] is None
    assert len(doc["durations"]) == 2          # 5xx, 404 and cache hits have no duration histogram
    assert doc["models"] == [{"model": "ghost", "count": 1, "ok": 0, "last_request": 1005.0},
                             {"model": "m", "count": 14, "ok": 12, "last_request": 1009.0}]
    assert doc["since"] == math.floor((1010.0 - 600) / BUCKET_SECONDS) * BUCKET_SECONDS
    assert doc["histogram"]["since"] == math.floor((1010.0 - 600) / HISTOGRAM_SECONDS) * HISTOGRAM_SECONDS
    # The window is whole buckets: the one holding now - window is in, older ones are not.
    assert {m["model"]: m["count"] for m in store.summary(window=1, now=1009.5)["models"]} == {"ghost": 1, "m": 14}
    assert store.summary(window=1, now=1011.0)["groups"] == []
    store.close()


def test_aggregates_match_the_rows_with_several_processes_writing(tmp_path):
    """The aggregates are written in the same transaction as the rows: counts always agree."""
    import multiprocessing
    path = str(tmp_path / "fe.db")
    StatsStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, 300, seed)) for seed in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    store = StatsStore(path)
    doc = store.summary(window=3600, now=1200.0)
    assert sum(m["count"] for m in doc["models"]) == store.request_rows() == 900
    assert sum(m["count"] for m in doc["arrivals"]["models"]) == 900
    store.close()


def _hammer(path: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    store = StatsStore(path, flush_interval=0.01, max_buffer=50)
    for i in range(n):
        store.record(request=rec(1000.0 + rng.random() * 100, zone=rng.choice(["z1", "z2", None])), increments=[])
    store.close()


def test_prune_drops_whole_old_buckets_and_an_old_database_is_backfilled(tmp_path):
    store = StatsStore(tmp_path / "fe.db")
    for t in (1000.0, 1005.0, 1012.0, 1025.0):
        store.record(request=rec(t), increments=[])
    assert store.prune(older_than=1013.0) == 3
    counts = {g["last_request"]: g["count"] for g in [store.summary(window=10_000, now=1030.0)["groups"][0]]}
    assert counts == {1025.0: 2}            # the bucket [1010, 1020) still holds 1012; [1000, 1010) is gone
    store.prune(older_than=1081.0)
    doc = store.summary(window=10_000, now=1090.0)
    assert doc["groups"] == [] and doc["durations"] == []        # the 60 s histogram bucket [1020, 1080) too
    store.close()

    # A database written before the aggregates existed: they are built from its rows on first open.
    old = tmp_path / "old.db"
    StatsStore(old).close()
    conn = sqlite3.connect(old)
    conn.execute("DROP TABLE agg_requests")
    conn.execute("DROP TABLE agg_durations")
    conn.executemany("INSERT INTO requests (time, model, kind, zone, latency, node, endpoint, status, duration,"
                     " cached) VALUES (?, 'm', 'proxy', 'z1', 0.01, 'n-a', 'e', 200, 0.02, 0)",
                     [(1000.0 + i,) for i in range(7)])
    conn.commit()
    conn.close()
    upgraded = StatsStore(old)
    doc = upgraded.summary(window=600, now=1010.0)
    assert doc["models"][0]["count"] == 7 and doc["durations"][0]["p50"] == pytest.approx(0.02)
    upgraded.close()
    assert StatsStore(old).summary(window=600, now=1010.0)["models"][0]["count"] == 7    # not twice


EVEN = [2, 3, 2, 3, 2, 3, 2, 3, 2, 3]          # requests per second: 25, about one every 0.4 s
BURSTY = [0, 0, 0, 15, 0, 0, 0, 0, 10, 0]       # the same 25 in two bursts


def _per_second(store, model, counts, start):
    for i, n in enumerate(counts):
        for k in range(n):
            store.record(request=rec(start + i + (k + 1) / (n + 1), model), increments=[])


def _dispersion(entry, seconds):
    mean = entry["count"] / seconds
    return (entry["sumsq"] / seconds - mean * mean) / mean


def test_arrivals_count_and_square_the_requests_of_each_whole_second(tmp_path):
    store = StatsStore(tmp_path / "fe.db", flush_interval=0.05)
    _per_second(store, "even", EVEN, 1000)
    _per_second(store, "bursty", BURSTY, 1000)
    for t in (999.99, 1010.0, 1010.4):           # before the window; in the current second
        store.record(request=rec(t, "even"), increments=[])
    store.record(request=replace(rec(1005.5, "ghost"), known_model=False), increments=[])   # not in the catalog
    doc = store.summary(window=10, now=1010.5)
    together = [b + e for b, e in zip(BURSTY, EVEN)]          # all models' requests per second
    assert doc["arrivals"] == {"since": 1000, "seconds": 10, "models": [
        {"model": "bursty", "count": 25, "sumsq": 15 ** 2 + 10 ** 2},
        {"model": "even", "count": 25, "sumsq": 5 * 2 ** 2 + 5 * 3 ** 2}],
        "total": {"count": 50, "sumsq": sum(n * n for n in together)}}
    entries = {m["model"]: m for m in doc["arrivals"]["models"]}
    bursty, even = _dispersion(entries["bursty"], 10), _dispersion(entries["even"], 10)
    assert bursty == pytest.approx(statistics.pvariance(BURSTY) / statistics.mean(BURSTY)) == pytest.approx(10.5)
    assert even == pytest.approx(statistics.pvariance(EVEN) / statistics.mean(EVEN)) == pytest.approx(0.1)
    assert bursty > 1 > even
    # a second later the window has moved by one whole second: 1000 is out, 1010 (now complete) in
    later = store.summary(window=10, now=1011.0)["arrivals"]
    assert (later["since"], later["seconds"]) == (1001, 10)
    assert later["models"][1] == {"model": "even", "count": 25, "sumsq": sum(n * n for n in EVEN[1:]) + 2 ** 2}
    # a fractional window: the whole seconds from floor(now - window) on
    short = store.summary(window=2.5, now=1009.7)["arrivals"]
    assert (short["since"], short["seconds"]) == (1007, 2)
    assert short["models"] == [{"model": "bursty", "count": 10, "sumsq": 100}, {"model": "even", "count": 5,
                                                                                 "sumsq": 13}]
    assert short["total"] == {"count": 15, "sumsq": sum(n * n for n in together[7:9])}
    empty = store.summary(window=10, now=2000.0)["arrivals"]
    assert empty["models"] == [] and empty["total"] == {"count": 0, "sumsq": 0}
    store.close()


def test_prune_drops_old_seconds_and_an_old_database_gets_the_arrivals_from_its_rows(tmp_path):
    store = StatsStore(tmp_path / "fe.db")
    for t in (1000.2, 1001.2, 1001.7, 1002.5):
        store.record(request=rec(t), increments=[])
    store.prune(older_than=1001.5)                  # second 1000 ends before it, 1001 does not
    conn = sqlite3.connect(tmp_path / "fe.db")
    assert conn.execute("SELECT second, model, count FROM agg_arrivals ORDER BY second").fetchall() == [
        (1001, "m", 2), (1002, "m", 1)]
    conn.close()
    assert store.summary(window=100, now=1010.0)["arrivals"]["models"] == [{"model": "m", "count": 3, "sumsq": 5}]
    store.close()

    # A database from before agg_arrivals: the rows of catalog models (those model_counts names)
    # are counted once, at the first open.
    old = tmp_path / "old.db"
    store = StatsStore(old)
    _per_second(store, "m", [1, 4, 0, 2], 1000)
    store.record(request=replace(rec(1001.5, "ghost"), known_model=False), increments=[])
    store.close()
    conn = sqlite3.connect(old)
    conn.execute("DROP TABLE agg_arrivals")
    conn.commit()
    conn.close()
    expected = [{"model": "m", "count": 7, "sumsq": 1 + 16 + 4}]
    upgraded = StatsStore(old)
    assert upgraded.summary(window=600, now=1010.0)["arrivals"]["models"] == expected
    upgraded.close()
    again = StatsStore(old)
    assert again.summary(window=600, now=1010.0)["arrivals"]["models"] == expected      # not twice
    again.record(request=rec(1001.9), increments=[])
    assert again.summary(window=600, now=1010.0)["arrivals"]["models"] == [{"model": "m", "count": 8,
                                                                             "sumsq": 1 + 25 + 4}]
    again.close()


def test_pace_reports_sum_per_model_and_node_over_the_windows_buckets_and_are_pruned(tmp_path):
    store = StatsStore(tmp_path / "fe.db", flush_interval=0.05)
    # a request may carry two reports (a client's echo and the proxied answer's), about any model
    store.record(request=replace(rec(1001.0), paces=(("m", "n-a", 0.02, False), ("m", "n-b", 0.05, False))),
                 increments=[])
    store.record(request=replace(rec(1003.0, "other"), paces=(("m", "n-a", 0.04, False),)), increments=[])
    store.record(request=replace(rec(1015.0), paces=(("a", "n-b", 0.01, False),)), increments=[])
    store.record(request=rec(1016.0), increments=[])                                   # no report
    doc = store.summary(window=600, now=1020.0)
    assert doc["pace_idle"] == []
    assert doc["pace"] == [{"model": "a", "node": "n-b", "count": 1, "sum": pytest.approx(0.01)},
                           {"model": "m", "node": "n-a", "count": 2, "sum": pytest.approx(0.06)},
                           {"model": "m", "node": "n-b", "count": 1, "sum": pytest.approx(0.05)}]
    # the buckets of `groups`: from the one holding now - window ([1010, 1020) here) on
    short = store.summary(window=5, now=1019.0)
    assert short["since"] == 1010.0 and short["pace"] == [{"model": "a", "node": "n-b", "count": 1,
                                                           "sum": pytest.approx(0.01)}]
    store.prune(older_than=1010.0)
    conn = sqlite3.connect(tmp_path / "fe.db")
    assert conn.execute("SELECT bucket, model, node, count FROM agg_pace").fetchall() == [(101, "a", "n-b", 1)]
    assert not {"pace", "paces"} & {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    conn.close()
    assert [p["model"] for p in store.summary(window=600, now=1020.0)["pace"]] == ["a"]
    store.close()

    # A database from before agg_pace gets the table at the first open (the rows held no reports).
    old = tmp_path / "old.db"
    store = StatsStore(old)
    store.record(request=rec(1001.0), increments=[])
    store.close()
    conn = sqlite3.connect(old)
    conn.execute("DROP TABLE agg_pace")
    conn.commit()
    conn.close()
    upgraded = StatsStore(old)
    assert upgraded.summary(window=600, now=1010.0)["pace"] == []
    upgraded.record(request=replace(rec(1002.0), paces=(("m", "n-a", 0.03, False),)), increments=[])
    doc = upgraded.summary(window=600, now=1010.0)
    assert doc["pace"] == [{"model": "m", "node": "n-a", "count": 1, "sum": pytest.approx(0.03)}]
    assert doc["models"][0]["count"] == 2
    upgraded.close()


def test_idle_pace_reports_are_summed_apart_from_the_back_to_back_ones(tmp_path):
    store = StatsStore(tmp_path / "fe.db")
    store.record(request=replace(rec(1001.0), paces=(("m", "n-a", 0.06, False), ("m", "n-a", 0.047, True))),
                 increments=[])
    store.record(request=replace(rec(1002.0), paces=(("m", "n-a", 0.048, True), ("m", "n-b", 0.05, True))),
                 increments=[])
    store.record(request=replace(rec(1003.0), paces=(("a", "n-a", 0.02, False),)), increments=[])
    doc = store.summary(window=600, now=1010.0)
    # each list holds only the pairs with a report of its kind
    assert doc["pace"] == [{"model": "a", "node": "n-a", "count": 1, "sum": pytest.approx(0.02)},
                           {"model": "m", "node": "n-a", "count": 1, "sum": pytest.approx(0.06)}]
    assert doc["pace_idle"] == [{"model": "m", "node": "n-a", "count": 2, "sum": pytest.approx(0.095)},
                                {"model": "m", "node": "n-b", "count": 1, "sum": pytest.approx(0.05)}]
    conn = sqlite3.connect(tmp_path / "fe.db")
    assert conn.execute("SELECT model, node, count, sum, idle_count, idle_sum FROM agg_pace ORDER BY model, node"
                        ).fetchall() == [("a", "n-a", 1, pytest.approx(0.02), 0, 0.0),
                                         ("m", "n-a", 1, pytest.approx(0.06), 2, pytest.approx(0.095)),
                                         ("m", "n-b", 0, 0.0, 1, pytest.approx(0.05))]
    conn.close()
    store.prune(older_than=1010.0)
    assert store.summary(window=600, now=1010.0)["pace_idle"] == []
    store.close()


def test_an_agg_pace_from_before_the_idle_columns_gets_them_and_keeps_its_rows(tmp_path):
    old = tmp_path / "old.db"
    store = StatsStore(old)
    store.record(request=rec(1001.0), increments=[])
    store.close()
    conn = sqlite3.connect(old)
    conn.executescript("""
        DROP TABLE agg_pace;
        CREATE TABLE agg_pace (
            bucket INTEGER NOT NULL, model TEXT NOT NULL, node TEXT NOT NULL,
            count INTEGER NOT NULL, sum REAL NOT NULL,
            PRIMARY KEY (bucket, model, node)
        ) WITHOUT ROWID;
        INSERT INTO agg_pace (bucket, model, node, count, sum) VALUES (100, 'm', 'n-a', 3, 0.15);
    """)
    conn.close()
    upgraded = StatsStore(old)
    conn = sqlite3.connect(old)
    columns = {row[1]: row for row in conn.execute("PRAGMA table_info(agg_pace)")}
    assert {"idle_count", "idle_sum"} <= set(columns)
    assert columns["idle_count"][2:5] == ("INTEGER", 1, "0") and columns["idle_sum"][2:5] == ("REAL", 1, "0")
    assert conn.execute("SELECT bucket, model, node, count, sum, idle_count, idle_sum FROM agg_pace").fetchall() == [
        (100, "m", "n-a", 3, 0.15, 0, 0.0)]
    conn.close()
    doc = upgraded.summary(window=600, now=1009.0)
    assert doc["pace"] == [{"model": "m", "node": "n-a", "count": 3, "sum": pytest.approx(0.15)}]
    assert doc["pace_idle"] == []
    upgraded.record(request=replace(rec(1002.0), paces=(("m", "n-a", 0.04, True), ("m", "n-a", 0.05, False))),
                    increments=[])
    doc = upgraded.summary(window=600, now=1009.0)
    assert doc["pace"] == [{"model": "m", "node": "n-a", "count": 4, "sum": pytest.approx(0.20)}]
    assert doc["pace_idle"] == [{"model": "m", "node": "n-a", "count": 1, "sum": pytest.approx(0.04)}]
    assert doc["models"][0]["count"] == 2                       # the old request rows are still there
    upgraded.close()
    StatsStore(old).close()                                     # a second open leaves the columns be


def test_a_record_after_close_is_written_at_once(tmp_path):
    store = StatsStore(tmp_path / "fe.db", flush_interval=10.0)
    store.record(request=rec(1000.0), increments=[])
    store.close()                                   # flushes the buffer
    store.record(request=rec(1001.0), increments=[])  # a request still finishing on another thread
    other = StatsStore(tmp_path / "fe.db")
    assert other.request_rows() == 2
    other.close()


@pytest.fixture
def client(tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("nodes:\n  - {name: n-a, address: 127.254.254.2, memory: 1000, cpu: 1.0, class: small}\n")
    app = create_app({"cluster_settings": {"config_path": str(cluster), "state_path": str(tmp_path / "c.db")},
                      "database": str(tmp_path / "fe.db"), "token": TOKEN})
    yield app.test_client(), app.extensions["frontend"].store
    app.extensions["frontend"].close()


def test_summary_route_validates_window_and_needs_the_token(client):
    http, store = client
    import time
    now = time.time()
    store.record(request=rec(now - 1), increments=[])
    assert http.get("/stats/summary").status_code == 401
    doc = http.get("/stats/summary", headers=AUTH).get_json()
    assert doc["window"] == 600 and doc["models"][0]["count"] == 1 and doc["bucket_seconds"] == BUCKET_SECONDS
    assert http.get("/stats/summary?window=30", headers=AUTH).get_json()["window"] == 30
    for bad in ("0", "-5", "abc", "nan", "inf", "1e400", "604801", "1e30"):
        answer = http.get(f"/stats/summary?window={bad}", headers=AUTH)
        assert answer.status_code == 400, bad
        assert "window" in answer.get_json()["error"]


def test_summary_route_answers_the_arrivals_as_its_openapi_schema_says(tmp_path):
    import time
    from pathlib import Path

    import requests
    import schemathesis

    from tests.frontend_server import ServerThread

    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("nodes:\n  - {name: n-a, address: 127.254.254.2, memory: 1000, cpu: 1.0, class: small}\n")
    app = create_app({"cluster_settings": {"config_path": str(cluster), "state_path": str(tmp_path / "c.db")},
                      "database": str(tmp_path / "fe.db"), "token": TOKEN})
    with ServerThread(app) as server:
        first = math.floor(time.time()) - 5
        for t in (first + 0.1, first + 0.6, first + 2.5):
            app.extensions["frontend"].store.record(
                request=replace(rec(t), paces=(("m", "n-a", 0.02, False), ("m", "n-b", 0.045, True))),
                increments=[])
        answer = requests.get(f"{server.url}/stats/summary?window=60", headers=AUTH, timeout=10)
        asked_until = time.time()
    assert answer.status_code == 200
    openapi = Path(__file__).resolve().parents[2] / "frontend" / "openapi.yaml"
    schemathesis.openapi.from_path(openapi)["/stats/summary"]["GET"].validate_response(answer)
    arrivals = answer.json()["arrivals"]
    assert arrivals["seconds"] == 60 and first - 55 <= arrivals["since"] <= asked_until - 60
    assert arrivals["models"] == [{"model": "m", "count": 3, "sumsq": 2 ** 2 + 1}]
    assert answer.json()["pace"] == [{"model": "m", "node": "n-a", "count": 3, "sum": pytest.approx(0.06)}]
    assert answer.json()["pace_idle"] == [{"model": "m", "node": "n-b", "count": 3, "sum": pytest.approx(0.135)}]


@pytest.mark.parametrize("query", ["after=9223372036854775808", "after=-1", "after=99999999999999999999999",
                                   "after=1.5", "since=1e400", "since=-1", "since=nan", "limit=0",
                                   "limit=100001", "limit=99999999999999999999999"])
def test_requests_route_refuses_out_of_range_numbers_with_400(client, query):
    http, _ = client
    answer = http.get(f"/stats/requests?{query}", headers=AUTH)
    assert answer.status_code == 400
    assert query.split("=")[0] in answer.get_json()["error"]


def test_requests_route_accepts_the_extreme_valid_values(client):
    http, _ = client
    for query in ("after=9223372036854775807", "since=1e308", "limit=100000", "after=0&since=0&limit=1"):
        answer = http.get(f"/stats/requests?{query}", headers=AUTH)
        assert answer.status_code == 200 and answer.get_json() == {"requests": []}, query


def test_summaries_from_threads_that_come_and_go_leave_no_connection_open(tmp_path):
    """gevent's pool threads exit after 5 s idle and new ones serve the next collection: a summary
    must not leave a per-thread SQLite connection (and its descriptors) behind each time."""
    import os
    import threading

    store = StatsStore(tmp_path / "fe.db")
    store.summary(window=600, now=1000.0)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        thread = threading.Thread(target=store.summary, kwargs={"window": 600, "now": 1000.0})
        thread.start()
        thread.join()
    assert len(os.listdir("/proc/self/fd")) == before
    store.close()
