"""Pure parts of the front-end: hop-by-hop headers, client hints, metrics text, prediction cache."""
import math

import pytest

from frontend.headers import downstream_headers, timing_headers, upstream_headers, upstream_timings
from frontend.hints import HintError, parse_hints, parse_request_id
from frontend.metrics import BUCKETS, observe, render
from frontend.predcache import CachedAnswer, PredictionCache
from frontend.store import label_text


def test_upstream_headers_drop_hop_by_hop_and_connection_listed():
    given = [("Host", "front:5000"), ("Connection", "keep-alive, X-Secret"), ("Keep-Alive", "300"),
             ("X-Secret", "1"), ("Transfer-Encoding", "chunked"), ("TE", "trailers"), ("Upgrade", "h2c"),
             ("Proxy-Authorization", "Basic x"), ("Authorization", "Bearer t"), ("Content-Type", "application/json"),
             ("Content-Length", "12"), ("X-Client-Zone", "z"), ("Accept-Encoding", "gzip"), ("X-Custom", "v"),
             ("X-Forwarded-For", "10.1.1.1")]
    out = upstream_headers(given, request_id="rid", client_addr="127.0.0.9")
    assert out == {"Content-Type": "application/json", "X-Custom": "v", "Accept-Encoding": "identity",
                   "X-Request-Id": "rid", "X-Forwarded-For": "10.1.1.1, 127.0.0.9"}


def test_downstream_headers_drop_hop_by_hop():
    given = [("Content-Type", "application/json"), ("Connection", "close, X-Hop"), ("X-Hop", "1"),
             ("Transfer-Encoding", "chunked"), ("Keep-Alive", "5"), ("Server", "tfs"), ("Content-Length", "3"),
             ("X-Model", "m")]
    assert downstream_headers(given) == [("Content-Type", "application/json"), ("X-Model", "m")]


def test_hints_from_headers_win_over_body():
    h = parse_hints({"X-Client-Zone": "zone-1", "X-Client-Latency": "0.025"}, {"zone": "z2", "latency": 9})
    assert h.zone == "zone-1" and h.latency == 0.025
    h = parse_hints({}, {"zone": "z2", "latency": 1})
    assert h.zone == "z2" and h.latency == 1.0
    assert parse_hints({}, None).zone is None


@pytest.mark.parametrize("headers, body", [
    ({"X-Client-Latency": "fast"}, {}), ({"X-Client-Latency": "-1"}, {}), ({"X-Client-Latency": "nan"}, {}),
    ({"X-Client-Latency": "1e9"}, {}), ({"X-Client-Zone": "bad zone"}, {}), ({"X-Client-Zone": "a" * 65}, {}),
    ({}, {"zone": 5}), ({}, {"latency": True}), ({}, {"latency": [1]}),
])
def test_bad_hints_are_refused(headers, body):
    with pytest.raises(HintError):
        parse_hints(headers, body)


def test_request_id():
    assert parse_request_id("abc-123") == "abc-123"
    assert parse_request_id("bad id\n") is None and parse_request_id(None) is None


def test_label_text_is_sorted_and_escaped():
    assert label_text({"b": "2", "a": 'x"y\\z\n'}) == 'a="x\\"y\\\\z\\n",b="2"'


def test_render_counters_and_cumulative_histogram():
    counters = []
    for value in (0.0001, 0.003, 0.003, 100.0):
        for inc in observe("frontend_http_request_duration_seconds", {"route": "/r"}, value):
            counters.append((inc.name, inc.labels, inc.value))
    merged: dict = {}
    for name, labels, value in counters:
        merged[(name, labels)] = merged.get((name, labels), 0) + value
    rows = [(n, l, v) for (n, l), v in merged.items()]
    rows.append(("frontend_http_requests_total", 'method="GET",route="/r",status="200"', 4))
    text = render(rows, [("frontend_up", "Up.", "", 1)])
    assert 'frontend_http_requests_total{method="GET",route="/r",status="200"} 4' in text
    assert 'frontend_http_request_duration_seconds_bucket{route="/r",le="0.0005"} 1' in text
    assert 'frontend_http_request_duration_seconds_bucket{route="/r",le="0.005"} 3' in text
    assert f'frontend_http_request_duration_seconds_bucket{{route="/r",le="{BUCKETS[-1]!r}"}} 3' in text
    assert 'frontend_http_request_duration_seconds_bucket{route="/r",le="+Inf"} 4' in text
    assert 'frontend_http_request_duration_seconds_count{route="/r"} 4' in text
    total = [l for l in text.splitlines() if l.startswith("frontend_http_request_duration_seconds_sum")][0]
    assert math.isclose(float(total.split()[-1]), 100.0061)
    assert "# TYPE frontend_http_request_duration_seconds histogram" in text
    assert "# TYPE frontend_up gauge\nfrontend_up 1" in text


def _answer(body: bytes, generation=("g1",)) -> CachedAnswer:
    return CachedAnswer(status=200, headers=(("Content-Type", "application/json"),), body=body, node="n",
                        stored=0.0, generation=generation)


def test_prediction_cache_is_bounded_and_lru():
    cache = PredictionCache(entries=2, max_bytes=100)
    keys = [PredictionCache.key("m:predict", "application/json", bytes([i])) for i in range(3)]
    cache.put(keys[0], _answer(b"a"))
    cache.put(keys[1], _answer(b"b"))
    assert cache.get(keys[0], generation=("g1",), now=1.0) is not None      # 0 is now most recent
    cache.put(keys[2], _answer(b"c"))
    assert cache.get(keys[1], generation=("g1",), now=1.0) is None
    assert len(cache) == 2
    cache.put(PredictionCache.key("m:predict", None, b"big"), _answer(b"x" * 100))
    assert cache.size_bytes <= 100 and len(cache) == 1
    cache.put(PredictionCache.key("m:predict", None, b"huge"), _answer(b"x" * 101))   # never stored
    assert cache.size_bytes <= 100


def test_prediction_cache_invalidates_on_generation_and_ttl():
    cache = PredictionCache(entries=10, max_bytes=1000, ttl=5.0)
    key = PredictionCache.key("m:predict", "application/json; charset=utf-8", b"{}")
    assert key == PredictionCache.key("m:predict", "application/json", b"{}")
    cache.put(key, _answer(b"r"))
    assert cache.get(key, generation=("g1",), now=1.0) is not None
    assert cache.get(key, generation=("g2",), now=1.0) is None
    cache.put(key, _answer(b"r"))
    assert cache.get(key, generation=("g1",), now=10.0) is None
    off = PredictionCache(entries=0, max_bytes=1000)
    off.put(key, _answer(b"r"))
    assert not off.enabled and len(off) == 0


def test_timing_headers_name_the_node_and_both_times():
    timings = upstream_timings([("Server-Timing", "db;dur=1, app;dur=2.5;desc=x, pace;dur=70, app;dur=9, "
                                                  "pace-idle;dur=47.5")])
    assert timings == pytest.approx({"db": 0.001, "app": 0.0025, "pace": 0.070,       # the first app counts
                                     "pace-idle": 0.0475})
    got = timing_headers(node="n-a", seconds=0.0125, upstream=timings)
    assert got == [("X-Served-By", "n-a"), ("Server-Timing", "app;dur=12.500, upstream;dur=2.500")]
    bad = upstream_timings([("Server-Timing", "app;dur=zz, pace;dur=-1, wait;dur=inf"), ("X-Other", "app;dur=1")])
    assert bad == {} and timing_headers(node="n", seconds=0.001, upstream=bad)[1] == ("Server-Timing", "app;dur=1.000")
    assert downstream_headers([("Server-Timing", "app;dur=1"), ("X-Served-By", "evil")]) == []
